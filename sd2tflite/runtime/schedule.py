"""The diffusion schedule keras-cv's StableDiffusion uses, in numpy. No TensorFlow.

keras-cv ships `_ALPHAS_CUMPROD` as a table rounded to 8 significant digits; the formula below
(scaled-linear betas 0.00085..0.012 over 1000 steps) reproduces it within 1.2e-7 relative
(tests/test_generate.py checks it against keras-cv's table).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ..core.registry import TIMESTEP_EMBEDDING_DIM

NUM_TRAIN_TIMESTEPS = 1000


@lru_cache()
def alphas_cumprod() -> np.ndarray:
    betas = np.linspace(0.00085**0.5, 0.012**0.5, NUM_TRAIN_TIMESTEPS, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def timesteps(num_steps: int) -> np.ndarray:
    """keras-cv's `generate_image` schedule: num_steps timesteps from 0 to 999, ascending."""
    ratio = (NUM_TRAIN_TIMESTEPS - 1) / (num_steps - 1) if num_steps > 1 else NUM_TRAIN_TIMESTEPS
    return (np.arange(0, num_steps) * ratio).round().astype(np.int64)


def alphas(steps: np.ndarray) -> tuple[list[float], list[float]]:
    """(alpha_t, alpha_prev) per timestep, as keras-cv's `_get_initial_alphas`."""
    table = alphas_cumprod()
    a = [float(table[t]) for t in steps]
    return a, [1.0] + a[:-1]


def timestep_embedding(timestep: float, batch_size: int, dim: int = TIMESTEP_EMBEDDING_DIM,
                       max_period: int = 10000) -> np.ndarray:
    """keras-cv's `_get_timestep_embedding`."""
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(0, half, dtype=np.float32) / half)
    args = np.float32(timestep) * freqs
    embedding = np.concatenate([np.cos(args), np.sin(args)]).astype(np.float32)
    return np.repeat(embedding[None, :], batch_size, axis=0)
