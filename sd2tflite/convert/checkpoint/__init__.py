"""SD 1.x / 2.x PyTorch checkpoints (.safetensors; diffusers folders or single files) -> Keras models
with keras-cv's structure. numpy + safetensors + Keras; never torch, never unpickling.

    ckpt = open_checkpoint("sd-v1-5.safetensors")          # or a diffusers folder
    ckpt.family, ckpt.architecture, ckpt.prediction_type, ckpt.ema, ckpt.identity()
    model = ckpt.build("diffusion", img_height=512, img_width=512)

Flow: layouts.py renames every layout into canonical (diffusers) tensor names, architecture.py
infers widths/depths from shapes, builders.py builds keras-cv-structured models and the table from
canonical names to Keras weights, and `Checkpoint.build` assigns tensor by tensor (memory-mapped
read, LoRA merge, transform, assign, drop), refusing leftovers on either side.
Keras is imported only by `build` (and `table`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sd2tflite.core.errors import UsageError, WeightsError
from sd2tflite.core.registry import PREDICTION_TYPES

from .architecture import SD1, SD2, Architecture, TextArch, UNetArch, VaeArch, heads_sources, infer, parse_heads
from .layouts import GROUPS, Group, Source, open_override, open_source
from .lora import Lora, check_scale, load_lora, parse_lora_arg

__all__ = [
    "Architecture", "Checkpoint", "SD1", "SD2", "TextArch", "UNetArch", "VaeArch", "open_checkpoint",
    "parse_lora_arg", "COMPONENTS", "PREDICTION_TYPES",
]

COMPONENTS = ("text_encoder", "diffusion", "decoder", "image_encoder")
_OVERRIDE_ALIASES = {"unet": "unet", "diffusion": "unet", "vae": "vae", "decoder": "vae",
                     "image_encoder": "vae", "text_encoder": "text_encoder"}


@dataclass
class Checkpoint:
    source: Source
    groups: dict[str, Group]
    architecture: Architecture
    prediction_type: str
    prediction_type_from: str  # "scheduler_config.json" | "argument" | "family default"
    overrides: dict[str, Path] = field(default_factory=dict)
    loras: list[Lora] = field(default_factory=list)
    heads_override: dict = field(default_factory=dict)  # --attention-heads, parsed
    heads_from: dict = field(default_factory=dict)  # component -> --attention-heads | config.json | convention

    @property
    def family(self) -> str:
        return self.architecture.family

    @property
    def ema(self) -> bool | None:
        """True: the UNet is the file's EMA copy; False: its raw weights although EMA was there;
        None: the file has no EMA copy (diffusers folders never do)."""
        if "unet" in self.overrides:
            return None
        return self.source.ema

    @property
    def context_dim(self) -> int:
        return self.architecture.unet.context_dim

    @property
    def timestep_dim(self) -> int:
        return self.architecture.unet.timestep_dim

    def identity(self) -> dict:
        """What the manifest records: where every weight came from and how it was read."""
        files = []
        for g in GROUPS:
            for f in self.groups[g].files:
                files.append({"component": g, "path": str(f.path), "sha256": f.sha256})
        return {
            "source_format": self.source.layout,
            "path": str(self.source.path),
            "files": files,
            "overrides": {g: str(p) for g, p in self.overrides.items()},
            "family": self.family,
            "architecture": self.architecture.to_json(),
            "prediction_type": self.prediction_type,
            "prediction_type_from": self.prediction_type_from,
            "ema": self.ema,
            "loras": [lora.identity() for lora in self.loras],
            "attention_heads_from": self.heads_from,
            **({"attention_heads": {k: list(v) if isinstance(v, tuple) else v for k, v in self.heads_override.items()}}
               if self.heads_override else {}),
        }

    def table(self, component: str, img_height: int = 512, img_width: int = 512,
              max_text_length: int = 77) -> list[dict]:
        """The mapping rows (canonical source -> Keras variable path, shape, transform); builds the model."""
        from .builders import build

        _, rows = build(self.architecture, component, img_height, img_width, max_text_length)
        return [r.to_json() for r in rows]

    def build(self, component: str, img_height: int, img_width: int, max_text_length: int = 77):
        """The component as a keras.Model with this checkpoint's weights (LoRAs merged)."""
        from .builders import build

        model, rows = build(self.architecture, component, img_height, img_width, max_text_length)
        return self.load(component, model, rows)

    def load(self, component: str, model, rows):
        """Assigns this checkpoint's weights to a model from `builders.build` of the same
        architecture (to reuse one built model for several checkpoints, LoRAs or scales)."""
        from .assign import assign
        from .builders import COMPONENT_GROUP, COMPONENT_PREFIXES

        group = self.groups[COMPONENT_GROUP[component]]
        assign(model, rows, group, COMPONENT_PREFIXES[component], self.loras, component)
        return model


def open_checkpoint(path_or_dir: str | Path, overrides: dict[str, str | Path] | None = None,
                    prediction_type: str | None = None, use_ema: bool = True,
                    loras: list[tuple[str | Path, float]] | tuple = (),
                    attention_heads: tuple[str, ...] | dict | None = None) -> Checkpoint:
    """Reads headers (not weights), checks the layout and infers the architecture.

    overrides: per-component replacement files/folders, keys unet|vae|text_encoder (aliases:
    diffusion; decoder/image_encoder mean the whole VAE). prediction_type: needed for SD 2.x single
    files (512-base is epsilon, 768-v is v_prediction); overrides scheduler_config.json when given.
    use_ema: single files with `model_ema.*` use the EMA UNet unless False. loras: (file, scale).
    attention_heads: --attention-heads (architecture.parse_heads), over config.json and the conventions.
    """
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise UsageError(f"prediction type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")
    source = open_source(Path(path_or_dir), use_ema)
    groups = dict(source.groups)
    resolved: dict[str, Path] = {}
    for key, p in (overrides or {}).items():
        g = _OVERRIDE_ALIASES.get(key)
        if g is None:
            raise UsageError(f"unknown override component {key!r}; use unet, vae or text_encoder")
        if g in resolved:
            raise UsageError(f"two overrides for the {g} ({key}); pass one")
        groups[g] = open_override(g, Path(p))
        resolved[g] = Path(p)
    heads = parse_heads(attention_heads)
    arch = infer(groups, heads)
    if prediction_type is not None:
        pred, pred_from = prediction_type, "argument"
    elif source.prediction_type is not None:
        pred, pred_from = source.prediction_type, "scheduler_config.json"
        if pred not in PREDICTION_TYPES:
            raise WeightsError(f"{source.path}: scheduler prediction_type {pred!r} is not supported; pass "
                               f"--prediction-type {'|'.join(PREDICTION_TYPES)}")
    elif arch.family == "v1":
        pred, pred_from = "epsilon", "family default"
    else:
        raise UsageError(f"{source.path}: an SD 2.x single-file checkpoint does not say its prediction type "
                         "(512-base: epsilon, 768-v: v_prediction); pass --prediction-type epsilon|v_prediction")
    loaded = []
    for p, scale in loras:
        check_scale(scale, Path(p))
        loaded.append(load_lora(Path(p), float(scale), groups))
    return Checkpoint(source, groups, arch, pred, pred_from, resolved, loaded, heads, heads_sources(groups, heads))

