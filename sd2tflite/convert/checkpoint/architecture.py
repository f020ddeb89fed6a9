"""The architecture of an SD 1.x / 2.x checkpoint, inferred from tensor shapes (+ config.json).

Shapes give every width and depth; they cannot give attention heads. Those come from
`--attention-heads` when given, else from config.json when the layout has one, else from the SD
conventions: UNet v1 8 heads per level, v2 head dim 64 (heads = width // 64, at least 1); text
encoder head dim 64 (ViT-L/14: 12, ViT-H/14: 16). Where a convention was assumed (single files),
convert says so in one line (`heads_note`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

from pathlib import Path

from sd2tflite.core.errors import UsageError, WeightsError

from .layouts import Group


@dataclass(frozen=True)
class TextArch:
    vocab_size: int
    max_positions: int
    width: int
    layers: int
    heads: int
    activation: str  # "quick_gelu" (CLIP ViT-L, SD 1.x) | "gelu" (OpenCLIP ViT-H, SD 2.x)


@dataclass(frozen=True)
class UNetArch:
    widths: tuple[int, ...]  # per level, e.g. (320, 640, 1280, 1280)
    layers_per_block: int
    attention: tuple[bool, ...]  # per level (down path; the up path mirrors it)
    heads: tuple[int, ...]  # per level; the middle block uses the last level's
    linear_projection: bool  # SD 2.x: Dense proj_in/out; SD 1.x: 1x1 conv
    context_dim: int
    timestep_dim: int  # sinusoidal embedding fed as `timestep_embedding` (= widths[0])
    time_embed_dim: int  # 4 * widths[0]
    in_channels: int = 4
    out_channels: int = 4
    # LCM-distilled UNets (diffusers' `time_cond_proj_dim`): the width of the guidance (w) embedding
    # that `time_embedding.cond_proj` (no bias) adds to the sinusoidal timestep embedding; 0: none.
    time_cond_proj_dim: int = 0


@dataclass(frozen=True)
class VaeArch:
    widths: tuple[int, ...]  # encoder order, e.g. (128, 256, 512, 512)
    layers_per_block: int  # encoder resnets per level (the decoder has one more)
    latent_channels: int = 4


@dataclass(frozen=True)
class Architecture:
    family: str  # "v1" | "v2"
    text: TextArch
    unet: UNetArch
    vae: VaeArch

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Architecture":
        def tup(d):
            return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}

        return cls(data["family"], TextArch(**data["text"]), UNetArch(**tup(data["unet"])),
                   VaeArch(**tup(data["vae"])))


# full-size keras-cv models (what the conventions give for SD 1.5 and SD 2.1 checkpoints)
SD1 = Architecture(
    "v1",
    TextArch(49408, 77, 768, 12, 12, "quick_gelu"),
    UNetArch((320, 640, 1280, 1280), 2, (True, True, True, False), (8, 8, 8, 8), False, 768, 320, 1280),
    VaeArch((128, 256, 512, 512), 2),
)
SD2 = Architecture(
    "v2",
    TextArch(49408, 77, 1024, 23, 16, "gelu"),
    UNetArch((320, 640, 1280, 1280), 2, (True, True, True, False), (5, 10, 20, 20), True, 1024, 320, 1280),
    VaeArch((128, 256, 512, 512), 2),
)


def _shape(g: Group, name: str) -> tuple[int, ...]:
    r = g.tensors.get(name)
    if r is None:
        where = g.files[0].path if g.files else g.name
        raise WeightsError(f"{where}: {g.name} tensor {name} is missing; the checkpoint is incomplete")
    return r.shape


def _count(g: Group, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for n in g.tensors if (m := rx.match(n))})


HEADS_OPTION = "--attention-heads"
HEAD_COMPONENTS = {"unet": "unet", "text_encoder": "text_encoder", "text": "text_encoder"}


def parse_heads(specs: tuple[str, ...] | list[str] | dict | None) -> dict:
    """--attention-heads COMPONENT=VALUE (repeatable) -> {"unet": (h, ...), "text_encoder": h}.
    VALUE: head counts (`unet=8`, one per level `unet=5,10,20,20`, `text_encoder=12`) or a
    diffusers / transformers config.json whose head fields are read (`unet=unet/config.json`).
    A dict (the manifest's record of an earlier parse) is taken as it is."""
    if not specs:
        return {}
    if isinstance(specs, dict):
        return {k: tuple(v) if isinstance(v, list) else v for k, v in specs.items()}
    found: dict = {}
    for spec in specs:
        name, _, value = (part.strip() for part in spec.partition("="))
        component = HEAD_COMPONENTS.get(name)
        if component is None or not value:
            raise UsageError(f"{HEADS_OPTION} {spec!r}: use unet=N[,N...], text_encoder=N or COMPONENT=CONFIG.json")
        if component in found:
            raise UsageError(f"{HEADS_OPTION} gives {component} twice: keep one")
        if value.lower().endswith(".json"):
            found[component] = _heads_from_config(Path(value).expanduser(), component)
            continue
        try:
            counts = tuple(int(v) for v in value.split(","))
        except ValueError:
            counts = ()
        if not counts or not all(1 <= c <= 4096 for c in counts) or (component == "text_encoder" and len(counts) != 1):
            raise UsageError(f"{HEADS_OPTION} {spec!r}: {'one head count' if component == 'text_encoder' else 'head counts'}"
                             f" from 1 to 4096{'' if component == 'text_encoder' else ' (one, or one per level)'}"
                             ", or a config.json")
        found[component] = counts[0] if component == "text_encoder" else counts
    return found


def _heads_from_config(path: Path, component: str):
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{HEADS_OPTION} {component}={path}: not a readable JSON config "
                         f"({e.__class__.__name__}); pass the model's config.json or head counts") from None
    if not isinstance(cfg, dict):
        raise UsageError(f"{HEADS_OPTION} {component}={path}: not a config (a JSON object)")
    try:
        heads = _config_heads(cfg, 1) if component == "unet" else (
            _text_heads(cfg, 1 << 16) if cfg.get("num_attention_heads") is not None else None)
    except WeightsError as e:
        raise UsageError(f"{HEADS_OPTION} {component}={path}: {str(e).split(': ', 1)[-1]}") from None
    if heads is None:
        field_ = "attention_head_dim / num_attention_heads" if component == "unet" else "num_attention_heads"
        raise UsageError(f"{HEADS_OPTION} {component}={path}: the config has no {field_}; pass head counts instead")
    return heads  # a tuple for the UNet (one count: every level), an int for the text encoder


def heads_sources(groups: dict[str, Group], override: dict) -> dict[str, str]:
    """Where each component's head counts come from: --attention-heads, config.json or convention."""
    out = {}
    for component, key in (("unet", ("num_attention_heads", "attention_head_dim")),
                           ("text_encoder", ("num_attention_heads",))):
        cfg = groups[component].config or {}
        out[component] = (HEADS_OPTION if component in override
                          else "config.json" if any(cfg.get(k) is not None for k in key) else "convention")
    return out


def heads_note(identity: dict) -> str | None:
    """One line naming the head counts assumed by convention (no config.json says them) and the override."""
    sources = identity.get("attention_heads_from") or {}
    arch = identity.get("architecture") or {}
    assumed = []
    if sources.get("unet") == "convention":
        heads = arch["unet"]["heads"]
        assumed.append(f"UNet {','.join(map(str, heads))} per level")
    if sources.get("text_encoder") == "convention":
        assumed.append(f"text encoder {arch['text']['heads']} (head dim 64)")
    if not assumed:
        return None
    family = "SD 1.x" if identity.get("family") == "v1" else "SD 2.x"
    return (f"attention heads assumed ({family} convention; the weights cannot say them and no config.json "
            f"does): {', '.join(assumed)}; if the model differs pass {HEADS_OPTION} unet=N[,N...] / "
            "text_encoder=N, or COMPONENT=config.json")


def infer_text(g: Group, heads_override: int | None = None) -> TextArch:
    vocab, width = _shape(g, "embeddings.token_embedding.weight")
    positions, _ = _shape(g, "embeddings.position_embedding.weight")
    layers = _count(g, r"encoder\.layers\.(\d+)\.")
    cfg = g.config or {}
    heads = heads_override or _text_heads(cfg, width)
    if cfg.get("hidden_act"):
        act = cfg["hidden_act"]
    elif g.text_kind == "openclip":
        act = "gelu"
    elif g.text_kind == "clip":
        act = "quick_gelu"
    else:  # no config, diffusers names: ViT-H width means OpenCLIP
        act = "gelu" if width == 1024 else "quick_gelu"
    if act not in ("gelu", "quick_gelu"):
        raise WeightsError(f"text encoder activation {act!r} is not one keras-cv's CLIP layers have "
                           "(quick_gelu, gelu)")
    fc1 = _shape(g, "encoder.layers.0.mlp.fc1.weight")
    if fc1[0] != 4 * width:
        raise WeightsError(f"text encoder MLP width {fc1[0]} is not 4 x {width}, which keras-cv's CLIP layers fix")
    if width % heads:
        fix = f"; fix {HEADS_OPTION}" if heads_override else ""
        raise (UsageError if heads_override else WeightsError)(
            f"text encoder width {width} is not divisible by {heads} heads{fix}")
    return TextArch(vocab, positions, width, layers, heads, act)


def _config_heads(cfg: dict, levels: int) -> tuple[int, ...] | None:
    key = "num_attention_heads" if cfg.get("num_attention_heads") is not None else "attention_head_dim"
    heads = cfg.get(key)
    if heads is None:
        return None
    found = [heads] * levels if not isinstance(heads, (list, tuple)) else list(heads)
    if not found or not all(type(h) is int and 1 <= h <= 4096 for h in found):
        raise WeightsError(f"UNet config.json: {key} {json.dumps(heads)[:80]} is not a positive head count (or "
                           "one per level); fix the config or re-download it")
    return tuple(found)


def _text_heads(cfg: dict, width: int) -> int:
    heads = cfg.get("num_attention_heads")
    if heads is None:
        return max(1, width // 64)
    if type(heads) is not int or not 1 <= heads <= width:
        raise WeightsError(f"text encoder config.json: num_attention_heads {json.dumps(heads)[:80]} is not a "
                           f"head count from 1 to {width}; fix the config or re-download it")
    return heads


def infer_unet(g: Group, family_hint: str, heads_override: tuple[int, ...] | None = None) -> UNetArch:
    if any(n.startswith(("add_embedding.", "class_embedding.")) for n in g.tensors):
        raise WeightsError("UNet with added/class embeddings (SDXL or an upscaler); only SD 1.x/2.x UNets "
                           "are supported")
    c0, cin = _shape(g, "conv_in.weight")[:2]
    if cin != 4:
        raise WeightsError(f"UNet with {cin} input channels (inpainting or other); only 4 are supported")
    levels = _count(g, r"down_blocks\.(\d+)\.")
    lpb = _count(g, r"down_blocks\.0\.resnets\.(\d+)\.")
    widths = tuple(_shape(g, f"down_blocks.{i}.resnets.0.conv2.weight")[0] for i in range(levels))
    attention = tuple(f"down_blocks.{i}.attentions.0.proj_in.weight" in g.tensors for i in range(levels))
    up_attention = tuple(f"up_blocks.{levels - 1 - i}.attentions.0.proj_in.weight" in g.tensors
                         for i in range(levels))
    if up_attention != attention:
        raise WeightsError("UNet whose up path does not mirror its down path's attention; not SD 1.x/2.x")
    if "mid_block.attentions.0.proj_in.weight" not in g.tensors:
        raise WeightsError("UNet without a middle attention block; not SD 1.x/2.x")
    if any(re.match(r".*transformer_blocks\.[1-9]", n) for n in g.tensors):
        raise WeightsError("UNet with several transformer blocks per attention (SDXL-style); keras-cv's "
                           "SpatialTransformer has one")
    proj = _shape(g, "mid_block.attentions.0.proj_in.weight")
    linear = len(proj) == 2
    context = _shape(g, "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight")[1]
    t_embed, t_dim = _shape(g, "time_embedding.linear_1.weight")
    cfg = g.config or {}
    heads = _config_heads(cfg, levels)
    if heads_override:
        heads = heads_override * levels if len(heads_override) == 1 else heads_override
    if heads is None:
        if family_hint == "v2" or linear:
            heads = tuple(max(1, w // 64) for w in widths)
        else:
            heads = (8,) * levels
    error, fix = (UsageError, f"; fix {HEADS_OPTION}") if heads_override else (WeightsError, "")
    if len(heads) != levels:
        raise error(f"UNet {'config' if not heads_override else HEADS_OPTION} lists {len(heads)} head counts for "
                    f"{levels} levels{fix} (one count, or one per level)" if heads_override else
                    f"UNet config lists {len(heads)} head counts for {levels} levels")
    for w, h, a in zip(widths, heads, attention):
        if a and w % h:
            raise error(f"UNet width {w} is not divisible by {h} heads{fix}")
    cond_dim = 0
    if "time_embedding.cond_proj.weight" in g.tensors:
        rows, cond_dim = _shape(g, "time_embedding.cond_proj.weight")
        if rows != t_dim:
            raise WeightsError(f"UNet time_embedding.cond_proj gives {rows} values for a {t_dim}-wide timestep "
                               "embedding; not an LCM UNet sd2tflite knows")
    if cfg.get("time_cond_proj_dim") not in (None, cond_dim):
        raise WeightsError(f"UNet config says time_cond_proj_dim {cfg['time_cond_proj_dim']} but the weights "
                           f"have {'no cond_proj' if not cond_dim else cond_dim}; the config and weights differ")
    return UNetArch(widths, lpb, attention, heads, linear, context, t_dim, t_embed,
                    cin, _shape(g, "conv_out.weight")[0], cond_dim)


def infer_vae(g: Group) -> VaeArch:
    levels = _count(g, r"encoder\.down_blocks\.(\d+)\.")
    lpb = _count(g, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")
    widths = tuple(_shape(g, f"encoder.down_blocks.{i}.resnets.0.conv2.weight")[0] for i in range(levels))
    dec_lpb = _count(g, r"decoder\.up_blocks\.0\.resnets\.(\d+)\.")
    if dec_lpb != lpb + 1:
        raise WeightsError(f"VAE decoder has {dec_lpb} resnets per level, expected {lpb + 1}")
    latent2 = _shape(g, "quant_conv.weight")[0]
    if latent2 % 2:
        raise WeightsError(f"VAE quant_conv has {latent2} channels; expected 2 x latent channels")
    return VaeArch(widths, lpb, latent2 // 2)


def infer(groups: dict[str, Group], heads: dict | None = None) -> Architecture:
    """heads: parse_heads's result (--attention-heads), over config.json and the conventions."""
    heads = heads or {}
    text = infer_text(groups["text_encoder"], heads.get("text_encoder"))
    family = "v2" if text.activation == "gelu" else "v1"
    unet = infer_unet(groups["unet"], family, heads.get("unet"))
    vae = infer_vae(groups["vae"])
    if unet.context_dim != text.width:
        raise WeightsError(f"the UNet's cross-attention takes {unet.context_dim}-d context but the text encoder "
                           f"gives {text.width}-d; the components do not belong together")
    if unet.in_channels != vae.latent_channels:
        raise WeightsError(f"the UNet takes {unet.in_channels} latent channels but the VAE makes "
                           f"{vae.latent_channels}; the components do not belong together")
    return Architecture(family, text, unet, vae)
