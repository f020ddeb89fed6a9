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
BETA_START, BETA_END = 0.00085, 0.012  # scaled linear: betas evenly spaced in sqrt(beta)


@lru_cache()
def alphas_cumprod() -> np.ndarray:
    betas = np.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=np.float64) ** 2
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


@lru_cache()
def training_sigmas() -> np.ndarray:
    """The noise level of each training timestep in sigma space (x = x0 + sigma * eps, the space
    the Euler and DPM-Solver samplers step in): sqrt((1 - alpha_bar) / alpha_bar), ascending.

    Computed as diffusers' schedulers hold it, from float32 betas and alpha_bar: that rounding
    moves sigma up to 1.3e-5 (relative) off the exact table (`alphas_cumprod`, ddim's), most at t=0
    where 1 - alpha_bar is small, and 25 Euler-ancestral steps carry it to 1.9e-5 of the latent.
    With diffusers' table the samplers that reproduce diffusers agree with it to float precision.
    """
    betas = np.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=np.float32) ** 2
    # torch's CPU cumprod accumulates in float64 and stores float32.
    alpha_bar = np.cumprod((1 - betas).astype(np.float64)).astype(np.float32)
    return np.sqrt((1 - alpha_bar) / alpha_bar).astype(np.float64)


def sigma_to_timestep(sigma: np.ndarray) -> np.ndarray:
    """The fractional training timestep of each sigma: log sigma interpolated linearly between
    training timesteps, clamped to [0, 999] (diffusers' `_sigma_to_t`, which the UNet was not
    trained on but takes through its sinusoidal embedding)."""
    log_sigma = np.log(np.maximum(np.asarray(sigma, dtype=np.float64), 1e-10))
    return np.interp(log_sigma, np.log(training_sigmas()), np.arange(NUM_TRAIN_TIMESTEPS, dtype=np.float64))


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) noise levels, sigma_max down to sigma_min, spaced evenly in sigma^(1/rho)."""
    ramp = np.linspace(0.0, 1.0, num_steps)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def timestep_embedding(timestep: float, batch_size: int, dim: int = TIMESTEP_EMBEDDING_DIM,
                       max_period: int = 10000) -> np.ndarray:
    """keras-cv's `_get_timestep_embedding`; takes fractional timesteps too (Karras sigmas)."""
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(0, half, dtype=np.float32) / half)
    args = np.float32(timestep) * freqs
    embedding = np.concatenate([np.cos(args), np.sin(args)]).astype(np.float32)
    return np.repeat(embedding[None, :], batch_size, axis=0)
