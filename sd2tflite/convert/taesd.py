"""The tiny autoencoder (TAESD, diffusers' AutoencoderTiny) as optional `taesd_decoder` / `taesd_encoder`
components: Keras builders, and the importer of its published safetensors files.

    vae = open_taesd("taesd/")            # a diffusers AutoencoderTiny folder (config.json + weights),
                                          # one AutoencoderTiny .safetensors file, or madebyollin's
                                          # taesd_decoder.safetensors / taesd_encoder.safetensors
    model = vae.build("taesd_decoder", img_height=512, img_width=512)

Interfaces are the full VAE's: the decoder takes the pipeline's latent (the UNet's scale) and gives an
image in [-1, 1]; the encoder takes an image in [-1, 1] and gives the pipeline's latent. Scaling as
diffusers does: pipelines hand AutoencoderTiny `latent / scaling_factor` (1.0 for TAESD: it works on
the UNet's scale directly) and multiply what it encodes by scaling_factor. Inside, the decoder clamps
softly (`tanh(z / 3) * 3`) and maps [0, 1] to [-1, 1]; the encoder maps [-1, 1] to [0, 1] first.
`latent_magnitude` / `latent_shift` only pack latents into 8-bit images (diffusers' scale_latents);
decode and encode never use them, so they are recorded, not applied.

Canonical names are diffusers' (`decoder.layers.N.*`, `encoder.layers.N.*`); madebyollin's files name
the same Sequential by index, the decoder's shifted by one for its leading Clamp. Pickles (.pth) are
refused. Keras is imported by `build` only.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import UsageError, WeightsError
from .checkpoint.reader import SafetensorsFile, refuse_pickle

COMPONENTS = ("taesd_decoder", "taesd_encoder")
_PREFIX = {"taesd_decoder": "decoder", "taesd_encoder": "encoder"}
_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
_MADEBYOLLIN = {"decoder": "taesd_decoder.safetensors", "encoder": "taesd_encoder.safetensors"}


@dataclass(frozen=True)
class TaesdArch:
    """diffusers' AutoencoderTiny config, the fields that shape the graph (defaults: madebyollin/taesd)."""

    encoder_block_out_channels: tuple[int, ...] = (64, 64, 64, 64)
    decoder_block_out_channels: tuple[int, ...] = (64, 64, 64, 64)
    num_encoder_blocks: tuple[int, ...] = (1, 3, 3, 3)
    num_decoder_blocks: tuple[int, ...] = (3, 3, 3, 1)
    latent_channels: int = 4
    scaling_factor: float = 1.0
    latent_magnitude: float = 3.0
    latent_shift: float = 0.5

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "TaesdArch":
        fields = cls.__dataclass_fields__
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in fields})


DEFAULT = TaesdArch()


# ---------------------------------------------------------------- the layer plans (data)


def decoder_plan(a: TaesdArch) -> list[tuple[int, str, dict]]:
    """diffusers' DecoderTiny Sequential: (index, kind, options); kinds conv | relu | block | upsample."""
    c = a.decoder_block_out_channels
    plan = [(0, "conv", {"filters": c[0], "bias": True}), (1, "relu", {})]
    for i, n in enumerate(a.num_decoder_blocks):
        final = i == len(c) - 1
        plan += [(len(plan), "block", {"filters": c[i]}) for _ in range(n)]
        plan = [(j, k, o) for j, (_, k, o) in enumerate(plan)]
        if not final:
            plan.append((len(plan), "upsample", {}))
        plan.append((len(plan), "conv", {"filters": 3 if final else c[i], "bias": final}))
    return plan


def encoder_plan(a: TaesdArch) -> list[tuple[int, str, dict]]:
    """diffusers' EncoderTiny Sequential: a conv per level (the first plain, the others stride 2 without
    bias) and its blocks, then the conv to the latent channels."""
    c = a.encoder_block_out_channels
    plan: list[tuple[int, str, dict]] = []
    for i, n in enumerate(a.num_encoder_blocks):
        plan.append((len(plan), "conv", {"filters": c[i], "bias": i == 0, "stride": 1 if i == 0 else 2}))
        plan += [(len(plan) + j, "block", {"filters": c[i]}) for j in range(n)]
    plan.append((len(plan), "conv", {"filters": a.latent_channels, "bias": True}))
    return plan


def _conv(filters: int, bias: bool = True, stride: int = 1, kernel: int = 3):
    import keras

    layers = [keras.layers.ZeroPadding2D(1)] if kernel == 3 else []  # PyTorch's padding=1 (also at stride 2)
    layers.append(keras.layers.Conv2D(filters, kernel, strides=stride, use_bias=bias))
    return layers


def build(arch: TaesdArch, component: str, img_height: int, img_width: int):
    """The component as a keras.Model with fresh weights, and its rows (canonical name, Keras variable,
    transform) in the convention of convert.checkpoint.builders."""
    import keras

    if component not in COMPONENTS:
        raise UsageError(f"unknown tiny-autoencoder component {component!r}; use {' or '.join(COMPONENTS)}")
    if img_height % 64 or img_width % 64:
        raise UsageError(f"img_height and img_width must be multiples of 64 (got {img_height}x{img_width})")
    prefix = _PREFIX[component]
    rows: list[tuple[str, object, str]] = []

    def conv(x, name: str, **options):
        layers = _conv(options["filters"], options.get("bias", True), options.get("stride", 1),
                       options.get("kernel", 3))
        for layer in layers:
            x = layer(x)
        k = layers[-1]
        rows.append((f"{name}.weight", k.kernel, "conv"))
        if k.use_bias:
            rows.append((f"{name}.bias", k.bias, "copy"))
        return x

    def block(x, name: str, filters: int):
        y = conv(x, f"{name}.conv.0", filters=filters)
        y = keras.layers.ReLU()(y)
        y = conv(y, f"{name}.conv.2", filters=filters)
        y = keras.layers.ReLU()(y)
        y = conv(y, f"{name}.conv.4", filters=filters)
        skip = x if x.shape[-1] == filters else conv(x, f"{name}.skip", filters=filters, bias=False, kernel=1)
        return keras.layers.ReLU()(keras.layers.Add()([y, skip]))

    if component == "taesd_decoder":
        latent = keras.layers.Input((img_height // 8, img_width // 8, arch.latent_channels), name="latent")
        x = keras.layers.Rescaling(1.0 / arch.scaling_factor)(latent) if arch.scaling_factor != 1.0 else latent
        x = keras.layers.Rescaling(3.0)(keras.layers.Activation("tanh")(keras.layers.Rescaling(1 / 3.0)(x)))
        plan, inputs = decoder_plan(arch), latent
    else:
        image = keras.layers.Input((img_height, img_width, 3), name="image")
        x = keras.layers.Rescaling(0.5, offset=0.5)(image)  # [-1, 1] -> [0, 1]
        plan, inputs = encoder_plan(arch), image
    for index, kind, options in plan:
        name = f"{prefix}.layers.{index}"
        if kind == "conv":
            x = conv(x, name, **options)
        elif kind == "block":
            x = block(x, name, options["filters"])
        elif kind == "relu":
            x = keras.layers.ReLU()(x)
        else:
            x = keras.layers.UpSampling2D(2, interpolation="nearest")(x)
    if component == "taesd_decoder":
        x = keras.layers.Rescaling(2.0, offset=-1.0)(x)  # [0, 1] -> [-1, 1]
    elif arch.scaling_factor != 1.0:
        x = keras.layers.Rescaling(arch.scaling_factor)(x)
    return keras.Model(inputs, x, name=component), rows


# ---------------------------------------------------------------- the files


@dataclass
class Taesd:
    path: Path
    arch: TaesdArch
    layout: str  # "diffusers" | "madebyollin"
    tensors: dict[str, tuple[SafetensorsFile, str]] = field(default_factory=dict)  # canonical -> (file, key)

    @property
    def files(self) -> list[SafetensorsFile]:
        seen = {}
        for f, _ in self.tensors.values():
            seen[str(f.path)] = f
        return list(seen.values())

    def has(self, component: str) -> bool:
        return any(n.startswith(_PREFIX[component] + ".") for n in self.tensors)

    def identity(self) -> dict:
        return {"kind": "taesd", "path": str(self.path), "layout": self.layout, "architecture": self.arch.to_json(),
                "files": [{"path": str(f.path), "sha256": f.sha256} for f in self.files]}

    def build(self, component: str, img_height: int, img_width: int):
        model, rows = build(self.arch, component, img_height, img_width)
        return self.load(component, model, rows)

    def load(self, component: str, model, rows):
        if not self.has(component):
            what = "decoder" if component == "taesd_decoder" else "encoder"
            raise WeightsError(f"{self.path}: holds no TAESD {what} weights; pass the taesd_{what}.safetensors file "
                               "or the whole AutoencoderTiny folder")
        prefix = _PREFIX[component] + "."
        expected = {n for n in self.tensors if n.startswith(prefix)}
        used = {name for name, _, _ in rows}
        if used - expected or expected - used:
            missing, left = sorted(used - expected), sorted(expected - used)
            raise WeightsError(f"{self.path}: the TAESD {_PREFIX[component]} does not fit its config ("
                               f"{len(missing)} tensors missing, e.g. {missing[:2]}; {len(left)} unused, e.g. "
                               f"{left[:2]}); pass the config.json that came with the weights")
        for name, var, transform in rows:
            f, key = self.tensors[name]
            x = f.get(key)
            want = tuple(var.shape)
            x = x.transpose(2, 3, 1, 0) if transform == "conv" else x
            if tuple(x.shape) != want:
                raise WeightsError(f"{key} in {f.path.name}: shape {list(f.shape(key))} does not fit the TAESD "
                                   f"config; pass the config.json that came with the weights")
            if not np.isfinite(x).all():
                raise WeightsError(f"{key} in {f.path.name} holds NaN or Inf values; re-download the file")
            var.assign(np.ascontiguousarray(x, dtype=np.float32))
        return model


def _config(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise WeightsError(f"{path}: not valid JSON; re-download it") from None
    if data.get("_class_name") not in (None, "AutoencoderTiny"):
        raise WeightsError(f"{path}: a {data['_class_name']} config, not AutoencoderTiny's; pass the tiny "
                           "autoencoder (TAESD) folder")
    for key, allowed in (("act_fn", "relu"), ("upsample_fn", "nearest"), ("upsampling_scaling_factor", 2),
                         ("in_channels", 3), ("out_channels", 3), ("shift_factor", 0.0)):
        if key in data and data[key] not in (allowed, None):
            raise WeightsError(f"{path}: AutoencoderTiny {key}={data[key]!r} is not supported (only {allowed!r})")
    return data


def _counts(indices: dict[int, str]) -> tuple[int, ...]:
    """Blocks per level from a Sequential's kinds by index (a conv starts each level but the last)."""
    counts, current = [], None
    for i in sorted(indices):
        if indices[i] == "conv":
            if current is not None:
                counts.append(current)
            current = 0
        elif current is not None:
            current += 1
    return tuple(counts)


def _arch_from_tensors(tensors: dict[str, tuple[SafetensorsFile, str]], config: dict | None) -> TaesdArch:
    if config:
        known = TaesdArch.__dataclass_fields__
        return TaesdArch.from_json({k: v for k, v in config.items() if k in known and v is not None})
    kinds: dict[str, dict[int, str]] = {"encoder": {}, "decoder": {}}
    widths: dict[str, dict[int, int]] = {"encoder": {}, "decoder": {}}
    latent = 4
    for name, (f, key) in tensors.items():
        m = re.match(r"^(encoder|decoder)\.layers\.(\d+)\.(conv\.0\.weight|weight)$", name)
        if m:
            part, i = m.group(1), int(m.group(2))
            kinds[part][i] = "block" if m.group(3).startswith("conv") else "conv"
            widths[part][i] = f.shape(key)[0]
            if part == "decoder" and i == 0:
                latent = f.shape(key)[1]
    enc = kinds["encoder"]
    dec = kinds["decoder"]
    arch = {}
    if enc:
        convs = [i for i in sorted(enc) if enc[i] == "conv"]
        arch["num_encoder_blocks"] = _counts(enc) if len(convs) > 1 else DEFAULT.num_encoder_blocks
        arch["encoder_block_out_channels"] = tuple(widths["encoder"][i] for i in convs[:-1])
        latent = widths["encoder"][convs[-1]]
    if dec:
        # the decoder's level-ending convs follow its blocks: count blocks between convs after index 0
        counts, current = [], 0
        for i in sorted(dec):
            if i == 0:
                continue
            if dec[i] == "block":
                current += 1
            else:
                counts.append(current)
                current = 0
        arch["num_decoder_blocks"] = tuple(counts)
        arch["decoder_block_out_channels"] = (widths["decoder"][0],) * len(counts)  # one width (TAESD's)
    return TaesdArch(**{**asdict(DEFAULT), **arch, "latent_channels": latent})


def _add(tensors: dict, f: SafetensorsFile, rename) -> None:
    for key in f.keys():
        name = rename(key)
        if name is None:
            raise WeightsError(f"{f.path}: tensor {key} is not a TAESD (AutoencoderTiny) weight; pass TAESD's "
                               "own files")
        tensors[name] = (f, key)


def _madebyollin(key: str, part: str) -> str | None:
    m = re.match(r"^(\d+)\.(.+)$", key)
    if not m:
        return None
    index = int(m.group(1)) - (1 if part == "decoder" else 0)  # the decoder's Sequential starts with a Clamp
    return f"{part}.layers.{index}.{m.group(2)}" if index >= 0 else None


def _kind_of_file(f: SafetensorsFile) -> str:
    keys = f.keys()
    if any(k.startswith(("encoder.layers.", "decoder.layers.")) for k in keys):
        return "diffusers"
    if keys and all(re.match(r"^\d+\.", k) for k in keys):
        # madebyollin's Sequentials: the encoder starts with a conv from RGB, the decoder with a Clamp
        if "0.weight" in keys:
            return "encoder"
        if "1.weight" in keys:
            return "decoder"
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.", "post_quant_conv.")) for k in keys):
        raise WeightsError(f"{f.path}: this is a full VAE (AutoencoderKL), not the tiny autoencoder; pass it as "
                           "vae=PATH, and a TAESD file as taesd=PATH")
    raise WeightsError(f"{f.path}: not a TAESD file (expected AutoencoderTiny's encoder.layers.* / decoder.layers.* "
                       "or madebyollin's taesd_decoder / taesd_encoder tensors)")


def open_taesd(path: str | Path) -> Taesd:
    """Reads headers and the config (no weights): a diffusers AutoencoderTiny folder (or a pipeline
    folder with `vae/` holding one), one AutoencoderTiny .safetensors file, or madebyollin's
    taesd_decoder / taesd_encoder .safetensors (one of them, or a folder holding both)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsError(f"{path}: no such file or folder; check the TAESD path")
    refuse_pickle(path)
    tensors: dict[str, tuple[SafetensorsFile, str]] = {}
    config = None
    if path.is_dir():
        folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
        config = _config(folder / "config.json")
        weights = next((folder / w for w in _WEIGHTS if (folder / w).is_file()), None)
        if weights is not None:
            f = SafetensorsFile(weights)
            if _kind_of_file(f) != "diffusers":
                raise WeightsError(f"{weights}: not AutoencoderTiny weights; pass a TAESD folder")
            _add(tensors, f, lambda k: k)
            layout = "diffusers"
        else:
            found = {part: folder / name for part, name in _MADEBYOLLIN.items() if (folder / name).is_file()}
            if not found:
                pickles = sorted(folder.glob("*.pth"))
                if pickles:
                    refuse_pickle(pickles[0])
                raise WeightsError(f"{folder}: no TAESD weights (diffusion_pytorch_model.safetensors, or "
                                   "taesd_decoder.safetensors / taesd_encoder.safetensors)")
            for part, p in found.items():
                _add(tensors, SafetensorsFile(p), lambda k, part=part: _madebyollin(k, part))
            layout = "madebyollin"
    else:
        if path.suffix.lower() != ".safetensors":
            raise WeightsError(f"{path}: unknown TAESD format {path.suffix!r}; pass a .safetensors file or folder")
        f = SafetensorsFile(path)
        kind = _kind_of_file(f)
        if kind == "diffusers":
            config = _config(path.parent / "config.json")
            _add(tensors, f, lambda k: k)
            layout = "diffusers"
        else:
            _add(tensors, f, lambda k: _madebyollin(k, kind))
            layout = "madebyollin"
    if not tensors:
        raise WeightsError(f"{path}: holds no TAESD weights")
    return Taesd(path, _arch_from_tensors(tensors, config), layout, tensors)


def random_taesd(component: str, img_height: int, img_width: int, seed: int, arch: TaesdArch = DEFAULT):
    """The component at madebyollin/taesd's shapes with seeded random weights (benchmarks, plans)."""
    import keras

    keras.utils.set_random_seed(seed)
    model, _ = build(arch, component, img_height, img_width)
    return model
