"""Writes one full-size SD 1.5 single-file checkpoint with random, seeded weights (for memory and
time measurements of the importer / converter; the numbers mean nothing).

Runs in the torch venv of scripts/make_checkpoint_fixtures.py (never the project's own):

    nice -n 10 /work/torchvenv/bin/python scripts/make_full_size_checkpoint.py [OUT] [--seed N]

OUT defaults to /work/bench-out/sd15-random-emaonly.safetensors. The file has the tensor names,
shapes and dtypes of the real `v1-5-pruned-emaonly.safetensors` (1145 tensors, fp32 except two
integer ones): the EMA UNet as `model.diffusion_model.*` (no `model_ema.*` weight copy),
`first_stage_model.*`, `cond_stage_model.transformer.text_model.*` (with the int64 `position_ids`,
which transformers < 4.31 saved as a buffer), the 12 DDPM schedule buffers LatentDiffusion
registers (`betas`, `alphas_cumprod`, ..., `posterior_mean_coef2`; linear_start 0.00085,
linear_end 0.012, 1000 steps, computed in float64 and stored as float32 as ldm does) and LitEma's
two scalars `model_ema.decay` (fp32) and `model_ema.num_updates` (int32), which the pruning kept.
The real file is 4,265,146,304 bytes with a 156,444-byte header, i.e. 4,264,989,852 bytes of
tensor data: exactly this set (checked below); only the header differs by a few bytes (the real
one lists tensors by name without padding; safetensors 0.8 groups them by alignment and pads).

Weights: the modules' default initialisation under torch.manual_seed(seed) (norms keep their
default ones/zeros). The diffusers -> original names come from make_checkpoint_fixtures.py and are
checked by diffusers' own original -> diffusers converters (skip with --no-check). Peak RAM is
about one copy of the weights (~4.3 GB): the modules are dropped once their state dicts are taken,
and safetensors 0.8 (this venv's) writes from the tensors' memory without a bytes copy.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_checkpoint_fixtures as fixtures  # the diffusers -> original mapping

DEFAULT_OUT = Path("/work/bench-out/sd15-random-emaonly.safetensors")
REAL_TENSORS = 1145  # v1-5-pruned-emaonly.safetensors
REAL_DATA_BYTES = 4_265_146_304 - 8 - 156_444  # file size - length field - header

# SD 1.5's own configs (runwayml/stable-diffusion-v1-5: unet/, vae/, text_encoder/ config.json)
UNET = {"sample_size": 64, "cross_attention_dim": 768}  # the rest: UNet2DConditionModel's defaults = SD 1.5
VAE = {"in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 4,
       "up_block_types": ("UpDecoderBlock2D",) * 4, "block_out_channels": (128, 256, 512, 512),
       "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 32, "sample_size": 512}
TEXT = {"vocab_size": 49408, "max_position_embeddings": 77, "hidden_size": 768, "intermediate_size": 3072,
        "num_hidden_layers": 12, "num_attention_heads": 12, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
        "projection_dim": 768}


def schedule_buffers(n: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012) -> dict:
    """What ldm's DDPM.register_schedule stores (beta_schedule "linear", v_posterior 0)."""
    betas = (torch.linspace(linear_start ** 0.5, linear_end ** 0.5, n, dtype=torch.float64) ** 2).numpy()
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    bufs = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in bufs.items()}


def build(check: bool) -> dict[str, torch.Tensor]:
    ldm: dict[str, torch.Tensor] = {}

    text = CLIPTextModel(CLIPTextConfig(**TEXT))
    # transformers 5 names the state dict without `text_model.`; the single file has it
    text_sd = {"text_model." + k: v.detach() for k, v in text.state_dict().items()}
    del text
    ldm.update({"cond_stage_model.transformer." + k: v for k, v in text_sd.items()})

    vae = AutoencoderKL(**VAE)
    vae_sd = {k: v.detach() for k, v in vae.state_dict().items()}
    vae_cfg = SimpleNamespace(config=vae.config)
    del vae
    n_levels = len(VAE["block_out_channels"])
    ldm.update({"first_stage_model." + k: v for k, v in fixtures.vae_to_ldm(vae_sd, n_levels).items()})

    unet = UNet2DConditionModel(**UNET)
    unet_sd = {k: v.detach() for k, v in unet.state_dict().items()}
    unet_cfg = SimpleNamespace(config=unet.config)
    del unet
    ldm.update({"model.diffusion_model." + k: v
                for k, v in fixtures.unet_to_ldm(unet_sd, dict(unet_cfg.config)).items()})

    if check:  # diffusers' own single-file converters must read the layout back (same tensors)
        t = time.monotonic()
        fixtures.check_ldm_roundtrip(ldm, unet_sd, vae_sd, text_sd, unet_cfg, vae_cfg, "v1", None)
        print(f"diffusers single-file round trip ok ({time.monotonic() - t:.0f} s)", flush=True)
    del text_sd, vae_sd, unet_sd

    # what the real file carries besides the weights
    ldm["cond_stage_model.transformer.text_model.embeddings.position_ids"] = \
        torch.arange(TEXT["max_position_embeddings"], dtype=torch.int64)[None]
    ldm.update(schedule_buffers())
    ldm["model_ema.decay"] = torch.tensor(0.9999, dtype=torch.float32)
    ldm["model_ema.num_updates"] = torch.tensor(0, dtype=torch.int32)  # value unknown; never read
    return fixtures.contiguous(ldm)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def len_tensors(path: Path) -> int:
    """Tensor count from the written header (not the in-memory dict)."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return len(list(f.keys()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-check", dest="check", action="store_false",
                    help="skip the diffusers single-file round trip")
    args = ap.parse_args()
    t0 = time.monotonic()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)

    with torch.no_grad():
        ldm = build(args.check)
    data_bytes = sum(v.numel() * v.element_size() for v in ldm.values())
    params = sum(v.numel() for k, v in ldm.items() if v.is_floating_point())
    print(f"built {len(ldm)} tensors, {params / 1e6:.1f} M values, {data_bytes} bytes of data "
          f"({time.monotonic() - t0:.0f} s)", flush=True)
    if (len(ldm), data_bytes) != (REAL_TENSORS, REAL_DATA_BYTES):
        sys.exit(f"expected {REAL_TENSORS} tensors / {REAL_DATA_BYTES} bytes of data like the real file")

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        save_file(ldm, tmp, metadata={"format": "pt"})
        del ldm
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)

    size = out.stat().st_size
    digest = sha256_of(out)
    print(f"wrote {out}")
    print(f"tensors: {len_tensors(out)}")
    print(f"bytes:   {size}")
    print(f"sha256:  {digest}")
    print(f"time:    {time.monotonic() - t0:.0f} s (seed {args.seed}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
