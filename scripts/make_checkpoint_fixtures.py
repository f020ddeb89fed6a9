"""Makes the PyTorch-checkpoint fixtures in tests/data/checkpoints/ (tiny SD 1.x / 2.x models).

Runs in a separate venv with torch + diffusers + transformers + peft (never the project's own):

    python3 -m venv /work/torchvenv
    /work/torchvenv/bin/pip install torch==2.13.0 && /work/torchvenv/bin/pip install diffusers transformers safetensors peft numpy
    /work/torchvenv/bin/python scripts/make_checkpoint_fixtures.py [OUT_DIR]

Deterministic (fixed seeds). Every weight is random (norms and biases included) and rounded to a
value that bf16, fp16 and fp32 all hold exactly, so the fp16/bf16 files carry the same numbers as
the fp32 ones and one golden set serves every file of a family. Goldens are stored in the Keras
(NHWC) convention, twice: `*_exact` is diffusers/transformers as they are; `*` (no suffix) is the
same model with keras-cv's numerics (GroupNorm epsilon 1e-5 everywhere, tanh-approximated GELU in
GEGLU and in the v2 text MLP), which isolates the weight mapping from keras-cv's own deviations.

The single-file (CompVis / Stability) layout is written by this script's own diffusers -> original
mapping and checked by diffusers' own original -> diffusers converters (single_file_utils).
"""

from __future__ import annotations

import json
import shutil
import sys
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
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel
from transformers.activations import ACT2FN

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests" / "data" / "checkpoints"

IMG_H, IMG_W = 64, 128  # non-square on purpose: catches H/W mix-ups
BATCH = 2
TIMESTEPS = (1, 500, 999)
LORA_SCALE = 0.7
VOCAB = 49408
TOKEN_ROWS_RANDOM = 512  # rows 0..511 plus the ids used below are random; the rest zero (compresses)

FAMILIES = {
    "v1": dict(
        seed=1,
        unet=dict(block_out_channels=(32, 32, 32, 32), layers_per_block=2, attention_head_dim=8,
                  use_linear_projection=False),
        text=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1,
                  hidden_act="quick_gelu"),
        vae=dict(block_out_channels=(32, 32, 32, 32)),
        prediction_type="epsilon",
    ),
    "v2": dict(
        seed=2,
        # SD 2.x convention: head dim 64, so heads = width // 64, at least 1 (diffusers' config
        # field `attention_head_dim` holds the number of heads, as in SD 2.1's own config).
        unet=dict(block_out_channels=(32, 32, 32, 64), layers_per_block=1,
                  attention_head_dim=[1, 1, 1, 1], use_linear_projection=True),
        text=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1,
                  hidden_act="gelu"),
        vae=dict(block_out_channels=(32, 32, 32, 64)),
        prediction_type="v_prediction",
    ),
}


# ---------------------------------------------------------------- model construction


def make_models(cfg: dict):
    text_cfg = CLIPTextConfig(vocab_size=VOCAB, max_position_embeddings=77, projection_dim=64,
                              layer_norm_eps=1e-5, **cfg["text"])
    text = CLIPTextModel(text_cfg).eval()
    width = cfg["text"]["hidden_size"]
    unet = UNet2DConditionModel(
        sample_size=IMG_H // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=width,
        norm_num_groups=32,
        **cfg["unet"],
    ).eval()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=IMG_H,
        **cfg["vae"],
    ).eval()
    return text, unet, vae


def exact_value(t: torch.Tensor) -> torch.Tensor:
    """Rounds to bf16 and drops values under fp16's normal range: exact in bf16, fp16 and fp32."""
    t = t.to(torch.bfloat16).to(torch.float32)
    t[t.abs() < 2.0 ** -14] = 0.0
    return t


def randomize(module: torch.nn.Module, gen: torch.Generator, used_ids: np.ndarray | None = None):
    """Random values for every parameter (norm gains/offsets and biases too)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            shape = p.shape
            r = torch.randn(shape, generator=gen)
            norm_like = any(k in name for k in ("norm", "layer_norm", "ln_"))
            if name.endswith("token_embedding.weight"):
                v = torch.zeros(shape)
                rows = np.union1d(np.arange(TOKEN_ROWS_RANDOM), used_ids)
                v[rows] = r[rows] * 0.7
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


def make_inputs(rng: np.random.Generator, width: int, t_dim: int) -> dict[str, np.ndarray]:
    ids = np.full((BATCH, 77), 49407, np.int32)  # EOS padding, as keras-cv pads
    for b in range(BATCH):
        n = 5 + 7 * b
        ids[b, 0] = 49406
        ids[b, 1:n] = rng.integers(0, VOCAB - 2, n - 1)
        ids[b, n] = 49407
    inputs = {
        "tokens": ids,
        "positions": np.tile(np.arange(77, dtype=np.int32), (BATCH, 1)),
        "unet_latent": rng.standard_normal((BATCH, IMG_H // 8, IMG_W // 8, 4)).astype(np.float32),
        "unet_context": rng.standard_normal((BATCH, 77, width)).astype(np.float32),
        "decoder_latent": rng.standard_normal((BATCH, IMG_H // 8, IMG_W // 8, 4)).astype(np.float32),
        "image": rng.uniform(-1, 1, (BATCH, IMG_H, IMG_W, 3)).astype(np.float32),
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
def unet_out(unet, inp) -> dict[str, np.ndarray]:
    res = {}
    for t in TIMESTEPS:
        res[f"unet_{t}"] = nhwc(unet(nchw(inp["unet_latent"]), torch.full((BATCH,), t),
                                     encoder_hidden_states=torch.from_numpy(inp["unet_context"])).sample)
    return res


@torch.no_grad()
def vae_out(vae, inp) -> dict[str, np.ndarray]:
    dec = vae.decode(nchw(inp["decoder_latent"]) / 0.18215).sample
    enc = vae.encode(nchw(inp["image"])).latent_dist.mean * 0.18215
    return {"decoder": nhwc(dec), "image_encoder": nhwc(enc)}


# ---------------------------------------------------------------- diffusers -> original names


def unet_to_ldm(sd: dict, config: dict) -> dict:
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
    for key, v in sd.items():
        prefix = max((p for p in m if key.startswith(p + ".")), key=len)
        rest = key[len(prefix) + 1:]
        if ".resnets." in prefix:
            head, leaf = rest.split(".", 1)
            rest = res_sub[head] + "." + leaf
        out[m[prefix] + "." + rest] = v
    return out


def vae_to_ldm(sd: dict, n_levels: int) -> dict:
    out = {}
    attn_sub = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for key, v in sd.items():
        k = key
        k = k.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        k = k.replace("mid_block.resnets.0", "mid.block_1").replace("mid_block.resnets.1", "mid.block_2")
        if "mid_block.attentions.0." in k:
            rest = k.split("mid_block.attentions.0.", 1)[1]
            mod, leaf = rest.rsplit(".", 1)
            k = k.split("mid_block.")[0] + "mid.attn_1." + attn_sub[mod] + "." + leaf
            if leaf == "weight" and mod != "group_norm":
                v = v.reshape(*v.shape, 1, 1)
        if k.startswith("encoder.down_blocks."):
            parts = k.split(".")
            i = parts[2]
            rest = ".".join(parts[3:])
            rest = rest.replace("resnets.", "block.").replace("downsamplers.0.", "downsample.")
            k = f"encoder.down.{i}.{rest}"
        if k.startswith("decoder.up_blocks."):
            parts = k.split(".")
            i = n_levels - 1 - int(parts[2])
            rest = ".".join(parts[3:])
            rest = rest.replace("resnets.", "block.").replace("upsamplers.0.", "upsample.")
            k = f"decoder.up.{i}.{rest}"
        out[k] = v
    return out


def openclip_from_hf(sd: dict, gen: torch.Generator, width: int, n_layers: int) -> dict:
    """HF CLIP names -> OpenCLIP (SD 2.x `cond_stage_model.model.*`), plus the parts SD 2.x files
    carry and never use: a last resblock (SD 2.x takes the penultimate layer), text_projection,
    logit_scale."""
    out = {
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
    }
    for i in range(n_layers):
        p = f"text_model.encoder.layers.{i}."
        q = f"transformer.resblocks.{i}."
        out[q + "attn.in_proj_weight"] = torch.cat(
            [sd[p + f"self_attn.{n}_proj.weight"] for n in "qkv"], 0)
        out[q + "attn.in_proj_bias"] = torch.cat([sd[p + f"self_attn.{n}_proj.bias"] for n in "qkv"], 0)
        for a, b in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                     ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            for leaf in ("weight", "bias"):
                out[q + b + "." + leaf] = sd[p + a + "." + leaf]
    # the unused last layer: same shapes, random values
    last = f"transformer.resblocks.{n_layers}."
    for k in [k for k in out if k.startswith(f"transformer.resblocks.{n_layers - 1}.")]:
        out[last + k.split(".", 3)[3]] = exact_value(torch.randn(out[k].shape, generator=gen))
    out["text_projection"] = exact_value(torch.randn((width, width), generator=gen))
    out["logit_scale"] = torch.tensor(4.6052)
    return out


def check_ldm_roundtrip(ldm: dict, unet_sd: dict, vae_sd: dict, text_sd: dict, unet, vae, family: str,
                        text_model):
    """diffusers' own single-file converters must read our original layout back to the models."""
    conv_unet = sfu.convert_ldm_unet_checkpoint(ldm, dict(unet.config))
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


def family_fixture(family: str, cfg: dict) -> dict:
    gen = torch.Generator().manual_seed(cfg["seed"])
    rng = np.random.default_rng(cfg["seed"])
    text, unet, vae = make_models(cfg)
    width = cfg["text"]["hidden_size"]
    t_dim = cfg["unet"]["block_out_channels"][0]
    inp = make_inputs(rng, width, t_dim)
    randomize(text, gen, used_ids=np.unique(inp["tokens"]))
    randomize(unet, gen)
    randomize(vae, gen)

    fam_dir = OUT / family
    shutil.rmtree(fam_dir, ignore_errors=True)
    fam_dir.mkdir(parents=True)
    unet_sd = {k: v.clone() for k, v in unet.state_dict().items()}
    vae_sd = {k: v.clone() for k, v in vae.state_dict().items()}
    # the Hub's layout (transformers < 5 wrote the `text_model.` prefix; 5.x drops it on save)
    text_sd = {"text_model." + k: v.clone() for k, v in text.state_dict().items()}

    goldens = dict(inp)
    goldens.update({f"{k}_exact": v for k, v in unet_out(unet, inp).items()})
    goldens.update({f"{k}_exact": v for k, v in vae_out(vae, inp).items()})
    goldens["text_encoder_exact"] = text_out(text, inp)

    # ---- diffusers folder
    dd = fam_dir / "diffusers"
    write_model_index(dd)
    write_scheduler(dd, cfg["prediction_type"])
    if family == "v1":
        # sharded fp16 UNet; text encoder only as the fp16 variant; fp32 VAE
        unet.half().save_pretrained(dd / "unet", safe_serialization=True, max_shard_size="1MB")
        unet.float()
        text.save_pretrained(dd / "text_encoder", safe_serialization=True)
        (dd / "text_encoder" / "model.safetensors").unlink()
        save_file(contiguous(text_sd, torch.float16), dd / "text_encoder" / "model.fp16.safetensors",
                  metadata={"format": "pt"})
        vae.save_pretrained(dd / "vae", safe_serialization=True)
    else:
        # fp16 UNet and VAE; a bf16 text encoder
        unet.save_pretrained(dd / "unet", safe_serialization=True)
        save_file(contiguous(unet_sd, torch.float16), dd / "unet" / "diffusion_pytorch_model.safetensors",
                  metadata={"format": "pt"})
        text.save_pretrained(dd / "text_encoder", safe_serialization=True)
        save_file(contiguous({k.removeprefix("text_model."): v for k, v in text_sd.items()}, torch.bfloat16),
                  dd / "text_encoder" / "model.safetensors",
                  metadata={"format": "pt"})
        vae.save_pretrained(dd / "vae", safe_serialization=True)
        save_file(contiguous(vae_sd, torch.float16), dd / "vae" / "diffusion_pytorch_model.safetensors",
                  metadata={"format": "pt"})

    # ---- single file (original layout)
    ldm = {}
    ldm.update({"model.diffusion_model." + k: v for k, v in unet_to_ldm(unet_sd, dict(unet.config)).items()})
    ldm.update({"first_stage_model." + k: v for k, v in vae_to_ldm(vae_sd, 4).items()})
    if family == "v1":
        ldm.update({"cond_stage_model.transformer." + k: v for k, v in text_sd.items()})
    else:
        n_layers = cfg["text"]["num_hidden_layers"]
        oc = openclip_from_hf(text_sd, gen, width, n_layers)
        ldm.update({"cond_stage_model.model." + k: v for k, v in oc.items()})
    check_ldm_roundtrip(ldm, unet_sd, vae_sd, text_sd, unet, vae, family, text)
    # schedule buffers real SD files carry
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    ldm["betas"] = betas
    ldm["alphas_cumprod"] = torch.cumprod(1 - betas, 0)

    # keras-cv numerics goldens (same weights)
    kcv_numerics(text, unet, vae)
    goldens["text_encoder"] = text_out(text, inp)
    goldens.update(unet_out(unet, inp))
    goldens.update(vae_out(vae, inp))

    if family == "v1":
        # EMA: the diffusers folder holds the EMA UNet (what SD releases and `--extract_ema` give);
        # the single file carries different raw weights next to `model_ema.*`.
        ema = {}
        for k, v in list(ldm.items()):
            if k.startswith("model.diffusion_model."):
                ema["model_ema." + "".join(k.split(".")[1:])] = v
        ema["model_ema.decay"] = torch.tensor(0.9999)
        ema["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
        raw_gen = torch.Generator().manual_seed(100)
        randomize(unet, raw_gen)
        raw_sd = unet.state_dict()
        goldens.update({f"raw_{k}": v for k, v in unet_out(unet, inp).items()})
        for k, v in unet_to_ldm(raw_sd, dict(unet.config)).items():
            ldm["model.diffusion_model." + k] = v.clone()
        ldm.update(ema)
        unet.load_state_dict(unet_sd)
        save_file(contiguous(ldm, torch.float16) | {"model_ema.num_updates": ema["model_ema.num_updates"]},
                  fam_dir / "sd-v1-tiny-ema.safetensors", metadata={"format": "pt"})
    else:
        save_file(contiguous(ldm, torch.bfloat16), fam_dir / "sd-v2-tiny.safetensors",
                  metadata={"format": "pt"})

    arch = {"timestep_dim": t_dim, "context_dim": width, "img_height": IMG_H, "img_width": IMG_W,
            "prediction_type": cfg["prediction_type"], "config": cfg}
    (fam_dir / "fixture.json").write_text(json.dumps(arch, indent=2, default=list) + "\n")
    np.savez_compressed(fam_dir / "golden.npz", **goldens)
    return dict(text=text, unet=unet, vae=vae, inp=inp, unet_sd=unet_sd, text_sd=text_sd, vae_sd=vae_sd,
                gen=gen)


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
    u_sd = {k: exact_value(torch.randn(x.shape, generator=gen) * 0.1) for k, x in u_sd.items()}
    t_sd = {k: exact_value(torch.randn(x.shape, generator=gen) * 0.1) for k, x in t_sd.items()}
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
    for fmt, fname in (("peft", "lora_peft.safetensors"), ("kohya", "lora_kohya.safetensors")):
        t, u, v = fresh()
        pipe = pipe_of(t, u, v)
        pipe.load_lora_weights(str(out), weight_name=fname)
        pipe.fuse_lora(lora_scale=LORA_SCALE)
        pipe.unload_lora_weights()  # keeps the fused weights, drops the adapters
        goldens[f"{fmt}_text_encoder_exact"] = text_out(t, inp)
        goldens.update({f"{fmt}_{k}_exact": x for k, x in unet_out(u, inp).items()})
        kcv_numerics(t, u)
        goldens[f"{fmt}_text_encoder"] = text_out(t, inp)
        goldens.update({f"{fmt}_{k}": x for k, x in unet_out(u, inp).items()})
        changed = any(not torch.equal(p, base["unet_sd"][n]) for n, p in u.state_dict().items())
        assert changed, f"{fmt}: fuse_lora changed nothing in the UNet"
        t_changed = any(not torch.equal(p, base["text_sd"]["text_model." + n])
                        for n, p in t.state_dict().items() if "position_ids" not in n)
        assert t_changed, f"{fmt}: fuse_lora changed nothing in the text encoder"
    np.savez_compressed(out / "golden.npz", **goldens)


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
