"""Representative datasets for int8 calibration. Imports no TensorFlow.

A calibration source is any callable `(component, dims, count, seed) -> list[dict[name, array]]`
giving samples for a component's pipeline-facing inputs. The built-in one is synthetic: seeded
inputs with the right shapes and plausible ranges. UNet parts after the first are calibrated on
what the float parts before them compute from these samples (convert.py does that).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .components import COMPONENTS, TIMESTEP_EMBEDDING_DIM, ModelDims

CalibrationSource = Callable[[str, ModelDims, int, int], list[dict[str, np.ndarray]]]

START_TOKEN = 49406
END_TOKEN = 49407
NUM_TRAIN_TIMESTEPS = 1000


def timestep_embedding(timestep: float, batch_size: int, dim: int = TIMESTEP_EMBEDDING_DIM,
                       max_period: int = 10000) -> np.ndarray:
    """keras-cv's `_get_timestep_embedding`, in numpy."""
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(0, half, dtype=np.float32) / half)
    args = np.float32(timestep) * freqs
    embedding = np.concatenate([np.cos(args), np.sin(args)]).astype(np.float32)
    return np.repeat(embedding[None, :], batch_size, axis=0)


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
                "timestep_embedding": timestep_embedding(t, dims.batch_size),
                "context": context,
            })
        elif component == "decoder":
            latent = rng.standard_normal(specs["latent"].shape).astype(np.float32) * np.float32(0.8)
            samples.append({"latent": latent})
        elif component == "image_encoder":
            image = rng.uniform(-1.0, 1.0, specs["image"].shape).astype(np.float32)
            samples.append({"image": image})
        else:
            raise KeyError(component)
    return samples
