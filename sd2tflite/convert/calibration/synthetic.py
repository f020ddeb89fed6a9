"""Representative datasets for int8 calibration. Imports no TensorFlow.

A calibration source is any callable `(component, dims, count, seed) -> list[dict[name, array]]`
giving samples for a component's pipeline-facing inputs. The built-in one is synthetic: seeded
inputs with the right shapes and plausible ranges. UNet parts after the first are calibrated on
what the float parts before them compute from these samples (convert/export.py does that).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ...core.registry import COMPONENTS, ModelDims
from ...runtime.schedule import NUM_TRAIN_TIMESTEPS, timestep_embedding
from ...runtime.tokenizer import END_TOKEN, START_TOKEN

CalibrationSource = Callable[[str, ModelDims, int, int], list[dict[str, np.ndarray]]]


def synthetic_images(dims: ModelDims, count: int, seed: int) -> list[np.ndarray]:
    """Smooth, photo-like images in [-1, 1]: a few low-frequency waves plus a little grain."""
    rng = np.random.default_rng(seed)
    b, h, w = dims.batch_size, dims.img_height, dims.img_width
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    images = []
    for _ in range(count):
        img = np.zeros((b, h, w, 3), np.float32)
        for _ in range(4):
            fy, fx, phase = rng.uniform(0.5, 4, 2).tolist() + [rng.uniform(0, 6.3)]
            img += (np.sin(2 * np.pi * (fy * y + fx * x) + phase)[None, :, :, None]
                    * rng.uniform(-0.4, 0.4, 3)).astype(np.float32)
        img += rng.normal(0, 0.03, img.shape).astype(np.float32)
        images.append(np.clip(img, -1, 1))
    return images


def smooth_latents(shape: tuple[int, ...], rng: np.random.Generator, scale: float = 0.8) -> np.ndarray:
    """Spatially correlated latents, like encoded images: low-resolution noise, upsampled."""
    b, h, w, c = shape
    coarse = rng.standard_normal((b, max(1, h // 8), max(1, w // 8), c))
    up = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)[:, :h, :w]
    return (scale * up + 0.2 * rng.standard_normal(shape)).astype(np.float32)


def synthetic_samples(component: str, dims: ModelDims, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Seeded inputs shaped like the pipeline's, spread over the ranges it produces."""
    rng = np.random.default_rng(seed)
    specs = {s.name: s for s in COMPONENTS[component].input_specs(dims)}
    samples = []
    for i in range(count):
        if component == "text_encoder":
            b, length = specs["tokens"].shape
            tokens = np.full((b, length), END_TOKEN, dtype=np.int32)
            n_words = int(rng.integers(0, length - 1))
            tokens[:, 0] = START_TOKEN
            tokens[:, 1 : 1 + n_words] = rng.integers(0, dims.vocab_size - 2, size=(b, n_words))
            positions = np.repeat(np.arange(length, dtype=np.int32)[None], b, axis=0)
            samples.append({"tokens": tokens, "positions": positions})
        elif component == "diffusion":
            # Timesteps spread over the schedule; latents at a matching noise scale; both a
            # prompt-like context and a near-constant one (the unconditional branch).
            t = (i + 0.5) / count * NUM_TRAIN_TIMESTEPS
            latent = rng.standard_normal(specs["latent"].shape).astype(np.float32)
            latent *= np.float32(0.5 + t / NUM_TRAIN_TIMESTEPS)
            context = rng.standard_normal(specs["context"].shape).astype(np.float32)
            if i % 2:
                context = context * np.float32(0.1) + np.float32(rng.standard_normal())
            samples.append({
                "latent": latent,
                "timestep_embedding": timestep_embedding(t, dims.batch_size, dims.timestep_dim),
                "context": context,
            })
        elif component == "decoder":
            # Mostly image-like latents, some still noisy (intermediate steps).
            if i % 3 == 2:
                latent = rng.standard_normal(specs["latent"].shape).astype(np.float32)
            else:
                latent = smooth_latents(specs["latent"].shape, rng)
            samples.append({"latent": latent})
        elif component == "image_encoder":
            samples.append({"image": synthetic_images(dims, 1, int(rng.integers(1 << 31)))[0]})
        else:
            raise KeyError(component)
    return samples
