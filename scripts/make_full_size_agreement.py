"""Reference side of the full-size agreement check (issue 12): SD 1.5 and SD 2.1-base models with
random weights, saved as one single-file checkpoint in the original layout, and their outputs.

Runs in the torch venv (torch + diffusers + transformers + peft; never the project's own):

    flock /work/logs/heavy.lock /work/refvenv/bin/python scripts/make_full_size_agreement.py v1 [v2] \
        [--out /work/bench-out/agreement]

then `scripts/check_full_size_agreement.py` (the project's venv, no torch) imports the file with
sd2tflite and compares. Per family it writes into OUT:
- `sd-FAMILY-random.safetensors`: diffusers `UNet2DConditionModel` / `AutoencoderKL` and
  transformers `CLIPTextModel` built with SD 1.5's / SD 2.1-base's own configs, every weight random
  (norms and biases included) as `make_checkpoint_fixtures.randomize` draws them (seeded; rounded to
  values fp16 holds exactly, so the file is fp16 and carries the models' exact numbers), renamed to
  the original (CompVis / Stability) layout by `make_checkpoint_fixtures.ldm_entries` (SD 2.x: the
  OpenCLIP layout with fused q/k/v and an unused 24th resblock) and read back to the models by
  diffusers' own single-file converters (`check_ldm_roundtrip`) before it is written. The schedule
  buffers real files carry are added (and SD 1.5's `position_ids` and LitEma scalars).
- `sd-FAMILY-random.golden.npz`: the fixed inputs and every component's outputs, NHWC (Keras
  convention), two references as in the tiny fixtures: no suffix = keras-cv's numerics (GroupNorm
  epsilon 1e-5, tanh GELU in GEGLU and in the SD 2.x text MLP), `*_exact` = diffusers /
  transformers unchanged. Text encoder: last hidden state (SD 2.x's is the 23-layer model's, i.e.
  OpenCLIP's penultimate layer + ln_final, the layer SD 2.x uses); UNet at t = 1, 500, 999 on a
  non-square 64x48 latent (512x384 images: catches H/W mix-ups); decoder on a 64x64 latent;
  image encoder (keras-cv's latent: the posterior mean x 0.18215) on a 512x512 image.
- `sd-FAMILY-random.reference.json`: versions, configs, seeds, timings, the command.

Peak RAM: the models (fp32) plus the fp16 file in memory, ~1.5x the fp32 weights (SD 2.1: ~8 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

import diffusers
import safetensors
import transformers
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.embeddings import get_timestep_embedding
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_checkpoint_fixtures as fx  # randomize, kcv_numerics, the diffusers -> original mapping
import make_full_size_checkpoint as full  # SD 1.5's configs, the DDPM schedule buffers

DEFAULT_OUT = Path("/work/bench-out/agreement")
TIMESTEPS = (1, 500, 999)
UNET_LATENT = (64, 48)  # H, W: non-square on purpose (512x384 images)
VAE_LATENT = (64, 64)  # the decoder's latent; the image encoder takes 512x512 images
TEXT_BATCH = 2
VOCAB = 49408
BOS, EOS = 49406, 49407  # CLIP's; keras-cv pads with EOS

# SD 2.1-base's configs (stabilityai/stable-diffusion-2-1-base: unet/ and text_encoder/ config.json;
# its VAE is SD 1.5's). The text encoder is OpenCLIP ViT-H/14 as SD 2.x uses it: 23 of its 24 layers.
V2_UNET = {"sample_size": 64, "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20],
           "use_linear_projection": True}
V2_TEXT = {"vocab_size": VOCAB, "max_position_embeddings": 77, "hidden_size": 1024, "intermediate_size": 4096,
           "num_hidden_layers": 23, "num_attention_heads": 16, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
           "projection_dim": 512}
FAMILIES = {
    "v1": dict(seed=15, unet=full.UNET, text=full.TEXT, vae=full.VAE),
    "v2": dict(seed=21, unet=V2_UNET, text=V2_TEXT, vae=full.VAE),
}


def log(msg: str, t0: float):
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"[{time.monotonic() - t0:6.0f} s, peak {rss:.2f} GB] {msg}", flush=True)


def make_inputs(rng: np.random.Generator, context_dim: int, t_dim: int) -> dict[str, np.ndarray]:
    ids = np.full((TEXT_BATCH, 77), EOS, np.int32)
    for b, n in enumerate((8, 40)):  # a short and a long prompt
        ids[b, 0] = BOS
        ids[b, 1:n] = rng.integers(0, VOCAB - 2, n - 1)
        ids[b, n] = EOS
    uh, uw = UNET_LATENT
    vh, vw = VAE_LATENT
    inputs = {
        "tokens": ids,
        "positions": np.tile(np.arange(77, dtype=np.int32), (TEXT_BATCH, 1)),
        "unet_latent": fx.bf16_grid(rng.standard_normal((1, uh, uw, 4)).astype(np.float32)),
        "unet_context": fx.bf16_grid(rng.standard_normal((1, 77, context_dim)).astype(np.float32)),
        "decoder_latent": fx.bf16_grid(rng.standard_normal((1, vh, vw, 4)).astype(np.float32)),
        "image": (rng.integers(-128, 129, (1, 8 * vh, 8 * vw, 3)) / 128).astype(np.float32),
        "timesteps": np.array(TIMESTEPS, np.int64),
    }
    for t in TIMESTEPS:  # keras-cv feeds the sinusoidal embedding; diffusers computes it the same way
        emb = get_timestep_embedding(torch.full((1,), t), t_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        inputs[f"timestep_embedding_{t}"] = emb.numpy().astype(np.float32)
    return inputs


@torch.no_grad()
def outputs(text, unet, vae, inp: dict, t0: float, label: str) -> dict[str, np.ndarray]:
    out = {"text_encoder": text(input_ids=torch.from_numpy(inp["tokens"]).long(),
                                position_ids=torch.from_numpy(inp["positions"]).long()).last_hidden_state.numpy()}
    log(f"{label} text encoder", t0)
    for t in TIMESTEPS:
        out[f"unet_{t}"] = fx.nhwc(unet(fx.nchw(inp["unet_latent"]), torch.full((1,), t),
                                        encoder_hidden_states=torch.from_numpy(inp["unet_context"])).sample)
        log(f"{label} UNet t={t}", t0)
    out["decoder"] = fx.nhwc(vae.decode(fx.nchw(inp["decoder_latent"]) / 0.18215).sample)
    log(f"{label} decoder", t0)
    out["image_encoder"] = fx.nhwc(vae.encode(fx.nchw(inp["image"])).latent_dist.mean * 0.18215)
    log(f"{label} image encoder", t0)
    return out


def single_file(family: str, cfg: dict, text, unet, vae) -> dict[str, torch.Tensor]:
    """The original-layout tensors (fp16, exact), checked by diffusers' single-file converters."""
    unet_sd = unet.state_dict()
    vae_sd = vae.state_dict()
    # the Hub's names (transformers 5 drops `text_model.` on save; real SD 1.x files have it)
    text_sd = {"text_model." + k: v for k, v in text.state_dict().items()}
    sds = {"unet": unet_sd, "vae": vae_sd, "text_encoder": text_sd}
    entries = fx.ldm_entries(family, {c: c for c in sds}, sds, cfg, dict(unet.config), "F16")
    ldm = {e["name"]: fx.apply_entry(e, lambda comp, key: sds[comp][key]) for e in entries}
    fx.check_ldm_roundtrip(ldm, unet_sd, vae_sd, text_sd, unet, vae, family, text)
    ldm.update(full.schedule_buffers())  # what real files carry besides the weights (fp32)
    if family == "v1":  # as v1-5-pruned-emaonly.safetensors has them
        ldm["cond_stage_model.transformer.text_model.embeddings.position_ids"] = \
            torch.arange(77, dtype=torch.int64)[None]
        ldm["model_ema.decay"] = torch.tensor(0.9999, dtype=torch.float32)
        ldm["model_ema.num_updates"] = torch.tensor(0, dtype=torch.int32)
    return fx.contiguous(ldm)


def write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # safetensors writes 0600
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def make_family(family: str, out: Path, t0: float) -> dict:
    cfg = FAMILIES[family]
    gen = torch.Generator().manual_seed(cfg["seed"])
    rng = np.random.default_rng(cfg["seed"])
    text = CLIPTextModel(CLIPTextConfig(**cfg["text"])).eval()
    unet = UNet2DConditionModel(**cfg["unet"]).eval()
    vae = AutoencoderKL(**cfg["vae"]).eval()
    for m in (text, unet, vae):
        fx.randomize(m, gen)
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in (("text", text), ("unet", unet), ("vae", vae))}
    log(f"{family}: built and randomized {params}", t0)
    inp = make_inputs(rng, cfg["text"]["hidden_size"], unet.config.block_out_channels[0])
    timings = {}
    s = time.monotonic()
    exact = outputs(text, unet, vae, inp, t0, f"{family} diffusers/transformers unchanged:")
    timings["exact_outputs_s"] = round(time.monotonic() - s, 1)
    s = time.monotonic()
    fx.kcv_numerics(text, unet, vae)
    goldens = outputs(text, unet, vae, inp, t0, f"{family} keras-cv numerics:")
    timings["kcv_outputs_s"] = round(time.monotonic() - s, 1)
    spread = float(np.abs(goldens["unet_1"] - goldens["unet_999"]).max())
    assert spread > 1e-2, (family, "the UNet's output does not depend on the timestep", spread)

    s = time.monotonic()
    ldm = single_file(family, {"vae": cfg["vae"], "text": cfg["text"]}, text, unet, vae)
    timings["single_file_and_roundtrip_s"] = round(time.monotonic() - s, 1)
    log(f"{family}: {len(ldm)} tensors in the original layout, diffusers' converters read them back", t0)
    unet_config = dict(unet.config)
    del text, unet, vae  # the file's tensors are copies

    ckpt = out / f"sd-{family}-random.safetensors"
    s = time.monotonic()
    write_atomic(ckpt, lambda p: save_file(ldm, str(p), metadata={"format": "pt"}))
    n_tensors = len(ldm)
    del ldm
    timings["write_s"] = round(time.monotonic() - s, 1)
    golden = {**inp, **goldens, **{f"{k}_exact": v for k, v in exact.items()}}
    gpath = out / f"sd-{family}-random.golden.npz"
    def write_npz(p: Path):
        with open(p, "wb") as f:
            np.savez(f, **golden)

    write_atomic(gpath, write_npz)
    scales = {k: round(float(np.abs(v).max()), 3) for k, v in goldens.items()}
    log(f"{family}: wrote {ckpt} ({ckpt.stat().st_size / 1e9:.2f} GB) and {gpath.name}; output scales {scales}", t0)
    return {
        "family": family,
        "checkpoint": str(ckpt),
        "checkpoint_bytes": ckpt.stat().st_size,
        "tensors": n_tensors,
        "golden": str(gpath),
        "seed": cfg["seed"],
        "params": params,
        "configs": {"unet": unet_config, "text": cfg["text"], "vae": cfg["vae"]},
        "output_scales": scales,
        "timings": timings,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("families", nargs="+", choices=sorted(FAMILIES))
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    t0 = time.monotonic()
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    args.out.mkdir(parents=True, exist_ok=True)
    for family in args.families:
        s = time.monotonic()
        rec = make_family(family, args.out, t0)
        rec["seconds"] = round(time.monotonic() - s, 1)
        rec["versions"] = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                           "transformers": transformers.__version__, "safetensors": safetensors.__version__,
                           "numpy": np.__version__, "python": sys.version.split()[0]}
        rec["command"] = " ".join([Path(sys.executable).as_posix(), *sys.argv])
        rec["peak_rss_bytes_so_far"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        (args.out / f"sd-{family}-random.reference.json").write_text(json.dumps(rec, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
