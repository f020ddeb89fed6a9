"""Makes the PyTorch-checkpoint fixtures in tests/data/checkpoints/ (tiny SD 1.x / 2.x models).

Runs in a separate venv with torch + diffusers + transformers + peft (never the project's own):

    python3 -m venv /work/torchvenv
    /work/torchvenv/bin/pip install torch==2.13.0 && /work/torchvenv/bin/pip install diffusers transformers safetensors peft numpy
    /work/torchvenv/bin/python scripts/make_checkpoint_fixtures.py [OUT_DIR]

Deterministic (fixed seeds). Every weight is random (norms and biases included) and rounded to a
value that bf16, fp16 and fp32 all hold exactly, so the fp16/bf16 files carry the same numbers as
the fp32 ones and one golden set serves every file of a family. Goldens are stored in the Keras
(NHWC) convention: `*` is the model with keras-cv's numerics (GroupNorm epsilon 1e-5 everywhere,
tanh-approximated GELU in GEGLU and in the v2 text MLP), which isolates the weight mapping from
keras-cv's own deviations; `*_exact` (diffusers/transformers as they are) is stored as
`*_exact_delta`, its fp16 difference to `*` (the tests add it back; the error this leaves is checked
below to be under 1e-5 of the output scale, a thousandth of the tolerance it is held to).

Size (the fixtures are committed): each weight is stored once. Committed: the v1 single file
(`sd-v1-tiny-ema.safetensors`, raw + EMA UNet; tests/test_checkpoint_cli.py converts it) and the v2
diffusers folder. Derived by the tests into a temporary folder, from those files and a plan written
here (`*.plan.json.gz`: every tensor's name, dtype, shape and where it comes from):
- the v1 diffusers folder: the configs, the sharded index and the model index committed as
  diffusers wrote them (`v1/diffusers/`), the weights gathered from the single file's EMA copy;
- the v2 single file (bf16, OpenCLIP), gathered from the v2 diffusers folder.
Each plan is checked here: the v1 one gives back exactly the tensors diffusers' `save_pretrained`
wrote, the v2 one is read back to the models by diffusers' own original -> diffusers converters
(`single_file_utils`), as is the v1 single file (EMA and raw weights).

The models are as small as the mapping's cases allow (~1 MB of weights each), mostly at the
smallest width keras-cv's layers take (32: GroupNorm's 32 groups); each case is in one family at
least:
- text encoders with a 256-token vocabulary (the importer reads it from the embedding; the ids in
  the goldens stay below it, BOS/EOS are its last two ids as CLIP's are); v1: 1 layer, 64 wide
  (context width != UNet width), v2: 2 layers (+ OpenCLIP's unused last one in the single file);
- v1 UNet: one attention level (conv projections, 8 heads from the config or the v1 convention);
  it is stored twice (raw + EMA), so it has no more than it needs;
- v2 UNet: three levels, attention only in the middle one, so that both an attention level and a
  level without attention have a down- and an upsampler (`output_blocks.N.2.conv` / `.1.conv` in
  the original layout); linear projections. Its first level is 64 wide: with 32 channels in 32
  groups every GroupNorm group is one channel, which cancels the per-channel time embedding a
  resnet adds before its second norm (and conv1's bias): only resnets 64 wide or more depend on the
  timestep (v1's UNet, 32 wide, gives the same output at every timestep). The width change costs
  the fewest weights at the first level; it also puts a 1x1 shortcut in a down resnet;
- time embedding width != timestep width and != 4 x it (v1: 64 for 32, v2: 32 for 64);
- VAEs: 4 levels (8x latents), 32 wide, one resnet per level (the decoder two); same shapes in v1
  and v2, other values (the VAE override tests tell them apart by their outputs).
Goldens: the UNet's at 64x128 (latents 8x16: non-square, catches H/W mix-ups), the VAE's at 64x64
(images, the biggest goldens; tests/test_checkpoint.py checks the VAE's non-square shapes).
The v1 UNet, VAE and text encoder are 32, 32 and 64 wide: tests/test_checkpoint_cli.py checks that.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import diffusers
import peft
import safetensors
import transformers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders import single_file_utils as sfu
from diffusers.models import activations as d_act
from diffusers.models.embeddings import get_timestep_embedding
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel
from transformers.activations import ACT2FN

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests" / "data" / "checkpoints"

IMG_H, IMG_W = 64, 128  # the UNet's (latents 8x16): non-square on purpose, catches H/W mix-ups
VAE_H, VAE_W = 64, 64  # the VAE's: its goldens are images, the biggest ones
BATCH = 2
TIMESTEPS = (1, 500, 999)
LORA_SCALE = 0.7
LORA_TIMESTEP = 500  # the one the LoRA tests use
RAW_TIMESTEPS = (1, 999)  # the ones the v1 raw-weights (--no-ema) test uses
VOCAB = 256
BOS, EOS = VOCAB - 2, VOCAB - 1  # CLIP's are the last two ids too (49406, 49407)
GOLDEN_EXACT_ERROR = 1e-5  # max error of a `*_exact` golden stored as fp16 delta, / output scale

V1_FILE = "sd-v1-tiny-ema.safetensors"
V2_FILE = "sd-v2-tiny.safetensors"

FAMILIES = {
    "v1": dict(
        seed=1,
        # UNet 32 wide, text encoder 64 wide: tests/test_checkpoint_cli.py checks those dims
        unet=dict(block_out_channels=(32,), attention=(True,), layers_per_block=1,
                  attention_head_dim=8, use_linear_projection=False, time_embedding_dim=64),
        text=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=1, num_attention_heads=1,
                  hidden_act="quick_gelu"),
        vae=dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1),
        prediction_type="epsilon",
    ),
    "v2": dict(
        seed=2,
        # SD 2.x convention: head dim 64, so heads = width // 64, at least 1 (diffusers' config
        # field `attention_head_dim` holds the number of heads, as in SD 2.1's own config).
        unet=dict(block_out_channels=(64, 32, 32), attention=(False, True, False), layers_per_block=1,
                  attention_head_dim=[1, 1, 1], use_linear_projection=True, time_embedding_dim=32),
        text=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                  hidden_act="gelu"),
        vae=dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1),
        prediction_type="v_prediction",
    ),
}


# ---------------------------------------------------------------- model construction


def make_models(cfg: dict):
    width = cfg["text"]["hidden_size"]
    text_cfg = CLIPTextConfig(vocab_size=VOCAB, max_position_embeddings=77, projection_dim=width,
                              layer_norm_eps=1e-5, bos_token_id=BOS, eos_token_id=EOS, **cfg["text"])
    text = CLIPTextModel(text_cfg).eval()
    unet_cfg = dict(cfg["unet"])
    attention = unet_cfg.pop("attention")
    unet = UNet2DConditionModel(
        sample_size=IMG_H // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        cross_attention_dim=width,
        norm_num_groups=32,
        **unet_cfg,
    ).eval()
    levels = len(cfg["vae"]["block_out_channels"])
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=VAE_H,
        **cfg["vae"],
    ).eval()
    return text, unet, vae


def exact_value(t: torch.Tensor) -> torch.Tensor:
    """Rounds to bf16 and drops values under fp16's normal range: exact in bf16, fp16 and fp32."""
    t = t.to(torch.bfloat16).to(torch.float32)
    t[t.abs() < 2.0 ** -14] = 0.0
    return t


def randomize(module: torch.nn.Module, gen: torch.Generator):
    """Random values for every parameter (norm gains/offsets and biases too)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            shape = p.shape
            r = torch.randn(shape, generator=gen)
            norm_like = any(k in name for k in ("norm", "layer_norm", "ln_"))
            if name.endswith("token_embedding.weight"):
                v = r * 0.7
            elif name.endswith("position_embedding.weight"):
                v = r * 0.3
            elif norm_like and leaf == "weight":
                v = 1.0 + 0.25 * r
            elif leaf == "bias":
                v = 0.1 * r
            else:  # linear / conv kernels: keep activations at unit scale
                fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
                v = r / np.sqrt(fan_in)
            p.copy_(exact_value(v))


def kcv_numerics(*modules):
    """keras-cv's numerics: GroupNorm eps 1e-5, tanh GELU (GEGLU and the v2 text MLP)."""
    for m in modules:
        for sub in m.modules():
            if isinstance(sub, torch.nn.GroupNorm):
                sub.eps = 1e-5
            if isinstance(sub, d_act.GEGLU):
                sub.gelu = lambda gate: F.gelu(gate, approximate="tanh")
            if type(sub).__name__ == "CLIPMLP" and sub.config.hidden_act == "gelu":
                sub.activation_fn = ACT2FN["gelu_pytorch_tanh"]


# ---------------------------------------------------------------- goldens


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().permute(0, 2, 3, 1).numpy().astype(np.float32)


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def bf16_grid(x: np.ndarray) -> np.ndarray:
    """Inputs on bf16's grid: any values do, and these compress (half their bits are zero)."""
    return exact_value(torch.from_numpy(x)).numpy()


def make_inputs(rng: np.random.Generator, width: int, t_dim: int) -> dict[str, np.ndarray]:
    ids = np.full((BATCH, 77), EOS, np.int32)  # EOS padding, as keras-cv pads
    for b in range(BATCH):
        n = 5 + 7 * b
        ids[b, 0] = BOS
        ids[b, 1:n] = rng.integers(0, VOCAB - 2, n - 1)
        ids[b, n] = EOS
    assert ids.max() < VOCAB
    latent = (BATCH, IMG_H // 8, IMG_W // 8, 4)
    inputs = {
        "tokens": ids,
        "positions": np.tile(np.arange(77, dtype=np.int32), (BATCH, 1)),
        "unet_latent": bf16_grid(rng.standard_normal(latent).astype(np.float32)),
        "unet_context": bf16_grid(rng.standard_normal((BATCH, 77, width)).astype(np.float32)),
        "decoder_latent": bf16_grid(rng.standard_normal((BATCH, VAE_H // 8, VAE_W // 8, 4)).astype(np.float32)),
        # [-1, 1] in steps of 1/128 (8-bit pixels): compresses
        "image": (rng.integers(-128, 129, (BATCH, VAE_H, VAE_W, 3)) / 128).astype(np.float32),
        "timesteps": np.array(TIMESTEPS, np.int64),
    }
    for t in TIMESTEPS:
        emb = get_timestep_embedding(torch.full((BATCH,), t), t_dim, flip_sin_to_cos=True,
                                     downscale_freq_shift=0)
        inputs[f"timestep_embedding_{t}"] = emb.numpy().astype(np.float32)
    return inputs


@torch.no_grad()
def text_out(text, inp) -> np.ndarray:
    out = text(input_ids=torch.from_numpy(inp["tokens"]).long(),
               position_ids=torch.from_numpy(inp["positions"]).long())
    return out.last_hidden_state.numpy()


@torch.no_grad()
def unet_out(unet, inp, timesteps=TIMESTEPS) -> dict[str, np.ndarray]:
    res = {}
    for t in timesteps:
        res[f"unet_{t}"] = nhwc(unet(nchw(inp["unet_latent"]), torch.full((BATCH,), t),
                                     encoder_hidden_states=torch.from_numpy(inp["unet_context"])).sample)
    return res


@torch.no_grad()
def vae_out(vae, inp) -> dict[str, np.ndarray]:
    dec = vae.decode(nchw(inp["decoder_latent"]) / 0.18215).sample
    enc = vae.encode(nchw(inp["image"])).latent_dist.mean * 0.18215
    return {"decoder": nhwc(dec), "image_encoder": nhwc(enc)}


def save_goldens(path: Path, goldens: dict[str, np.ndarray], exact: dict[str, np.ndarray]):
    """`exact[k]` as the fp16 `k_exact_delta` to `goldens[k]` (tests: `k_exact = k + k_exact_delta`)."""
    out = dict(goldens)
    for k, x in exact.items():
        delta = (x - goldens[k]).astype(np.float16)
        err = float(np.abs(goldens[k] + delta.astype(np.float32) - x).max())
        scale = max(1.0, float(np.abs(x).max()))
        assert err < GOLDEN_EXACT_ERROR * scale, (path, k, err)
        out[f"{k}_exact_delta"] = delta
    np.savez_compressed(path, **out)


# ---------------------------------------------------------------- diffusers -> original names


def unet_ldm_names(keys, config: dict) -> dict[str, str]:
    """diffusers UNet name -> original (CompVis) name, without `model.diffusion_model.`."""
    boc = config["block_out_channels"]
    lpb = config["layers_per_block"]
    down_attn = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    up_attn = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    m = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
         "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
         "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
         "mid_block.resnets.1": "middle_block.2"}
    n = len(boc)
    for i in range(n):
        for j in range(lpb):
            k = 1 + i * (lpb + 1) + j
            m[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{k}.0"
            if down_attn[i]:
                m[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{k}.1"
        if i < n - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{1 + i * (lpb + 1) + lpb}.0.op"
        for j in range(lpb + 1):
            k = i * (lpb + 1) + j
            m[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{k}.0"
            if up_attn[i]:
                m[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{k}.1"
        if i < n - 1:
            m[f"up_blocks.{i}.upsamplers.0.conv"] = \
                f"output_blocks.{i * (lpb + 1) + lpb}.{2 if up_attn[i] else 1}.conv"
    res_sub = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    out = {}
    for key in keys:
        prefix = max((p for p in m if key.startswith(p + ".")), key=len)
        rest = key[len(prefix) + 1:]
        if ".resnets." in prefix:
            head, leaf = rest.split(".", 1)
            rest = res_sub[head] + "." + leaf
        out[key] = m[prefix] + "." + rest
    return out


def vae_ldm_name(key: str, n_levels: int) -> tuple[str, bool]:
    """diffusers VAE name -> (original name, stored as a 1x1 conv rather than a linear weight)."""
    attn_sub = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    k = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    k = k.replace("mid_block.resnets.0", "mid.block_1").replace("mid_block.resnets.1", "mid.block_2")
    conv = False
    if "mid_block.attentions.0." in k:
        rest = k.split("mid_block.attentions.0.", 1)[1]
        mod, leaf = rest.rsplit(".", 1)
        k = k.split("mid_block.")[0] + "mid.attn_1." + attn_sub[mod] + "." + leaf
        conv = leaf == "weight" and mod != "group_norm"
    if k.startswith("encoder.down_blocks."):
        parts = k.split(".")
        rest = ".".join(parts[3:]).replace("resnets.", "block.").replace("downsamplers.0.", "downsample.")
        k = f"encoder.down.{parts[2]}.{rest}"
    if k.startswith("decoder.up_blocks."):
        parts = k.split(".")
        rest = ".".join(parts[3:]).replace("resnets.", "block.").replace("upsamplers.0.", "upsample.")
        k = f"decoder.up.{n_levels - 1 - int(parts[2])}.{rest}"
    return k, conv


def unet_to_ldm(sd: dict, config: dict) -> dict:
    """A diffusers UNet state dict in original names (scripts/make_full_size_checkpoint.py)."""
    return {name: sd[key] for key, name in unet_ldm_names(sd, config).items()}


def vae_to_ldm(sd: dict, n_levels: int) -> dict:
    """A diffusers VAE state dict in original names (scripts/make_full_size_checkpoint.py)."""
    out = {}
    for key, v in sd.items():
        name, conv = vae_ldm_name(key, n_levels)
        out[name] = v.reshape(*v.shape, 1, 1) if conv else v
    return out


def ema_key(key: str) -> str:
    """LitEma's flattened name: `model.diffusion_model.a.0.b` -> `model_ema.diffusion_modela0b`."""
    return "model_ema." + "".join(key.split(".")[1:])


def entry(name: str, src: list, shape, dtype: str, op: str = "copy", value=None) -> dict:
    """One tensor of a derived file: `src` ([file, key] pairs, concatenated on axis 0) reshaped to
    `shape`, then `op` (copy | negate), stored as `dtype`; or op `fill` with `value`."""
    e = {"name": name, "dtype": dtype, "shape": [int(s) for s in shape], "op": op}
    if src:
        e["src"] = [list(s) for s in src]
    if value is not None:
        e["value"] = value
    return e


def ldm_entries(family: str, files: dict[str, str], sds: dict[str, dict], cfg: dict, unet_config: dict,
                dtype: str) -> list[dict]:
    """The original-layout (single-file) tensors of a family, each from its diffusers tensor(s).
    files: component -> the file (relative path) the `src` pairs name; sds: component -> its tensors
    as that file holds them (names and shapes)."""
    out = []
    for key, name in unet_ldm_names(sds["unet"], unet_config).items():
        out.append(entry("model.diffusion_model." + name, [(files["unet"], key)], sds["unet"][key].shape, dtype))
    n_levels = len(cfg["vae"]["block_out_channels"])
    for key, x in sds["vae"].items():
        name, conv = vae_ldm_name(key, n_levels)
        out.append(entry("first_stage_model." + name, [(files["vae"], key)],
                         tuple(x.shape) + ((1, 1) if conv else ()), dtype))
    text = sds["text_encoder"]
    tf = files["text_encoder"]
    if family == "v1":  # CLIP as transformers names it, with the `text_model.` prefix
        for key, x in text.items():
            out.append(entry("cond_stage_model.transformer." + key, [(tf, key)], x.shape, dtype))
        return out
    # OpenCLIP (SD 2.x `cond_stage_model.model.*`): fused q/k/v; plus the parts SD 2.x files carry
    # and never use: a last resblock (SD 2.x takes the penultimate layer), text_projection,
    # logit_scale. The last resblock is the penultimate one negated: same shapes, other values.
    p = "" if "embeddings.token_embedding.weight" in text else "text_model."
    width = cfg["text"]["hidden_size"]
    n_layers = cfg["text"]["num_hidden_layers"]
    q = "cond_stage_model.model."
    for a, b in (("embeddings.token_embedding.weight", "token_embedding.weight"),
                 ("embeddings.position_embedding.weight", "positional_embedding"),
                 ("final_layer_norm.weight", "ln_final.weight"), ("final_layer_norm.bias", "ln_final.bias")):
        out.append(entry(q + b, [(tf, p + a)], text[p + a].shape, dtype))
    for i in range(n_layers + 1):
        src_i = min(i, n_layers - 1)
        op = "negate" if i == n_layers else "copy"
        h = f"{p}encoder.layers.{src_i}."
        r = f"{q}transformer.resblocks.{i}."
        for leaf in ("weight", "bias"):
            srcs = [(tf, h + f"self_attn.{n}_proj.{leaf}") for n in "qkv"]
            shape = (3 * width,) + tuple(text[srcs[0][1]].shape[1:])
            out.append(entry(r + f"attn.in_proj_{leaf}", srcs, shape, dtype, op))
        for a, b in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                     ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            for leaf in ("weight", "bias"):
                key = h + a + "." + leaf
                out.append(entry(r + b + "." + leaf, [(tf, key)], text[key].shape, dtype, op))
    out.append(entry(q + "text_projection", [], (width, width), dtype, "fill", 0.0))
    out.append(entry(q + "logit_scale", [], (), dtype, "fill", torch.tensor(4.6052).bfloat16().item()))
    return out


TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def apply_entry(e: dict, read) -> torch.Tensor:
    """What the tests do (tests/test_checkpoint.py derive()), in torch."""
    dtype = TORCH_DTYPES[e["dtype"]]
    if e["op"] == "fill":
        return torch.full(e["shape"], e["value"], dtype=dtype)
    x = torch.cat([read(f, k).float() for f, k in e["src"]], 0).reshape(e["shape"])
    if e["op"] == "negate":
        x = -x
    y = x.to(dtype)
    assert torch.equal(y.float(), x), ("not exact in", e["dtype"], e["name"])
    return y


def reader(base: Path):
    cache = {}

    def read(rel: str, key: str) -> torch.Tensor:
        if rel not in cache:
            cache[rel] = load_file(str(base / rel))
        return cache[rel][key]

    return read


def write_plan(path: Path, files: dict[str, dict]):
    """files: output path (relative to the derived folder) -> {metadata, tensors: [entry]}.
    gzipped JSON (170 kB as text), one tensor a line: `zcat PLAN | less`."""
    def dump(x):
        return json.dumps(x, separators=(",", ":"))

    parts = []
    for rel, spec in files.items():
        tensors = ",\n".join(dump(e) for e in spec["tensors"])
        parts.append(f'{dump(rel)}:{{"metadata":{dump(spec["metadata"])},"tensors":[\n{tensors}]}}')
    data = '{"files":{\n' + ",\n".join(parts) + "}}\n"
    assert json.loads(data) == {"files": files}
    path.write_bytes(gzip.compress(data.encode(), mtime=0))


def check_ldm_roundtrip(ldm: dict, unet_sd: dict, vae_sd: dict, text_sd: dict, unet, vae, family: str,
                        text_model, extract_ema: bool = False):
    """diffusers' own single-file converters must read our original layout back to the models."""
    assert sum(k.startswith("model_ema.") for k in ldm) in ((0,) if not extract_ema else range(101, 10 ** 6)), \
        "diffusers extracts EMA weights only from files with more than 100 of them"
    conv_unet = sfu.convert_ldm_unet_checkpoint(ldm, dict(unet.config), extract_ema=extract_ema)
    conv_vae = sfu.convert_ldm_vae_checkpoint(ldm, dict(vae.config))
    if family == "v1":
        conv_text = sfu.convert_ldm_clip_checkpoint(ldm)
    else:
        conv_text = sfu.convert_open_clip_checkpoint(text_model, ldm)
        # diffusers drops the unused last layer by its real index (23); here it is the extra one
        extra = f"layers.{text_model.config.num_hidden_layers}."
        conv_text = {k: v for k, v in conv_text.items() if extra not in k}
    for name, conv, ref in (("unet", conv_unet, unet_sd), ("vae", conv_vae, vae_sd),
                            ("text", conv_text, text_sd)):
        ref = {k.removeprefix("text_model."): v for k, v in ref.items() if not k.endswith("position_ids")}
        conv = {k.removeprefix("text_model."): v for k, v in conv.items()
                if not k.startswith("text_projection")}
        assert set(conv) == set(ref), (name, sorted(set(conv) ^ set(ref))[:10])
        for k in ref:
            assert torch.equal(conv[k].reshape(ref[k].shape).float(), ref[k].float()), (name, k)


# ---------------------------------------------------------------- saving


def contiguous(sd: dict, dtype=None) -> dict:
    return {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in sd.items()}


def write_scheduler(folder: Path, prediction_type: str):
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                  prediction_type=prediction_type).save_pretrained(folder / "scheduler")


def write_model_index(folder: Path):
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def write_diffusers(dd: Path, family: str, cfg: dict, text, unet, vae, text_sd, unet_sd, vae_sd):
    write_model_index(dd)
    write_scheduler(dd, cfg["prediction_type"])
    if family == "v1":
        # sharded fp16 UNet; text encoder only as the fp16 variant; fp32 VAE
        unet.half().save_pretrained(dd / "unet", safe_serialization=True, max_shard_size="300KB")
        unet.float()
        text.save_pretrained(dd / "text_encoder", safe_serialization=True)
        (dd / "text_encoder" / "model.safetensors").unlink()
        save_file(contiguous(text_sd, torch.float16), dd / "text_encoder" / "model.fp16.safetensors",
                  metadata={"format": "pt"})
        vae.save_pretrained(dd / "vae", safe_serialization=True)
        assert len(list((dd / "unet").glob("*.safetensors"))) > 1, "the v1 UNet must be sharded"
    else:
        # fp16 UNet and VAE; a bf16 text encoder, named as transformers 5 saves it (no `text_model.`)
        unet.save_pretrained(dd / "unet", safe_serialization=True)
        save_file(contiguous(unet_sd, torch.float16), dd / "unet" / "diffusion_pytorch_model.safetensors",
                  metadata={"format": "pt"})
        text.save_pretrained(dd / "text_encoder", safe_serialization=True)
        save_file(contiguous({k.removeprefix("text_model."): v for k, v in text_sd.items()}, torch.bfloat16),
                  dd / "text_encoder" / "model.safetensors", metadata={"format": "pt"})
        vae.save_pretrained(dd / "vae", safe_serialization=True)
        save_file(contiguous(vae_sd, torch.float16), dd / "vae" / "diffusion_pytorch_model.safetensors",
                  metadata={"format": "pt"})


def file_dtypes(path: Path) -> tuple[dict[str, str], dict]:
    """Tensor name -> safetensors dtype, and the header's metadata."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", None) or {}
    return {k: h["dtype"] for k, h in header.items()}, meta


def family_fixture(family: str, cfg: dict) -> dict:
    gen = torch.Generator().manual_seed(cfg["seed"])
    rng = np.random.default_rng(cfg["seed"])
    text, unet, vae = make_models(cfg)
    width = cfg["text"]["hidden_size"]
    t_dim = cfg["unet"]["block_out_channels"][0]
    inp = make_inputs(rng, width, t_dim)
    randomize(text, gen)
    randomize(unet, gen)
    randomize(vae, gen)

    fam_dir = OUT / family
    shutil.rmtree(fam_dir, ignore_errors=True)
    fam_dir.mkdir(parents=True)
    unet_sd = {k: v.clone() for k, v in unet.state_dict().items()}
    vae_sd = {k: v.clone() for k, v in vae.state_dict().items()}
    # the Hub's layout (transformers < 5 wrote the `text_model.` prefix; 5.x drops it on save)
    text_sd = {"text_model." + k: v.clone() for k, v in text.state_dict().items()}

    exact = {}
    exact.update(unet_out(unet, inp))
    exact.update(vae_out(vae, inp))
    exact["text_encoder"] = text_out(text, inp)
    if max(cfg["unet"]["block_out_channels"]) >= 64:  # see the docstring: 32-wide resnets ignore t
        spread = float(np.abs(exact[f"unet_{TIMESTEPS[0]}"] - exact[f"unet_{TIMESTEPS[-1]}"]).max())
        assert spread > 1e-2, (family, "the UNet's output does not depend on the timestep", spread)

    with tempfile.TemporaryDirectory() as tmp:
        dd = Path(tmp) / "diffusers"
        write_diffusers(dd, family, cfg, text, unet, vae, text_sd, unet_sd, vae_sd)
        if family == "v1":
            raw = v1_single_file(fam_dir, cfg, text, unet, vae, text_sd, unet_sd, vae_sd, dd)
        else:
            shutil.copytree(dd, fam_dir / "diffusers")
            v2_single_file_plan(fam_dir, cfg, text, unet, vae, text_sd, unet_sd, vae_sd)
            raw = None

    # keras-cv numerics goldens (same weights)
    kcv_numerics(text, unet, vae)
    goldens = dict(inp)
    goldens["text_encoder"] = text_out(text, inp)
    goldens.update(unet_out(unet, inp))
    goldens.update(vae_out(vae, inp))
    if raw is not None:
        unet.load_state_dict(raw)
        goldens.update({f"raw_{k}": v for k, v in unet_out(unet, inp, RAW_TIMESTEPS).items()})
        unet.load_state_dict(unet_sd)

    arch = {"timestep_dim": t_dim, "context_dim": width, "img_height": IMG_H, "img_width": IMG_W,
            "vae_img_height": VAE_H, "vae_img_width": VAE_W,
            "vocab_size": VOCAB, "prediction_type": cfg["prediction_type"], "config": cfg}
    (fam_dir / "fixture.json").write_text(json.dumps(arch, indent=2, default=list) + "\n")
    save_goldens(fam_dir / "golden.npz", goldens, exact)
    return dict(text=text, unet=unet, vae=vae, inp=inp, unet_sd=unet_sd, text_sd=text_sd, vae_sd=vae_sd)


def v1_single_file(fam_dir: Path, cfg, text, unet, vae, text_sd, unet_sd, vae_sd, dd: Path) -> dict:
    """The committed v1 single file (fp16): raw UNet weights under `model.diffusion_model.*`, other
    (EMA) weights under `model_ema.*` (what SD 1.x releases carry). The diffusers folder holds the
    EMA UNet (what SD releases and `--extract_ema` give): its configs are committed, its weights are
    a plan that gathers them from this file. Returns the raw UNet's state dict."""
    raw_unet = UNet2DConditionModel.from_config(unet.config).eval()
    randomize(raw_unet, torch.Generator().manual_seed(100))
    raw_sd = {k: v.clone() for k, v in raw_unet.state_dict().items()}
    mem = {"unet": unet_sd, "raw": raw_sd, "vae": vae_sd, "text_encoder": text_sd}
    files = {c: c for c in mem}
    sds = {"unet": unet_sd, "vae": vae_sd, "text_encoder": text_sd}
    entries = ldm_entries("v1", files, sds, cfg, dict(unet.config), "F16")

    def read(comp: str, key: str) -> torch.Tensor:
        return mem[comp][key]

    ldm = {}
    for e in entries:
        if e["name"].startswith("model.diffusion_model."):
            ldm[ema_key(e["name"])] = apply_entry(e, read)
            e = dict(e, src=[("raw", k) for _, k in e["src"]])
        ldm[e["name"]] = apply_entry(e, read)
    # buffers real SD files carry: the schedule, the EMA's state
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    ldm["betas"] = betas.half()
    ldm["alphas_cumprod"] = torch.cumprod(1 - betas, 0).half()
    ldm["model_ema.decay"] = torch.tensor(0.9999).half()
    ldm["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    save_file(contiguous(ldm), fam_dir / V1_FILE, metadata={"format": "pt"})

    back = load_file(str(fam_dir / V1_FILE))
    check_ldm_roundtrip(back, unet_sd, vae_sd, text_sd, unet, vae, "v1", text, extract_ema=True)
    no_ema = {k: v for k, v in back.items() if not k.startswith("model_ema.")}
    check_ldm_roundtrip(no_ema, raw_sd, vae_sd, text_sd, unet, vae, "v1", text)

    # the diffusers folder: configs as diffusers wrote them, weights gathered from the single file
    origin = {}
    for e in entries:
        (comp, key), = e["src"]
        name = ema_key(e["name"]) if comp == "unet" else e["name"]
        origin[(comp, key)] = (name, tuple(sds[comp][key].shape))
    plan = {}
    for path in sorted(dd.rglob("*.safetensors")):
        rel = str(path.relative_to(dd))
        comp = path.parent.name  # unet | vae | text_encoder
        dtypes, meta = file_dtypes(path)
        tensors = []
        for key in sorted(dtypes):
            name, shape = origin[(comp, key)]
            tensors.append(entry(key, [(V1_FILE, name)], shape, dtypes[key]))
        plan[rel] = {"metadata": meta, "tensors": tensors}
    read_v1 = reader(fam_dir)
    for rel, spec in plan.items():  # the plan gives back what diffusers wrote, bit for bit
        want = load_file(str(dd / rel))
        assert set(want) == {e["name"] for e in spec["tensors"]}, rel
        for e in spec["tensors"]:
            got = apply_entry(e, read_v1)
            assert got.dtype == want[e["name"]].dtype and torch.equal(got, want[e["name"]]), (rel, e["name"])
    write_plan(fam_dir / "diffusers.plan.json.gz", plan)
    skeleton = fam_dir / "diffusers"
    for path in sorted(dd.rglob("*")):
        if path.is_file() and path.suffix != ".safetensors":
            target = skeleton / path.relative_to(dd)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    return raw_sd


def v2_single_file_plan(fam_dir: Path, cfg, text, unet, vae, text_sd, unet_sd, vae_sd):
    """The v2 single file (bf16, OpenCLIP) as a plan over the committed v2 diffusers folder."""
    files = {"unet": "diffusers/unet/diffusion_pytorch_model.safetensors",
             "vae": "diffusers/vae/diffusion_pytorch_model.safetensors",
             "text_encoder": "diffusers/text_encoder/model.safetensors"}
    read = reader(fam_dir)
    sds = {c: load_file(str(fam_dir / f)) for c, f in files.items()}
    entries = ldm_entries("v2", files, sds, cfg, dict(unet.config), "BF16")
    # buffers real SD files carry (only their names matter: the importer leaves them)
    entries += [entry(n, [], (1000,), "BF16", "fill", 0.0) for n in ("betas", "alphas_cumprod")]
    ldm = {e["name"]: apply_entry(e, read) for e in entries}
    check_ldm_roundtrip(ldm, unet_sd, vae_sd, text_sd, unet, vae, "v2", text)
    write_plan(fam_dir / f"{V2_FILE}.plan.json.gz",
               {V2_FILE: {"metadata": {"format": "pt"}, "tensors": entries}})


# ---------------------------------------------------------------- LoRA (v1)


UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1"]
LORA_RANK = 4
KOHYA_ALPHA = 2.0


def kohya_name(prefix: str, key: str) -> str:
    module = key.split(".lora_")[0]
    return prefix + module.replace(".", "_")


def lora_fixture(base: dict):
    out = OUT / "lora"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    gen = torch.Generator().manual_seed(7)
    text, unet, vae = base["text"], base["unet"], base["vae"]
    # fresh models with the v1 EMA weights and diffusers' own numerics for loading
    text_cfg, unet_cfg, vae_cfg = text.config, unet.config, vae.config

    def fresh():
        t = CLIPTextModel(text_cfg).eval()
        t.load_state_dict({k.removeprefix("text_model."): x for k, x in base["text_sd"].items()})
        u = UNet2DConditionModel.from_config(unet_cfg).eval()
        u.load_state_dict(base["unet_sd"])
        v = AutoencoderKL.from_config(vae_cfg).eval()
        v.load_state_dict(base["vae_sd"])
        return t, u, v

    def pipe_of(t, u, v):
        return StableDiffusionPipeline(vae=v, text_encoder=t, tokenizer=None, unet=u,
                                       scheduler=DDIMScheduler(), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)

    # random LoRA weights via peft
    t, u, v = fresh()
    u.add_adapter(LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=UNET_TARGETS,
                             init_lora_weights=False))
    # (transformers' add_adapter wants a newer peft; peft's own injection does the same here)
    inject_adapter_in_model(LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=TEXT_TARGETS,
                                       init_lora_weights=False), t)
    u_sd = get_peft_model_state_dict(u)
    t_sd = get_peft_model_state_dict(t)
    # fp16 (diffusers saves what it is given): exact, as the values are
    u_sd = {k: exact_value(torch.randn(x.shape, generator=gen) * 0.1).half() for k, x in u_sd.items()}
    t_sd = {k: exact_value(torch.randn(x.shape, generator=gen) * 0.1).half() for k, x in t_sd.items()}
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=u_sd, text_encoder_lora_layers=t_sd,
                                              weight_name="lora_peft.safetensors")
    kohya = {}
    # kohya names the text encoder modules with transformers' `text_model.` prefix
    for prefix, sd in (("lora_unet_", u_sd), ("lora_te_text_model_", t_sd)):
        for k, x in sd.items():
            name = kohya_name(prefix, k)
            kohya[name + (".lora_down.weight" if ".lora_A." in k else ".lora_up.weight")] = x
            kohya[name + ".alpha"] = torch.tensor(KOHYA_ALPHA)
    save_file(contiguous(kohya, torch.float16), out / "lora_kohya.safetensors")

    inp = base["inp"]
    goldens = {"scale": np.float32(LORA_SCALE)}
    exact = {}
    for fmt, fname in (("peft", "lora_peft.safetensors"), ("kohya", "lora_kohya.safetensors")):
        t, u, v = fresh()
        pipe = pipe_of(t, u, v)
        pipe.load_lora_weights(str(out), weight_name=fname)
        pipe.fuse_lora(lora_scale=LORA_SCALE)
        pipe.unload_lora_weights()  # keeps the fused weights, drops the adapters
        exact[f"{fmt}_text_encoder"] = text_out(t, inp)
        exact.update({f"{fmt}_{k}": x for k, x in unet_out(u, inp, (LORA_TIMESTEP,)).items()})
        kcv_numerics(t, u)
        goldens[f"{fmt}_text_encoder"] = text_out(t, inp)
        goldens.update({f"{fmt}_{k}": x for k, x in unet_out(u, inp, (LORA_TIMESTEP,)).items()})
        changed = any(not torch.equal(p, base["unet_sd"][n]) for n, p in u.state_dict().items())
        assert changed, f"{fmt}: fuse_lora changed nothing in the UNet"
        t_changed = any(not torch.equal(p, base["text_sd"]["text_model." + n])
                        for n, p in t.state_dict().items() if "position_ids" not in n)
        assert t_changed, f"{fmt}: fuse_lora changed nothing in the text encoder"
    save_goldens(out / "golden.npz", goldens, exact)


def main():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    bases = {family: family_fixture(family, cfg) for family, cfg in FAMILIES.items()}
    lora_fixture(bases["v1"])
    versions = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "command": "/work/torchvenv/bin/python scripts/make_checkpoint_fixtures.py",
    }
    (OUT / "VERSIONS.json").write_text(json.dumps(versions, indent=2) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
