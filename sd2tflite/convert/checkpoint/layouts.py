"""Checkpoint layouts -> canonical tensors.

Canonical names are diffusers' (UNet, VAE) and transformers' CLIP names without the `text_model.`
prefix (text encoder). The single-file (CompVis / Stability) layout is renamed into them here, so
one table (builders.py) maps canonical names to Keras weights for both layouts.

A `Ref` points at one tensor in one file, plus the cheap view needed to make it canonical (a row
range of OpenCLIP's fused q/k/v projection, a 1x1-conv <-> linear reshape). Nothing is read here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sd2tflite.core.errors import UsageError, WeightsError

from .reader import PICKLE_SUFFIXES, SafetensorsFile, refuse_pickle

GROUPS = ("text_encoder", "unet", "vae")

# Buffers single-file checkpoints carry that no component uses.
_SCHEDULE_BUFFERS = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "lvlb_weights",
    "model_ema.decay", "model_ema.num_updates",
}
_IGNORED_PREFIXES = ("first_stage_model.loss.",)  # LPIPS/discriminator left in some VAE files


def _short(items: list[str], n: int = 5) -> str:
    head = ", ".join(items[:n])
    return f"{head} (+{len(items) - n} more)" if len(items) > n else head


@dataclass(frozen=True)
class Ref:
    file: SafetensorsFile
    key: str
    shape: tuple[int, ...]  # canonical shape (after rows / reshape)
    rows: tuple[int, int] | None = None

    def read(self) -> np.ndarray:
        x = self.file.get(self.key)
        if self.rows is not None:
            x = x[self.rows[0]:self.rows[1]]
        if x.shape != self.shape:
            x = x.reshape(self.shape)
        return np.ascontiguousarray(x, dtype=np.float32)

    @property
    def label(self) -> str:
        part = f"[{self.rows[0]}:{self.rows[1]}]" if self.rows else ""
        return f"{self.key}{part} in {self.file.path.name}"


def ref(f: SafetensorsFile, key: str, shape=None, rows=None) -> Ref:
    src = f.shape(key)
    if rows is not None:
        src = (rows[1] - rows[0],) + tuple(src[1:])
    return Ref(f, key, tuple(shape) if shape is not None else tuple(src), rows)


@dataclass
class Group:
    """One component group's canonical tensors (+ its config.json when the layout has one)."""

    name: str
    tensors: dict[str, Ref] = field(default_factory=dict)
    config: dict | None = None
    files: list[SafetensorsFile] = field(default_factory=list)
    layout: str = ""  # "diffusers" or "single-file"
    ignored: list[str] = field(default_factory=list)  # source tensors known and deliberately unused
    text_kind: str | None = None  # "clip" | "openclip" (single files)


@dataclass
class Source:
    """What open_checkpoint found: groups, where they came from, and scheduler facts."""

    layout: str  # "diffusers" | "single-file"
    path: Path
    groups: dict[str, Group]
    prediction_type: str | None = None  # from scheduler_config.json
    ema: bool | None = None
    files: list[SafetensorsFile] = field(default_factory=list)


# ---------------------------------------------------------------- detection of what a file is


def _refuse_unsupported(path: Path, keys: list[str], shapes: dict) -> None:
    """One-line errors for checkpoints that are not SD 1.x / 2.x full models."""
    ks = set(keys)

    def has(prefix):
        return any(k.startswith(prefix) for k in keys)

    if has("conditioner.embedders.") or "model.diffusion_model.label_emb.0.0.weight" in ks \
            or has("add_embedding.") or has("text_encoder_2."):
        raise WeightsError(f"{path}: this is an SDXL checkpoint (two text encoders / added embeddings); "
                           "only SD 1.x and 2.x are supported")
    if has("model.diffusion_model.joint_blocks.") or has("joint_blocks.") or has("text_encoders."):
        raise WeightsError(f"{path}: this is an SD3 (MMDiT) checkpoint; only SD 1.x and 2.x are supported")
    if any(re.search(r"(^|[._])lora(_|\.)(a|b|up|down)\b|lora_down|lora_up|lora_A|lora_B", k)
           for k in keys[:200]):
        raise UsageError(f"{path}: this is a LoRA, not a model; pass it with --lora FILE[:SCALE] next to "
                         "the base checkpoint")
    conv_in = shapes.get("model.diffusion_model.input_blocks.0.0.weight") or shapes.get("conv_in.weight")
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
        kind = "an inpainting" if conv_in[1] == 9 else "a non-standard"
        raise WeightsError(f"{path}: {kind} UNet ({conv_in[1]} input channels); only 4-channel "
                           "text-to-image UNets are supported")


def _is_vae_keys(keys: list[str]) -> bool:
    return bool(keys) and all(k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.",
                                            "first_stage_model.", "loss.")) for k in keys)


# ---------------------------------------------------------------- text encoder


def _text_from_hf(f: SafetensorsFile, keys: list[str], strip: str, group: Group) -> list[str]:
    """transformers CLIP names (with or without `text_model.`); returns unknown keys."""
    unknown = []
    for k in keys:
        name = k[len(strip):]
        name = name[len("text_model."):] if name.startswith("text_model.") else name
        if name.endswith("position_ids"):
            group.ignored.append(k)
        elif name.startswith(("embeddings.", "encoder.layers.", "final_layer_norm.")):
            group.tensors[name] = ref(f, k)
        else:
            unknown.append(k)
    return unknown


def _text_from_openclip(f: SafetensorsFile, keys: list[str], prefix: str, group: Group) -> list[str]:
    """OpenCLIP (SD 2.x `cond_stage_model.model.*`): fused q/k/v split by rows; the last resblock,
    text_projection and logit_scale are unused (SD 2.x takes the penultimate layer)."""
    names = {k[len(prefix):]: k for k in keys}
    layers = sorted({int(m.group(1)) for n in names if (m := re.match(r"transformer\.resblocks\.(\d+)\.", n))})
    if not layers:
        raise WeightsError(f"{f.path}: OpenCLIP text encoder without transformer.resblocks; re-download it")
    last = layers[-1]
    simple = {"token_embedding.weight": "embeddings.token_embedding.weight",
              "positional_embedding": "embeddings.position_embedding.weight",
              "ln_final.weight": "final_layer_norm.weight", "ln_final.bias": "final_layer_norm.bias"}
    sub = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
           "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    unknown = []
    for n, k in names.items():
        m = re.match(r"transformer\.resblocks\.(\d+)\.(.+)$", n)
        if n in simple:
            group.tensors[simple[n]] = ref(f, k)
        elif n in ("text_projection", "logit_scale", "attn_mask"):
            group.ignored.append(k)
        elif m and int(m.group(1)) == last:
            group.ignored.append(k)
        elif m:
            i, rest = m.group(1), m.group(2)
            out = f"encoder.layers.{i}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                shape = f.shape(k)
                width = shape[0] // 3
                leaf = "weight" if rest.endswith("weight") else "bias"
                for j, qkv in enumerate("qkv"):
                    group.tensors[out + f"self_attn.{qkv}_proj.{leaf}"] = ref(
                        f, k, rows=(j * width, (j + 1) * width))
            else:
                mod, leaf = rest.rsplit(".", 1)
                if mod in sub:
                    group.tensors[out + sub[mod] + "." + leaf] = ref(f, k)
                else:
                    unknown.append(k)
        else:
            unknown.append(k)
    return unknown


# ---------------------------------------------------------------- UNet: original -> diffusers


_RES_SUB = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
            "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def _ldm_blocks(levels: int, lpb: int, up_attn) -> dict[str, str]:
    """original module prefix -> diffusers prefix for a UNet of `levels` levels with `lpb` layers per
    block; `up_attn(i)`: whether up level i attends (which moves its upsampler's index)."""
    m = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
         "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out",
         "middle_block.0": "mid_block.resnets.0", "middle_block.1": "mid_block.attentions.0",
         "middle_block.2": "mid_block.resnets.1"}
    for i in range(levels):
        for j in range(lpb):
            k = 1 + i * (lpb + 1) + j
            m[f"input_blocks.{k}.0"] = f"down_blocks.{i}.resnets.{j}"
            m[f"input_blocks.{k}.1"] = f"down_blocks.{i}.attentions.{j}"
        if i < levels - 1:
            m[f"input_blocks.{1 + i * (lpb + 1) + lpb}.0.op"] = f"down_blocks.{i}.downsamplers.0.conv"
        attends = up_attn(i)
        for j in range(lpb + 1):
            k = i * (lpb + 1) + j
            m[f"output_blocks.{k}.0"] = f"up_blocks.{i}.resnets.{j}"
            if attends:
                m[f"output_blocks.{k}.1"] = f"up_blocks.{i}.attentions.{j}"
        if i < levels - 1:
            k = i * (lpb + 1) + lpb
            m[f"output_blocks.{k}.{2 if attends else 1}.conv"] = f"up_blocks.{i}.upsamplers.0.conv"
    return m


def ldm_unet_prefixes(names: list[str]) -> dict[str, str]:
    """original module prefix -> diffusers prefix, derived from which blocks exist."""
    inputs = {int(m.group(1)) for n in names if (m := re.match(r"input_blocks\.(\d+)\.", n))}
    ops = {int(m.group(1)) for n in names if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.", n))}
    if not inputs:
        raise WeightsError("UNet without input_blocks; not an SD 1.x/2.x UNet")
    levels = len(ops) + 1
    per = (len(inputs) - 1 - len(ops))
    if per % levels:
        raise WeightsError(f"UNet input_blocks ({len(inputs)}) do not form {levels} levels; "
                           "not an SD 1.x/2.x UNet")
    lpb = per // levels
    present = set(names)
    return _ldm_blocks(levels, lpb, lambda i: f"output_blocks.{i * (lpb + 1)}.1.norm.weight" in present)


def diffusers_unet_ldm_modules(names) -> dict[str, str]:
    """diffusers (canonical) UNet module -> the original (CompVis) module name, for every `.weight` in
    `names`; the block layout (levels, layers per block, which levels attend) is read from the names."""
    names = set(names)
    levels = 1 + max((int(m.group(1)) for n in names if (m := re.match(r"down_blocks\.(\d+)\.", n))), default=-1)
    lpb = len({m.group(1) for n in names if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", n))})
    if not levels or not lpb:
        return {}
    m = {v: k for k, v in _ldm_blocks(levels, lpb, lambda i: any(n.startswith(f"up_blocks.{i}.attentions.")
                                                                  for n in names)).items()}
    res_sub = {v: k for k, v in _RES_SUB.items()}
    out = {}
    for n in names:
        if not n.endswith(".weight"):
            continue
        module = n[: -len(".weight")]
        parts = module.split(".")
        for cut in range(len(parts), 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in m:
                rest = ".".join(parts[cut:])
                if ".resnets." in prefix:
                    rest = res_sub.get(rest)
                if rest is not None:
                    out[module] = m[prefix] + ("." + rest if rest else "")
                break
    return out


def ldm_unet_to_diffusers(names: list[str]) -> dict[str, str]:
    """original UNet tensor name -> diffusers name (names without `model.diffusion_model.`)."""
    prefixes = ldm_unet_prefixes(names)
    out = {}
    for n in names:
        parts = n.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            p = ".".join(parts[:cut])
            if p in prefixes:
                rest = ".".join(parts[cut:])
                new = prefixes[p]
                if ".resnets." in new:
                    mod, leaf = rest.rsplit(".", 1)
                    if mod not in _RES_SUB:
                        break
                    rest = _RES_SUB[mod] + "." + leaf
                out[n] = new + "." + rest
                break
    return out


# ---------------------------------------------------------------- VAE: original -> diffusers

_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_VAE_OLD_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def ldm_vae_to_diffusers(name: str, levels: int) -> str | None:
    n = name.replace("nin_shortcut", "conv_shortcut")
    n = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", n)
    n = re.sub(r"^(encoder|decoder)\.mid\.block_1\.", r"\1.mid_block.resnets.0.", n)
    n = re.sub(r"^(encoder|decoder)\.mid\.block_2\.", r"\1.mid_block.resnets.1.", n)
    m = re.match(r"^(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)$", n)
    if m:
        return f"{m.group(1)}.mid_block.attentions.0.{_VAE_ATTN[m.group(2)]}.{m.group(3)}"
    m = re.match(r"^encoder\.down\.(\d+)\.(block|downsample)\.(.+)$", n)
    if m:
        i, kind, rest = m.groups()
        return f"encoder.down_blocks.{i}." + (f"resnets.{rest}" if kind == "block"
                                              else f"downsamplers.0.{rest}")
    m = re.match(r"^decoder\.up\.(\d+)\.(block|upsample)\.(.+)$", n)
    if m:
        i, kind, rest = m.groups()
        i = levels - 1 - int(i)
        return f"decoder.up_blocks.{i}." + (f"resnets.{rest}" if kind == "block" else f"upsamplers.0.{rest}")
    if re.match(r"^(encoder|decoder)\.(conv_in|conv_out|conv_norm_out|mid_block\.resnets\.\d)\.", n) or \
            re.match(r"^(post_)?quant_conv\.", n):
        return n
    return None


def _vae_tensor(f: SafetensorsFile, key: str, name: str) -> Ref:
    """VAE attention projections are linear [C, C] canonically; some files store 1x1 convs."""
    shape = f.shape(key)
    if ".mid_block.attentions.0.to_" in name and name.endswith("weight") and len(shape) == 4:
        return ref(f, key, shape=shape[:2])
    return ref(f, key)


def _vae_from(f: SafetensorsFile, keys: list[str], prefix: str, group: Group) -> list[str]:
    names = {k[len(prefix):]: k for k in keys}
    unknown = []
    if any(n.startswith(("encoder.down.", "decoder.up.", "encoder.mid.", "decoder.mid.")) for n in names):
        levels = len({m.group(1) for n in names if (m := re.match(r"encoder\.down\.(\d+)\.", n))})
        for n, k in names.items():
            new = ldm_vae_to_diffusers(n, levels)
            if new is None:
                unknown.append(k)
            else:
                group.tensors[new] = _vae_tensor(f, k, new)
        return unknown
    for n, k in names.items():  # diffusers names (older files: query/key/value/proj_attn)
        m = re.match(r"^(.*\.mid_block\.attentions\.0\.)(query|key|value|proj_attn)\.(weight|bias)$", n)
        if m:
            n = m.group(1) + _VAE_OLD_ATTN[m.group(2)] + "." + m.group(3)
        if n.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")):
            group.tensors[n] = _vae_tensor(f, k, n)
        else:
            unknown.append(k)
    return unknown


def _unet_from_ldm(f: SafetensorsFile, keys: list[str], prefix: str, group: Group,
                   ema: dict[str, str] | None) -> list[str]:
    names = [k[len(prefix):] for k in keys]
    mapping = ldm_unet_to_diffusers(names)
    unknown = []
    for n, k in zip(names, keys):
        if n not in mapping:
            unknown.append(k)
            continue
        if ema is not None:
            flat = ema.get(k)
            if flat is None:
                raise WeightsError(f"{f.path}: EMA weights incomplete (no EMA copy of {k}); "
                                   "pass use_ema=False (--no-ema) to use the raw weights")
            group.tensors[mapping[n]] = ref(f, flat)
            group.ignored.append(k)
        else:
            group.tensors[mapping[n]] = ref(f, k)
    return unknown


def _unet_from_diffusers(f: SafetensorsFile, keys: list[str], group: Group) -> list[str]:
    for k in keys:
        group.tensors[k] = ref(f, k)
    return []


# ---------------------------------------------------------------- single file


def ema_key(key: str) -> str:
    """`model.diffusion_model.a.0.b` -> LitEma's flattened `model_ema.diffusion_modela0b`."""
    return "model_ema." + "".join(key.split(".")[1:])


def open_single_file(path: Path, use_ema: bool) -> Source:
    f = SafetensorsFile(path)
    keys = f.keys()
    shapes = {k: f.shape(k) for k in keys}
    _refuse_unsupported(path, keys, shapes)
    if "model.diffusion_model.input_blocks.0.0.weight" not in shapes:
        if _is_vae_keys(keys):
            raise UsageError(f"{path}: this is a VAE-only file, not a whole model; pass it as a VAE override "
                             "(vae=FILE) next to a full checkpoint")
        if "conv_in.weight" in shapes and any(k.startswith("down_blocks.") for k in keys):
            raise UsageError(f"{path}: this is a lone diffusers UNet file; pass the diffusers folder, or "
                             "pass it as an override (unet=FILE)")
        if any(k.startswith(("text_model.", "embeddings.token_embedding")) for k in keys):
            raise UsageError(f"{path}: this is a lone text encoder file; pass it as an override "
                             "(text_encoder=FILE)")
        raise WeightsError(f"{path}: unknown checkpoint layout (no model.diffusion_model.* UNet, no "
                           f"diffusers folder); first keys: {_short(sorted(keys), 3)}")
    groups = {g: Group(g, layout="single-file", files=[f]) for g in GROUPS}
    by_prefix: dict[str, list[str]] = {"unet": [], "vae": [], "clip": [], "openclip": [], "ema": []}
    unknown = []
    ignored = []
    for k in keys:
        if k.startswith("model.diffusion_model."):
            by_prefix["unet"].append(k)
        elif k.startswith("first_stage_model.") and not k.startswith(_IGNORED_PREFIXES):
            by_prefix["vae"].append(k)
        elif k.startswith("cond_stage_model.transformer."):
            by_prefix["clip"].append(k)
        elif k.startswith("cond_stage_model.model."):
            by_prefix["openclip"].append(k)
        elif k in _SCHEDULE_BUFFERS or k.startswith(_IGNORED_PREFIXES):
            ignored.append(k)
        elif k.startswith("model_ema."):
            by_prefix["ema"].append(k)
        else:
            unknown.append(k)
    ema_keys = set(by_prefix["ema"])
    has_ema = bool(ema_keys)
    ema_map = None
    if has_ema and use_ema:
        ema_map = {k: ema_key(k) for k in by_prefix["unet"] if ema_key(k) in ema_keys}
        missing = [k for k in by_prefix["unet"] if k not in ema_map]
        if missing:
            raise WeightsError(f"{path}: EMA weights incomplete ({len(missing)} UNet tensors without an "
                               f"EMA copy, e.g. {missing[0]}); pass use_ema=False (--no-ema)")
        stray = ema_keys - set(ema_map.values())
        unknown += sorted(stray)
    elif has_ema:
        groups["unet"].ignored += sorted(ema_keys)
    unknown += _unet_from_ldm(f, by_prefix["unet"], "model.diffusion_model.", groups["unet"], ema_map)
    unknown += _vae_from(f, by_prefix["vae"], "first_stage_model.", groups["vae"])
    if by_prefix["clip"] and by_prefix["openclip"]:
        raise WeightsError(f"{path}: both a CLIP and an OpenCLIP text encoder; not an SD 1.x/2.x checkpoint")
    if by_prefix["clip"]:
        groups["text_encoder"].text_kind = "clip"
        unknown += _text_from_hf(f, by_prefix["clip"], "cond_stage_model.transformer.", groups["text_encoder"])
    elif by_prefix["openclip"]:
        groups["text_encoder"].text_kind = "openclip"
        unknown += _text_from_openclip(f, by_prefix["openclip"], "cond_stage_model.model.",
                                       groups["text_encoder"])
    if unknown:
        raise WeightsError(f"{path}: {len(unknown)} tensors match no SD 1.x/2.x component: {_short(unknown)}")
    groups["unet"].ignored += ignored
    src = Source("single-file", path, groups, ema=(use_ema if has_ema else None), files=[f])
    return src


# ---------------------------------------------------------------- diffusers folders


WEIGHT_NAMES = {"text_encoder": "model", "unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model"}


def component_files(folder: Path, group: str) -> list[Path]:
    """The safetensors files of one diffusers component folder: sharded index or single file;
    the plain files first, the `.fp16` variant when only that exists."""
    stem = WEIGHT_NAMES[group]
    for variant in ("", ".fp16"):
        index = folder / f"{stem}{variant}.safetensors.index.json"
        if index.is_file():
            data = _read_json(index)
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise WeightsError(f"{index}: not a safetensors index (its weight_map is not an object of tensor "
                                   "names to file names); re-download it")
            shards = sorted(set(weight_map.values()))
            root = folder.resolve()
            for shard in shards:  # resolved and checked before anything is opened
                if "/" in shard or "\\" in shard or shard in ("", ".", "..") \
                        or not (folder / shard).resolve().is_relative_to(root):
                    raise WeightsError(f"{index}: shard {shard!r} is not a file name inside {folder}; the index "
                                       "may only name files beside it: re-download it")
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise WeightsError(f"{index}: shard {missing[0]} is missing ({len(missing)} of {len(shards)}); "
                                   "download every shard")
            return [folder / s for s in shards]
        single = folder / f"{stem}{variant}.safetensors"
        if single.is_file():
            return [single]
    others = sorted(p for p in folder.glob("*.safetensors"))
    if len(others) == 1:
        return others
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []
    if pickles:
        refuse_pickle(pickles[0])
    raise WeightsError(f"{folder}: no {stem}.safetensors (or sharded index / .fp16 variant); download the "
                       "safetensors weights of this component")


def _read_json(path: Path) -> dict | None:
    """A JSON object from a config / index file, or None when there is no file; anything else (not
    UTF-8, not JSON, a list, nested beyond the parser's depth, a huge file) is one WeightsError."""
    if not path.is_file():
        return None
    if path.stat().st_size > 64 << 20:
        raise WeightsError(f"{path}: {path.stat().st_size:,} bytes is too large for a JSON config; re-download it")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise WeightsError(f"{path}: not UTF-8 text; re-download it") from None
    except (json.JSONDecodeError, RecursionError):
        raise WeightsError(f"{path}: not valid JSON; re-download it") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: holds a JSON {type(data).__name__}, not an object; re-download it")
    return data


def load_group_files(group_name: str, files: list[Path], config: dict | None, layout_hint: str) -> Group:
    """A component from files in diffusers naming, or (overrides) the original naming."""
    g = Group(group_name, config=config, layout=layout_hint)
    for p in files:
        f = SafetensorsFile(p)
        g.files.append(f)
        keys = f.keys()
        shapes = {k: f.shape(k) for k in keys}
        _refuse_unsupported(p, keys, shapes)
        if group_name == "text_encoder":
            if any(k.startswith("cond_stage_model.model.") for k in keys):
                g.text_kind = "openclip"
                unknown = _text_from_openclip(f, keys, "cond_stage_model.model.", g)
            elif any(k.startswith(("transformer.resblocks.", "token_embedding.")) for k in keys):
                g.text_kind = "openclip"
                unknown = _text_from_openclip(f, keys, "", g)
            else:
                strip = "cond_stage_model.transformer." if any(
                    k.startswith("cond_stage_model.transformer.") for k in keys) else ""
                g.text_kind = "clip"
                unknown = _text_from_hf(f, keys, strip, g)
        elif group_name == "vae":
            prefix = "first_stage_model." if any(k.startswith("first_stage_model.") for k in keys) else ""
            unknown = _vae_from(f, [k for k in keys if not k.startswith(_IGNORED_PREFIXES)], prefix, g)
        else:
            if any(k.startswith("model.diffusion_model.") for k in keys):
                unknown = _unet_from_ldm(f, [k for k in keys if k.startswith("model.diffusion_model.")],
                                         "model.diffusion_model.", g, None)
                unknown += [k for k in keys if not k.startswith("model.diffusion_model.")]
            elif any(k.startswith("input_blocks.") for k in keys):
                unknown = _unet_from_ldm(f, keys, "", g, None)
            else:
                unknown = _unet_from_diffusers(f, keys, g)
        if unknown:
            raise WeightsError(f"{p}: {len(unknown)} tensors are not {group_name} weights: {_short(unknown)}")
    return g


def open_diffusers_folder(path: Path) -> Source:
    index = _read_json(path / "model_index.json") or {}
    if "text_encoder_2" in index or (path / "text_encoder_2").is_dir():
        raise WeightsError(f"{path}: this is an SDXL pipeline (two text encoders); only SD 1.x and 2.x "
                           "are supported")
    if "transformer" in index or (path / "transformer").is_dir():
        raise WeightsError(f"{path}: this pipeline has a transformer denoiser (SD3 / DiT), not an SD 1.x/2.x "
                           "UNet")
    groups = {}
    files = []
    for g in GROUPS:
        folder = path / g
        if not folder.is_dir():
            raise WeightsError(f"{path}: diffusers folder without {g}/; download the whole pipeline "
                               f"(or pass {g}=PATH)")
        config = _read_json(folder / "config.json")
        group = load_group_files(g, component_files(folder, g), config, "diffusers")
        groups[g] = group
        files += group.files
    sched = _read_json(path / "scheduler" / "scheduler_config.json")
    prediction = (sched or {}).get("prediction_type", "epsilon" if sched else None)
    return Source("diffusers", path, groups, prediction_type=prediction, files=files)


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "model_index.json").is_file() or (path / "unet").is_dir())


def open_override(group: str, path: Path) -> Group:
    """A per-component replacement: a diffusers component folder, or one file in either naming."""
    path = Path(path)
    refuse_pickle(path)
    if path.is_dir():
        if (path / group).is_dir():  # a whole pipeline folder: take its component
            path = path / group
        return load_group_files(group, component_files(path, group), _read_json(path / "config.json"),
                                "diffusers")
    if not path.is_file():
        raise WeightsError(f"{path}: no such file or folder; check the {group} override path")
    config = _read_json(path.parent / "config.json") if path.parent.joinpath("config.json").is_file() else None
    layout = "diffusers"
    g = load_group_files(group, [path], config, layout)
    if not g.tensors:
        raise WeightsError(f"{path}: holds no {group} weights")
    return g


def open_source(path: Path, use_ema: bool) -> Source:
    path = Path(path)
    if path.is_dir():
        if is_diffusers_folder(path):
            return open_diffusers_folder(path)
        st = sorted(path.glob("*.safetensors"))
        if len(st) == 1:
            return open_single_file(st[0], use_ema)
        raise WeightsError(f"{path}: unknown layout (neither a diffusers pipeline folder with "
                           "model_index.json/unet/ nor a folder with one .safetensors file)")
    if not path.exists():
        raise WeightsError(f"{path}: no such file or folder; check the checkpoint path")
    refuse_pickle(path)
    if path.suffix.lower() != ".safetensors":
        raise WeightsError(f"{path}: unknown checkpoint format {path.suffix!r}; pass a .safetensors file "
                           "or a diffusers folder")
    return open_single_file(path, use_ema)
