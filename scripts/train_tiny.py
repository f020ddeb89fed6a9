"""Trains the tiny family on the shapes world (sd2tflite/verify/shapes.py) and writes the weights the
package ships as `--weights trained` (the default of `--model tiny`).

First the VAE (image encoder + decoder as an autoencoder, on 64x64 crops: the layers are
convolutions and attention, so the weights fit 128x128), with its latent folded to zero mean and
unit variance; then the text encoder and the UNet together on keras-cv's noise schedule with the
epsilon objective, the empty caption 10 % of the time (classifier-free guidance). Deterministic for
its seed (numpy draws every random number; TensorFlow's op determinism is on). Last it samples the
held-out prompts with keras-cv's update rule and scores them with the shapes checker.

    .venv/bin/python scripts/train_tiny.py                     # the shipped weights (~30 min, 2 cores)
    .venv/bin/python scripts/train_tiny.py --smoke --out OUT_DIR   # 2 minutes, a look
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402

from sd2tflite.core.fsutil import atomic_write, write_json_atomic  # noqa: E402
from sd2tflite.core.registry import COMPONENTS, FAMILIES  # noqa: E402
from sd2tflite.runtime.schedule import NUM_TRAIN_TIMESTEPS, alphas, alphas_cumprod, timesteps  # noqa: E402
from sd2tflite.runtime.tokenizer import ClipTokenizer  # noqa: E402
from sd2tflite.verify import shapes  # noqa: E402

IMG = shapes.IMAGE_SIZE


@dataclass(frozen=True)
class Config:
    seed: int = 0
    vae_steps: int = 220
    vae_batch: int = 16
    vae_crop: int = 64
    vae_lr: float = 2e-3
    latent_noise: float = 0.1  # relative noise on the latent while training the VAE: a decoder that tolerates error
    pool_per_scene: int = 3  # pictures encoded per training caption for the UNet
    unet_steps: int = 950
    unet_batch: int = 32
    unet_lr: float = 2e-3
    warmup: int = 50
    ema: float = 0.995
    uncond_rate: float = 0.1
    min_snr: float | None = 5.0  # min-SNR-gamma loss weights (Hang et al. 2023): less effort on near-clean steps
    # On noisy steps (SNR < 1) weigh the error as x0 error, 1/SNR, up to this cap: the epsilon loss alone
    # scales layout mistakes (where the shape goes, which color) by sqrt(SNR) there, too little to learn them.
    high_noise_cap: float = 1.0
    eval_steps: int = 25
    eval_guidance: tuple[float, ...] = (3.0, 7.5)


SMOKE = Config(vae_steps=40, pool_per_scene=1, unet_steps=60, warmup=10, ema=0.9, eval_steps=10,
               eval_guidance=(7.5,))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "sd2tflite" / "data" / "tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a 2-minute run to look at (not the shipped weights)")
    for name in ("vae_steps", "unet_steps", "pool_per_scene"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, help="override (experiments)")
    parser.add_argument("--evaluate", action="store_true",
                        help="score the weights in --out again (no training); updates the report's scores")
    parser.add_argument("--report", type=Path, default=None,
                        help="JSON of the run (default: benchmarks/records/train-tiny.json, or OUT/train.json with --smoke)")
    args = parser.parse_args()
    overrides = {k: getattr(args, k) for k in ("vae_steps", "unet_steps", "pool_per_scene") if getattr(args, k) is not None}
    config = replace(SMOKE if args.smoke else Config(), seed=args.seed, **overrides)
    report_path = args.report or (args.out / "train.json" if args.smoke else ROOT / "benchmarks/records/train-tiny.json")
    started = time.perf_counter()
    if args.evaluate:
        models = load_trained(args.out)
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    else:
        models, report = train(config, args.out, started)
        report["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    report.update(evaluate(models, config, report_path, started))
    write_json_atomic(report_path, report)
    print(f"report: {report_path}")
    return 0


def log(started: float, text: str) -> None:
    print(f"[{time.perf_counter() - started:7.1f} s] {text}", flush=True)


def train(config: Config, out: Path, started: float) -> tuple[dict, dict]:
    """The four components trained, rounded to float16 and written to OUT; the run's figures."""
    import keras
    import tensorflow as tf

    from sd2tflite.convert.keras_models import build_component

    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(config.seed)
    dims = FAMILIES["tiny"].dims(IMG, IMG)
    models = {c: build_component("tiny", c, dims) for c in COMPONENTS}
    params = {c: int(models[c].count_params()) for c in COMPONENTS}
    log(started, f"parameters: {params}")
    timings = {}

    # ------------------------------------------------------------ the VAE
    t0 = time.perf_counter()
    encoder = models["image_encoder"]
    crop_dims = FAMILIES["tiny"].dims(config.vae_crop, config.vae_crop)
    crop_decoder = build_component("tiny", "decoder", crop_dims)  # same weights, 64x64 output
    vae_loss = _train_vae(config, encoder, crop_decoder, rng, started)
    models["decoder"].set_weights(crop_decoder.get_weights())
    timings["vae_s"] = time.perf_counter() - t0

    # ------------------------------------------------------------ latents, folded to unit variance
    t0 = time.perf_counter()
    scenes = shapes.training_scenes()
    pool = [(scene, int(s)) for scene in scenes for s in rng.integers(0, 2**31, config.pool_per_scene)]
    latents = _encode(encoder, [shapes.render(scene, seed) for scene, seed in pool])
    mean, std = latents.mean(axis=(0, 1, 2)), float(latents.std())
    _fold_latent_scale(encoder, models["decoder"], mean, std)
    latents = (latents - mean) / std
    check = _encode(encoder, [shapes.render(*pool[0])])[0]
    assert np.abs(check - latents[0]).max() < 1e-3, "folding the latent scale changed the encoder's output"
    timings["encode_s"] = time.perf_counter() - t0
    log(started, f"latent before folding: mean {np.round(mean, 3).tolist()}, std {std:.4f}")

    # ------------------------------------------------------------ text encoder + UNet
    t0 = time.perf_counter()
    tokenizer = ClipTokenizer.generated()
    tokens = np.asarray([tokenizer.tokens_for(scene.caption) for scene, _ in pool], np.int32)
    empty = np.asarray(tokenizer.tokens_for(""), np.int32)
    unet_loss = _train_unet(config, models["text_encoder"], models["diffusion"], latents, tokens, empty, rng, started)
    timings["unet_s"] = time.perf_counter() - t0

    # Rows of tokens the captions never use stay at their random start: zero them (the file compresses).
    used = np.zeros(dims.vocab_size, bool)
    used[np.unique(np.concatenate([tokens.ravel(), empty]))] = True
    _zero_unused_rows(models["text_encoder"], used)
    for model in models.values():  # the file stores float16: evaluate exactly what ships
        for variable in model.weights:
            variable.assign(np.asarray(variable).astype(np.float16).astype(np.float32))

    out.mkdir(parents=True, exist_ok=True)
    sizes = {c: _save_compressed(models[c], out / f"{c}.weights.h5") for c in COMPONENTS}
    timings["train_total_s"] = time.perf_counter() - started
    log(started, f"wrote {out} ({sum(sizes.values()) / 1e6:.2f} MB: {sizes}); training took "
                 f"{timings['train_total_s'] / 60:.1f} min")

    return models, {
        "config": asdict(config),
        "parameters": params,
        "vae_loss_last": vae_loss,
        "unet_loss_last": unet_loss,
        "latent_fold": {"mean": mean.tolist(), "std": std},
        "used_tokens": int(used.sum()),
        "file_bytes": sizes,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "machine": {"cpus": os.cpu_count()},
    }


def load_trained(out: Path) -> dict:
    from sd2tflite.convert.keras_models import build_component

    dims = FAMILIES["tiny"].dims(IMG, IMG)
    models = {c: build_component("tiny", c, dims) for c in COMPONENTS}
    for c, model in models.items():
        model.load_weights(str(out / f"{c}.weights.h5"))
    return models


def evaluate(models: dict, config: Config, report_path: Path, started: float) -> dict:
    """The VAE's round trip of every caption, and the held-out prompts sampled with keras-cv's update
    rule (grids of them beside the report), scored by the shapes checker."""
    scenes = shapes.all_scenes()
    originals = np.stack([shapes.render(s, seed=i) for i, s in enumerate(scenes)])
    latents = _encode(models["image_encoder"], list(originals))
    recon = np.clip(np.concatenate([np.asarray(models["decoder"](latents[i:i + 64], training=False))
                                    for i in range(0, len(latents), 64)]), -1, 1)
    round_trip = shapes.adherence(recon, scenes)
    psnr = float(20 * np.log10(2.0 / np.sqrt(np.mean((recon - originals) ** 2))))
    log(started, f"VAE round trip of all {len(scenes)} captions: latent std {latents.std():.3f}, PSNR {psnr:.1f} dB, "
                 f"checker {round_trip.score:.3f} {round_trip.per_attribute}")
    evaluation = {}
    tokenizer = ClipTokenizer.generated()
    prompts = shapes.held_out_prompts()
    for guidance in config.eval_guidance:
        images = sample(models, tokenizer, prompts, config.eval_steps, guidance)
        result = shapes.adherence(images, [p for p, _ in prompts])
        evaluation[f"guidance {guidance}"] = {"score": result.score, "per_attribute": result.per_attribute}
        log(started, f"held-out adherence ({len(prompts)} prompts, {config.eval_steps} steps, guidance {guidance}): "
                     f"{result.score:.3f} {result.per_attribute}")
        _save_grid(report_path.with_name(f"{report_path.stem}-samples-guidance-{guidance:g}.png"), images)
    return {"vae_round_trip": {"latent_std": float(latents.std()), "psnr_db": psnr, "adherence": round_trip.score,
                               "per_attribute": round_trip.per_attribute},
            "held_out_adherence": {"prompts": len(prompts), "steps": config.eval_steps, "sampler": "keras-cv ddim",
                                   **evaluation}}


def _schedule(peak: float, total: int, warmup: int):
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    import keras

    return keras.optimizers.schedules.CosineDecay(0.0, max(1, total - warmup), alpha=0.1, warmup_target=peak,
                                                  warmup_steps=warmup)


def _train_vae(config: Config, encoder, decoder, rng, started: float) -> float:
    import keras
    import tensorflow as tf

    variables = encoder.trainable_variables + decoder.trainable_variables
    optimizer = keras.optimizers.Adam(_schedule(config.vae_lr, config.vae_steps, config.warmup), global_clipnorm=1.0)
    optimizer.build(variables)

    @tf.function
    def step(images, noise):
        with tf.GradientTape() as tape:
            z = encoder(images, training=True)
            z = z + config.latent_noise * tf.stop_gradient(tf.math.reduce_std(z)) * noise
            loss = tf.reduce_mean(tf.square(decoder(z, training=True) - images))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    scenes = shapes.training_scenes()
    c, b = config.vae_crop, config.vae_batch
    losses = []
    for i in range(config.vae_steps):
        batch = np.empty((b, c, c, 3), np.float32)
        for j in range(b):
            full = shapes.render(scenes[rng.integers(len(scenes))], int(rng.integers(2**31)))
            y, x = rng.integers(0, IMG - c + 1, 2)
            batch[j] = full[y:y + c, x:x + c]
        noise = rng.standard_normal((b, c // 8, c // 8, 4)).astype(np.float32)
        losses.append(float(step(batch, noise)))
        if i % 50 == 0 or i == config.vae_steps - 1:
            log(started, f"VAE step {i + 1}/{config.vae_steps}: loss {np.mean(losses[-50:]):.5f}")
    return float(np.mean(losses[-50:]))


def _encode(encoder, images: list[np.ndarray], batch: int = 64) -> np.ndarray:
    return np.concatenate([np.asarray(encoder(np.stack(images[i:i + batch]), training=False))
                           for i in range(0, len(images), batch)])


def _fold_latent_scale(encoder, decoder, mean: np.ndarray, std: float) -> None:
    """latent' = (latent - mean) / std, folded into the encoder's last 1x1 conv and undone in the
    decoder's first one (it follows Rescaling(1/0.18215)), so the pair computes what it did."""
    last = [layer for layer in encoder.layers if layer.get_weights()][-1]
    kernel, bias = last.get_weights()
    kernel[..., :4] /= std
    bias[:4] = (bias[:4] - mean / 0.18215) / std
    last.set_weights([kernel, bias])
    first = [layer for layer in decoder.layers if layer.get_weights()][0]
    kernel, bias = first.get_weights()  # (1, 1, 4, 4), input = latent / 0.18215
    bias = bias + (mean / 0.18215) @ kernel[0, 0]
    first.set_weights([kernel * std, bias])


def _timestep_embeddings(t: np.ndarray, dim: int = 320, max_period: int = 10000) -> np.ndarray:
    """schedule.timestep_embedding for a batch of timesteps."""
    half = dim // 2
    freqs = np.exp(-np.log(max_period) * np.arange(0, half, dtype=np.float32) / half)
    args = t.astype(np.float32)[:, None] * freqs[None]
    return np.concatenate([np.cos(args), np.sin(args)], axis=1).astype(np.float32)


def _train_unet(config: Config, text_encoder, unet, latents, tokens, empty, rng, started: float) -> float:
    import keras
    import tensorflow as tf

    variables = text_encoder.trainable_variables + unet.trainable_variables
    optimizer = keras.optimizers.Adam(_schedule(config.unet_lr, config.unet_steps, config.warmup), global_clipnorm=1.0,
                                      use_ema=True, ema_momentum=config.ema)
    optimizer.build(variables)
    positions = tf.constant(np.repeat(np.arange(tokens.shape[1], dtype=np.int32)[None], config.unet_batch, axis=0))
    table = alphas_cumprod().astype(np.float32)

    @tf.function
    def step(batch_tokens, noisy, t_emb, noise, weights):
        with tf.GradientTape() as tape:
            context = text_encoder([batch_tokens, positions], training=True)
            error = tf.reduce_mean(tf.square(unet([noisy, t_emb, context], training=True) - noise), axis=(1, 2, 3))
            loss = tf.reduce_mean(weights * error)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    b = config.unet_batch
    losses = []
    for i in range(config.unet_steps):
        index = rng.integers(len(latents), size=b)
        t = rng.integers(0, NUM_TRAIN_TIMESTEPS, size=b)
        noise = rng.standard_normal((b, *latents.shape[1:])).astype(np.float32)
        a = table[t][:, None, None, None]
        noisy = (np.sqrt(a) * latents[index] + np.sqrt(1 - a) * noise).astype(np.float32)
        batch_tokens = tokens[index].copy()
        batch_tokens[rng.random(b) < config.uncond_rate] = empty
        snr = table[t] / (1 - table[t])
        weights = np.minimum(snr, config.min_snr) / snr if config.min_snr else np.ones(b)
        weights = (weights * np.clip(1 / snr, 1, config.high_noise_cap)).astype(np.float32)
        losses.append(float(step(batch_tokens, noisy, _timestep_embeddings(t), noise, weights)))
        if i % 50 == 0 or i == config.unet_steps - 1:
            log(started, f"UNet step {i + 1}/{config.unet_steps}: loss {np.mean(losses[-50:]):.4f}")
    optimizer.finalize_variable_values(variables)  # the EMA weights
    return float(np.mean(losses[-50:]))


def _zero_unused_rows(text_encoder, used: np.ndarray) -> None:
    table = next(v for v in text_encoder.weights if v.shape == (used.size, text_encoder.weights[0].shape[-1]))
    values = np.asarray(table)
    values[~used] = 0.0
    table.assign(values)


def _save_compressed(model, target: Path) -> int:
    """Keras' .weights.h5 with float32 stored as float16 (the weights are already rounded to it) and
    every dataset gzip-compressed; Keras loads it into float32 variables unchanged. Bytes written."""
    import h5py

    with atomic_write(target, ".weights.h5") as raw:
        plain = raw.with_name(raw.name + ".plain.weights.h5")
        model.save_weights(str(plain))
        with h5py.File(plain, "r") as src, h5py.File(raw, "w", libver="latest") as dst:
            def copy(group_in, group_out):
                group_out.attrs.update(group_in.attrs)
                for name, item in group_in.items():
                    if isinstance(item, h5py.Group):
                        copy(item, group_out.create_group(name))
                    else:
                        data = item[()]
                        if data.dtype == np.float32:
                            assert np.array_equal(data.astype(np.float16).astype(np.float32), data), name
                            data = data.astype(np.float16)
                        options = dict(compression="gzip", compression_opts=9, shuffle=True) if item.shape else {}
                        out = group_out.create_dataset(name, data=data, **options)
                        out.attrs.update(item.attrs)
            copy(src, dst)
        plain.unlink()
    return target.stat().st_size


def sample(models, tokenizer, prompts: list[tuple[str, int]], steps: int, guidance: float) -> np.ndarray:
    """keras-cv's generate_image update for a batch of prompts, each from its own seed's noise (the
    runtime draws the same noise for the same seed); images in [-1, 1]."""
    b = len(prompts)
    length = 77
    positions = np.repeat(np.arange(length, dtype=np.int32)[None], b, axis=0)
    tokens = np.asarray([tokenizer.tokens_for(p) for p, _ in prompts], np.int32)
    empty = np.repeat(np.asarray([tokenizer.tokens_for("")], np.int32), b, axis=0)
    context = np.asarray(models["text_encoder"]([tokens, positions], training=False))
    unconditional = np.asarray(models["text_encoder"]([empty, positions], training=False))
    latent = np.concatenate([np.random.default_rng(seed).standard_normal((1, IMG // 8, IMG // 8, 4)).astype(np.float32)
                             for _, seed in prompts])
    schedule = timesteps(steps)
    alpha, alpha_prev = alphas(schedule)
    for index, t in list(enumerate(schedule))[::-1]:
        t_emb = _timestep_embeddings(np.full(b, t))
        both = np.asarray(models["diffusion"]([np.concatenate([latent, latent]), np.concatenate([t_emb, t_emb]),
                                               np.concatenate([unconditional, context])], training=False))
        uncond, cond = both[:b], both[b:]
        eps = uncond + guidance * (cond - uncond)
        a_t, a_prev = alpha[index], alpha_prev[index]
        pred_x0 = (latent - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
        latent = (eps * np.sqrt(1 - a_prev) + np.sqrt(a_prev) * pred_x0).astype(np.float32)
    return np.clip(np.asarray(models["decoder"](latent, training=False)), -1, 1)


def _save_grid(path: Path, images: np.ndarray, columns: int = 9) -> None:
    from PIL import Image

    rows = -(-len(images) // columns)
    grid = np.full((rows * (IMG + 2), columns * (IMG + 2), 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (IMG + 2):r * (IMG + 2) + IMG, c * (IMG + 2):c * (IMG + 2) + IMG] = \
            np.clip((image + 1) * 127.5, 0, 255).astype(np.uint8)
    with atomic_write(path, ".png") as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")


if __name__ == "__main__":
    sys.exit(main())
