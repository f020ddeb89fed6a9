"""LoRA files merged into the canonical weights before building (W += scale * alpha/rank * up @ down).

Formats: kohya / A1111 (`lora_unet_*`, `lora_te_*` or `lora_te1_*` with `.lora_down.weight`,
`.lora_up.weight`, `.alpha`; UNet modules in diffusers names, `lora_unet_down_blocks_0_attentions_0_proj_in`,
or in the original (CompVis / LDM) names, `lora_unet_input_blocks_1_1_proj_in`), diffusers / PEFT (`unet.*.lora_A.weight` / `lora_B.weight`, `text_encoder.*`), and the
older diffusers names (`*.processor.to_q_lora.down.weight`, `*.lora_linear_layer.up.weight`,
`*.lora.up.weight`). Keys that match no weight of the checkpoint are an error, listed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sd2tflite.core.errors import UsageError, WeightsError

from .layouts import Group, Ref, _short, diffusers_unet_ldm_modules, ref
from .reader import SafetensorsFile

_KOHYA = re.compile(r"^(lora_unet|lora_te\d?)_(.+?)\.(lora_down\.weight|lora_up\.weight|alpha)$")
_PEFT = re.compile(r"^(?:(unet|text_encoder(?:_\d)?)\.)?(.+?)\.(?:lora_(A|B)(?:\.default)?\.weight|"
                   r"lora(?:_linear_layer)?\.(down|up)\.weight|alpha)$")
# kohya names of SDXL's UNet (the sgm layout: several transformer blocks per attention, added embeddings)
_SDXL_UNET = re.compile(r"^lora_unet_(?:.*_transformer_blocks_[1-9]\d*_|label_emb_|add_embedding_)")
_OLD_PROC = re.compile(r"^(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


@dataclass
class LoraModule:
    group: str
    module: str  # canonical module name; the weight is f"{module}.weight"
    down: Ref | None = None
    up: Ref | None = None
    alpha: float | None = None
    keys: list[str] = field(default_factory=list)


@dataclass
class Lora:
    path: Path
    scale: float
    file: SafetensorsFile
    format: str  # "kohya" | "diffusers"
    modules: dict[tuple[str, str], LoraModule]

    def identity(self) -> dict:
        return {"path": str(self.path), "sha256": self.file.sha256, "scale": self.scale, "format": self.format}


def parse_lora_arg(text: str) -> tuple[Path, float]:
    """`FILE[:SCALE]` -> (path, scale); scale defaults to 1."""
    path, sep, scale = text.rpartition(":")
    if sep and path and re.fullmatch(r"[-+]?\d*\.?\d+(e[-+]?\d+)?", scale):
        return Path(path), float(scale)
    return Path(text), 1.0


def _weights_index(group: Group, text: bool) -> dict[str, str]:
    """underscore name (kohya) -> canonical module, for every tensor ending in `.weight`."""
    index = {}
    for name in group.tensors:
        if name.endswith(".weight"):
            module = name[: -len(".weight")]
            flat = module.replace(".", "_")
            index[flat] = module
            if text:
                index["text_model_" + flat] = module
    if not text:  # the same modules in the original UNet's names (input_blocks / middle_block / output_blocks)
        for module, ldm in diffusers_unet_ldm_modules(group.tensors).items():
            index.setdefault(ldm.replace(".", "_"), module)
    return index


def _peft_module(group_name: str, module: str) -> str:
    if group_name == "text_encoder" and module.startswith("text_model."):
        module = module[len("text_model."):]
    return module


def load_lora(path: Path, scale: float, groups: dict[str, Group]) -> Lora:
    path = Path(path)
    f = SafetensorsFile(path)
    keys = f.keys()
    if any(k.startswith(("lora_te2_", "text_encoder_2.")) for k in keys):
        raise WeightsError(f"{path}: an SDXL LoRA (two text encoders); it does not fit an SD 1.x/2.x model: "
                           "use a LoRA made for this model's family")
    indexes = {"unet": _weights_index(groups["unet"], False),
               "text_encoder": _weights_index(groups["text_encoder"], True)}
    modules: dict[tuple[str, str], LoraModule] = {}
    unmatched: list[str] = []
    fmt = None

    def module_for(group_name: str, module: str, key: str) -> LoraModule | None:
        if f"{module}.weight" not in groups[group_name].tensors:
            unmatched.append(key)
            return None
        m = modules.setdefault((group_name, module), LoraModule(group_name, module))
        m.keys.append(key)
        return m

    for k in keys:
        if (m := _KOHYA.match(k)):
            fmt = fmt or "kohya"
            group_name = "unet" if m.group(1) == "lora_unet" else "text_encoder"
            module = indexes[group_name].get(m.group(2))
            if module is None:
                unmatched.append(k)
                continue
            entry = module_for(group_name, module, k)
            kind = m.group(3)
        elif (m := _OLD_PROC.match(k)):
            fmt = fmt or "diffusers"
            prefix, proj, kind = m.groups()
            group_name = "unet"
            prefix = prefix.removeprefix("unet.")
            entry = module_for(group_name, f"{prefix}.{proj}" + (".0" if proj == "to_out" else ""), k)
            kind = "lora_down.weight" if kind == "down" else "lora_up.weight"
        elif (m := _PEFT.match(k)):
            fmt = fmt or "diffusers"
            comp, module, ab, updown = m.groups()
            if comp is None:
                comp = "text_encoder" if module.startswith(("text_model.", "encoder.layers.")) else "unet"
            group_name = "unet" if comp == "unet" else "text_encoder"
            entry = module_for(group_name, _peft_module(group_name, module), k)
            if k.endswith(".alpha"):
                kind = "alpha"
            elif ab is not None:
                kind = "lora_down.weight" if ab == "A" else "lora_up.weight"
            else:
                kind = "lora_down.weight" if updown == "down" else "lora_up.weight"
        else:
            unmatched.append(k)
            continue
        if entry is None:
            continue
        if kind == "alpha":
            entry.alpha = _alpha_value(np.asarray(f.get(k)), f"{path}: LoRA tensor {k}")
        elif kind == "lora_down.weight":
            entry.down = ref(f, k)
        else:
            entry.up = ref(f, k)
    if unmatched:
        if any(_SDXL_UNET.match(k) for k in unmatched):
            raise WeightsError(f"{path}: an SDXL LoRA (its UNet has several transformer blocks per attention); "
                               "it does not fit an SD 1.x/2.x model: use a LoRA made for this model's family")
        raise WeightsError(f"{path}: {len(unmatched)} LoRA keys match no weight of the checkpoint "
                           f"({_short(unmatched, 2)}): the LoRA was made for another model; use one made "
                           "for this model's family (SD 1.x or 2.x) and block layout")
    if not modules:
        raise WeightsError(f"{path}: no LoRA weights found (expected kohya lora_unet_*/lora_te_* or "
                           "diffusers unet.*.lora_A/B keys)")
    default_alpha = _metadata_alpha(f)
    for m in modules.values():
        if m.down is None or m.up is None:
            raise WeightsError(f"{path}: LoRA module {m.module} has no "
                               f"{'down/A' if m.down is None else 'up/B'} weight; the file is incomplete")
        target = groups[m.group].tensors[f"{m.module}.weight"].shape
        rank = m.down.shape[0] if m.down.shape else 0
        if rank == 0 or 0 in m.up.shape:
            raise WeightsError(f"{path}: LoRA module {m.module} has rank 0 (down {list(m.down.shape)}, up "
                               f"{list(m.up.shape)}): the file is damaged; re-download it")
        ok = (m.up.shape[0] == target[0] and m.up.shape[1] == rank and len(m.down.shape) == len(target)
              and tuple(m.down.shape[1:]) == tuple(target[1:]))
        if not ok:
            raise WeightsError(f"{path}: LoRA for another model: {m.module} is {list(target)} here, the LoRA has "
                               f"up {list(m.up.shape)} / down {list(m.down.shape)} (SD 1.x vs 2.x or SDXL?); "
                               "use a LoRA made for this model's family")
        if m.alpha is None:
            m.alpha = default_alpha.get(m.group, rank) if default_alpha else float(rank)
        multiplier = scale * m.alpha / rank
        if not (np.isfinite(m.alpha) and np.isfinite(multiplier) and abs(multiplier) <= float(np.finfo(np.float32).max)):
            raise WeightsError(f"{path}: LoRA module {m.module} has alpha {m.alpha} and scale {scale}: the factor "
                               f"scale * alpha / rank ({multiplier}) is not a finite float32; fix the file's alpha "
                               "or lower the scale")
    return Lora(path, scale, f, fmt or "diffusers", modules)


def _metadata_alpha(f: SafetensorsFile) -> dict[str, float]:
    """diffusers may store `lora_adapter_metadata` (PEFT LoraConfig per component) in the header."""
    raw = (f.metadata or {}).get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    out = {}
    for group, prefix in (("unet", "unet."), ("text_encoder", "text_encoder.")):
        alpha = meta.get(prefix + "lora_alpha")
        if alpha is not None and not meta.get(prefix + "alpha_pattern"):
            out[group] = _alpha_value(np.asarray(alpha), f"the LoRA's metadata {prefix}lora_alpha")
    return out


def _alpha_value(value: np.ndarray, where: str) -> float:
    """A LoRA alpha: one real number (kohya stores a 0-d or 1-element tensor, PEFT a JSON number)."""
    if value.size != 1 or value.dtype.kind not in "biuf":
        raise WeightsError(f"{where} is an alpha of shape {list(value.shape)} and type {value.dtype}, not one "
                           "number: fix or remove it (without it alpha = rank)")
    return float(value.reshape(-1)[0])


def deltas_for(loras: list[Lora], group: str) -> dict[str, list[tuple[float, LoraModule]]]:
    """canonical weight name -> [(multiplier, module)] for one component group."""
    out: dict[str, list] = {}
    for lora in loras:
        for (g, module), m in lora.modules.items():
            if g == group:
                rank = m.down.shape[0]
                out.setdefault(f"{module}.weight", []).append((lora.scale * m.alpha / rank, m))
    return out


def apply(weight: np.ndarray, entries: list[tuple[float, LoraModule]]) -> np.ndarray:
    from .assign import refuse_non_finite

    for mult, m in entries:
        up = m.up.read()
        down = m.down.read()
        for factor, name in ((up, m.up), (down, m.down)):
            refuse_non_finite(factor, f"{name.label} (LoRA factor for {m.module})", "the LoRA file is damaged: "
                              "re-download it")
        rank = down.shape[0]
        delta = up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)
        weight = weight + np.float32(mult) * delta.reshape(weight.shape)
    return weight


def check_scale(scale: float, path: Path) -> None:
    if not np.isfinite(scale):
        raise UsageError(f"LoRA scale for {path} is not a number; use FILE[:SCALE] with e.g. 0.8")
