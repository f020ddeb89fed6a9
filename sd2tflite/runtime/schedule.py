"""Diffusion schedules in numpy: keras-cv's, and the one a model's own scheduler config describes
(`Schedule`, recorded in the manifest at convert time). No TensorFlow.

keras-cv ships `_ALPHAS_CUMPROD` as a table rounded to 8 significant digits; the formula below
(scaled-linear betas 0.00085..0.012 over 1000 steps) reproduces it within 1.2e-7 relative
(tests/test_generate.py checks it against keras-cv's table).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache

import numpy as np

from ..core.errors import ManifestError, UsageError
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


# ---------------------------------------------------------------- a model's own schedule

SPACINGS = ("leading", "trailing", "linspace")
KERAS_CV = "keras-cv"  # the convention of keras-cv's weights: keras-cv's DDIM timesteps, truncated pixels
BETA_SCHEDULES = ("scaled_linear", "linear")


@dataclass(frozen=True)
class Schedule:
    """What a set's scheduler config says: the training betas, the timestep spacing and offset, the
    sampler it recommends (and steps / guidance where the model's family or the user at convert time
    said them). `convention` "keras-cv" keeps keras-cv's DDIM and truncating pixels; "diffusers"
    follows diffusers' schedulers and rounds pixels as its pipelines do."""

    convention: str = KERAS_CV
    beta_start: float = BETA_START
    beta_end: float = BETA_END
    beta_schedule: str = "scaled_linear"
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
    timestep_spacing: str | None = None  # None: each sampler's own diffusers default
    steps_offset: int = 0
    set_alpha_to_one: bool | None = None  # None: the sampler class's default
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    original_inference_steps: int = 50  # lcm / tcd
    timestep_scaling: float = 10.0  # lcm
    sampler: str | None = None  # the recommended sampler (None: keras-cv's ddim)
    steps: int | None = None  # recommended steps / guidance (None: 25 / 7.5)
    guidance: float | None = None
    eta: float | None = None  # tcd's gamma
    scheduler_class: str | None = None  # the diffusers class the config names
    source: str = "keras-cv"  # where the record came from: scheduler_config.json, family, options

    def __post_init__(self) -> None:
        if self.convention not in (KERAS_CV, "diffusers"):
            raise ManifestError(f"manifest scheduler.convention {self.convention!r} is unknown: convert again")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise UsageError(f"scheduler beta_schedule {self.beta_schedule!r} is not supported: this sd2tflite "
                             f"runs {', '.join(BETA_SCHEDULES)}")
        if self.timestep_spacing is not None and self.timestep_spacing not in SPACINGS:
            raise UsageError(f"timestep spacing {self.timestep_spacing!r} is unknown: use one of {', '.join(SPACINGS)}")
        if self.num_train_timesteps < 2 or not 0 < self.beta_start < self.beta_end < 1:
            raise UsageError(f"scheduler betas {self.beta_start}..{self.beta_end} over {self.num_train_timesteps} "
                             "steps are not a usable schedule: fix the scheduler config")

    @property
    def is_keras_cv(self) -> bool:
        return self.convention == KERAS_CV

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict | None) -> "Schedule":
        """The manifest's record; an empty one (sets made before it existed) is keras-cv's."""
        if not data:
            return cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ManifestError(f"manifest scheduler field {unknown[0]!r} is unknown to this sd2tflite: "
                                "update sd2tflite or convert again")
        from .samplers import SAMPLERS

        if data.get("sampler") is not None and data["sampler"] not in SAMPLERS:
            raise ManifestError(f"manifest scheduler.sampler {str(data['sampler'])[:80]!r} is unknown to this "
                                "sd2tflite: update sd2tflite or convert again")
        return cls(**data)

    def train_alphas_cumprod(self) -> np.ndarray:
        """alpha_bar per training timestep as diffusers holds it (float32 betas and cumprod)."""
        return _train_alphas_cumprod(self.beta_start, self.beta_end, self.beta_schedule, self.num_train_timesteps)

    def train_sigmas(self) -> np.ndarray:
        a = self.train_alphas_cumprod().astype(np.float32)
        return np.sqrt((1 - a) / a).astype(np.float64)

    @property
    def is_default_betas(self) -> bool:
        return (self.beta_start, self.beta_end, self.beta_schedule, self.num_train_timesteps) == (
            BETA_START, BETA_END, "scaled_linear", NUM_TRAIN_TIMESTEPS)


@lru_cache()
def _train_alphas_cumprod(beta_start: float, beta_end: float, beta_schedule: str, n: int) -> np.ndarray:
    if beta_schedule == "scaled_linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, n, dtype=np.float32) ** 2
    else:
        betas = np.linspace(beta_start, beta_end, n, dtype=np.float32)
    # torch's CPU cumprod accumulates in float64 and stores float32.
    return np.cumprod((1 - betas).astype(np.float64)).astype(np.float32).astype(np.float64)


def spaced_timesteps(spacing: str, steps: int, n: int = NUM_TRAIN_TIMESTEPS, offset: int = 0,
                     kind: str = "ddim") -> np.ndarray:
    """diffusers' `set_timesteps` spacing, descending. kind "euler": float timesteps as the Euler
    schedulers make them (linspace not rounded); "dpm": DPMSolverMultistep's (steps + 1 points, the
    last dropped); "ddim": DDIM / PNDM / the others (integers)."""
    if spacing == "linspace":
        if kind == "dpm":
            return np.linspace(0, n - 1, steps + 1).round()[::-1][:-1].copy()
        t = np.linspace(0, n - 1, steps)[::-1].copy()
        return t if kind == "euler" else t.round()
    if spacing == "leading":
        if kind == "dpm":
            ratio = n // (steps + 1)
            return (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].copy() + offset
        ratio = n // steps
        return (np.arange(0, steps) * ratio).round()[::-1].copy() + offset
    if spacing == "trailing":
        return np.round(np.arange(n, 0, -n / steps)) - 1
    raise UsageError(f"timestep spacing {spacing!r} is unknown: use one of {', '.join(SPACINGS)}")


def guidance_scale_embedding(guidance: float, batch_size: int, dim: int) -> np.ndarray:
    """diffusers' `get_guidance_scale_embedding(w - 1, dim)` for LCM UNets (time_cond_proj_dim):
    sin then cos of (w - 1) * 1000 at geometric frequencies, float32 as torch computes it."""
    w = np.float32((guidance - 1.0) * 1000.0)
    half = dim // 2
    scale = np.float32(math.log(10000.0) / (half - 1)) if half > 1 else np.float32(0.0)
    freqs = np.exp(np.arange(half, dtype=np.float32) * -scale)
    args = (w * freqs).astype(np.float32)
    emb = np.concatenate([np.sin(args), np.cos(args)])
    if dim % 2:
        emb = np.concatenate([emb, np.zeros(1, np.float32)])
    return np.repeat(emb.astype(np.float32)[None, :], batch_size, axis=0)
