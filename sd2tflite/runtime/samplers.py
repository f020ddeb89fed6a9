"""Samplers: the schedule and the update that turn a guided model output into the next latent. numpy only.

`ddim` is keras-cv's own update, bit for bit (`verify` compares it with keras-cv's pipeline). The
others reproduce diffusers' schedulers as SD 1.x users run them, to float precision
(tests/test_samplers.py replays loops recorded from diffusers by tests/fixtures/make_sampler_fixtures.py):

  euler     EulerDiscreteScheduler
  euler-a   EulerAncestralDiscreteScheduler (noise added at every step)
  dpm++2m   DPMSolverMultistepScheduler (dpmsolver++, second order, midpoint: its defaults)

Timestep spacing: diffusers' "linspace" (the first step at t=999). SD 1.5's scheduler_config.json
(PNDMScheduler, steps_offset 1) names no `timestep_spacing`, so a scheduler made from it with
`from_config` takes its own class default, "linspace" (steps_offset then plays no part); PNDM's
"leading" default does not carry over. keras-cv's ddim schedule also starts at t=999.

All samplers use keras-cv's betas (scaled linear 0.00085-0.012, 1000 steps = diffusers' SD config);
ddim on keras-cv's exact table, the others on diffusers' float32 rounding of it
(`schedule.training_sigmas`). The update maths is float64 (diffusers: float32), the latent between
steps float32 as in both. Steps are counted in the order they run: index 0 is the noisiest,
index == steps is the clean end.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from typing import Callable, ClassVar

import numpy as np

from ..core.errors import UsageError
from ..core.registry import PREDICTION_TYPES
from .schedule import (NUM_TRAIN_TIMESTEPS, alphas, karras_sigmas, sigma_to_timestep, timesteps,
                       training_sigmas)

NoiseSource = Callable[[tuple[int, ...]], np.ndarray]  # shape -> standard normal float32 noise


class Sampler(ABC):
    """One run's schedule and update rule; a fresh one per run (multistep samplers keep state)."""

    supports_karras: ClassVar[bool] = True
    timesteps: np.ndarray  # the UNet's timestep at each step (fractional with Karras sigmas)

    def __init__(self, steps: int, prediction_type: str):
        if prediction_type not in PREDICTION_TYPES:
            raise UsageError(f"prediction type {prediction_type!r} is unknown: use one of "
                             f"{', '.join(PREDICTION_TYPES)}")
        self.prediction_type = prediction_type

    @abstractmethod
    def initial_latent(self, noise: np.ndarray) -> np.ndarray:
        """The first latent of a text-to-image run, from unit-variance noise."""

    @abstractmethod
    def add_noise(self, x0: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        """`x0` noised to the level the latent has before step `index` (img2img start, inpainting's
        kept region); index == steps gives x0."""

    @abstractmethod
    def scale_input(self, latent: np.ndarray, index: int) -> np.ndarray:
        """What the UNet sees at step `index` (it was trained on variance-preserving latents)."""

    @abstractmethod
    def step(self, model_output: np.ndarray, index: int, latent: np.ndarray, noise_source: NoiseSource) -> np.ndarray:
        """The latent after step `index`, from the guided model output at that step."""


class Ddim(Sampler):
    """keras-cv's `generate_image` update, expression for expression (deterministic DDIM, eta 0)."""

    supports_karras = False

    def __init__(self, steps: int, prediction_type: str, karras: bool = False):
        super().__init__(steps, prediction_type)
        schedule = timesteps(steps)  # ascending, as keras-cv builds it; run from the end
        alpha, alpha_prev = alphas(schedule)
        self.timesteps = schedule[::-1]
        self._alpha, self._alpha_prev = alpha[::-1], alpha_prev[::-1]

    def initial_latent(self, noise: np.ndarray) -> np.ndarray:
        return noise

    def add_noise(self, x0: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        a = self._alpha[index] if index < len(self._alpha) else 1.0
        return math.sqrt(a) * x0 + math.sqrt(1.0 - a) * noise

    def scale_input(self, latent: np.ndarray, index: int) -> np.ndarray:
        return latent

    def step(self, model_output: np.ndarray, index: int, latent: np.ndarray, noise_source: NoiseSource) -> np.ndarray:
        a_t, a_prev = self._alpha[index], self._alpha_prev[index]
        if self.prediction_type == "v_prediction":  # v = sqrt(a) eps - sqrt(1 - a) x0
            eps = math.sqrt(a_t) * model_output + math.sqrt(1 - a_t) * latent
        else:
            eps = model_output
        pred_x0 = (latent - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        return eps * math.sqrt(1.0 - a_prev) + math.sqrt(a_prev) * pred_x0


class _EulerFamily(Sampler):
    """Latents in sigma space (x = x0 + sigma * eps), as diffusers' Euler schedulers keep them."""

    def __init__(self, steps: int, prediction_type: str, karras: bool = False):
        super().__init__(steps, prediction_type)
        t = np.linspace(0, NUM_TRAIN_TIMESTEPS - 1, steps)[::-1]
        sigmas = np.interp(t, np.arange(NUM_TRAIN_TIMESTEPS), training_sigmas())
        if karras:
            sigmas = karras_sigmas(sigmas[-1], sigmas[0], steps)
            t = sigma_to_timestep(sigmas)
        self.timesteps = t
        self.sigmas = np.append(sigmas, 0.0)  # steps + 1: the last step lands on the clean latent

    def initial_latent(self, noise: np.ndarray) -> np.ndarray:
        return (noise * self.sigmas[0]).astype(np.float32)  # diffusers' init_noise_sigma (linspace)

    def add_noise(self, x0: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        return x0 + noise * self.sigmas[index]

    def scale_input(self, latent: np.ndarray, index: int) -> np.ndarray:
        return (latent / math.sqrt(self.sigmas[index] ** 2 + 1)).astype(np.float32)

    def _denoised(self, model_output: np.ndarray, latent: np.ndarray, sigma: float) -> np.ndarray:
        if self.prediction_type == "v_prediction":
            return model_output * (-sigma / math.sqrt(sigma**2 + 1)) + latent / (sigma**2 + 1)
        return latent - sigma * model_output


class Euler(_EulerFamily):
    def step(self, model_output: np.ndarray, index: int, latent: np.ndarray, noise_source: NoiseSource) -> np.ndarray:
        x, sigma = latent.astype(np.float64), self.sigmas[index]
        derivative = (x - self._denoised(model_output.astype(np.float64), x, sigma)) / sigma
        return (x + derivative * (self.sigmas[index + 1] - sigma)).astype(np.float32)


class EulerAncestral(_EulerFamily):
    """Euler down to sigma_down, then fresh noise up to the next sigma (draws at every step, the
    last one included, as diffusers does, so the same noise stream gives the same latents)."""

    def step(self, model_output: np.ndarray, index: int, latent: np.ndarray, noise_source: NoiseSource) -> np.ndarray:
        x, sigma_from, sigma_to = latent.astype(np.float64), self.sigmas[index], self.sigmas[index + 1]
        sigma_up = math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2)
        sigma_down = math.sqrt(max(sigma_to**2 - sigma_up**2, 0.0))
        derivative = (x - self._denoised(model_output.astype(np.float64), x, sigma_from)) / sigma_from
        x = x + derivative * (sigma_down - sigma_from)
        return (x + np.asarray(noise_source(latent.shape), dtype=np.float64) * sigma_up).astype(np.float32)


class DpmSolverPlusPlus2M(Sampler):
    """DPM-Solver++(2M): data-prediction multistep, first order on the first and last step.
    Latents are variance-preserving (x = alpha_t x0 + sigma_t eps), so the UNet input is the latent
    and the starting noise is not scaled (diffusers' init_noise_sigma 1, scale_model_input identity)."""

    def __init__(self, steps: int, prediction_type: str, karras: bool = False):
        super().__init__(steps, prediction_type)
        table = training_sigmas()
        if karras:
            sigmas = karras_sigmas(table[0], table[-1], steps)
            t = np.round(sigma_to_timestep(sigmas))  # this scheduler feeds integer timesteps
        else:
            t = np.round(np.linspace(0, NUM_TRAIN_TIMESTEPS - 1, steps + 1))[::-1][:-1]
            sigmas = table[t.astype(np.int64)]
        self.timesteps = t
        self.sigmas = np.append(sigmas, 0.0)
        self._previous: tuple[int, np.ndarray] | None = None  # (step index, its x0 prediction)

    @staticmethod
    def _alpha_sigma(sigma: float) -> tuple[float, float]:
        alpha = 1 / math.sqrt(sigma**2 + 1)
        return alpha, sigma * alpha

    def initial_latent(self, noise: np.ndarray) -> np.ndarray:
        return noise

    def add_noise(self, x0: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        alpha, sigma = self._alpha_sigma(self.sigmas[index])
        return alpha * x0 + sigma * noise

    def scale_input(self, latent: np.ndarray, index: int) -> np.ndarray:
        return latent

    def step(self, model_output: np.ndarray, index: int, latent: np.ndarray, noise_source: NoiseSource) -> np.ndarray:
        x, output = latent.astype(np.float64), model_output.astype(np.float64)
        alpha_s, sigma_s = self._alpha_sigma(self.sigmas[index])
        if self.prediction_type == "v_prediction":
            x0 = alpha_s * x - sigma_s * output
        else:
            x0 = (x - sigma_s * output) / alpha_s
        previous, self._previous = self._previous, (index, x0)
        if self.sigmas[index + 1] == 0:
            return x0.astype(np.float32)  # the first-order update's limit at sigma 0 (diffusers: exactly x0)
        alpha_t, sigma_t = self._alpha_sigma(self.sigmas[index + 1])
        lambda_s, lambda_t = math.log(alpha_s) - math.log(sigma_s), math.log(alpha_t) - math.log(sigma_t)
        h = lambda_t - lambda_s
        decay = alpha_t * (math.exp(-h) - 1.0)
        if previous is None or previous[0] != index - 1:  # first step of the run: first order
            return ((sigma_t / sigma_s) * x - decay * x0).astype(np.float32)
        alpha_s1, sigma_s1 = self._alpha_sigma(self.sigmas[index - 1])
        r0 = (lambda_s - (math.log(alpha_s1) - math.log(sigma_s1))) / h
        d1 = (1.0 / r0) * (x0 - previous[1])
        return ((sigma_t / sigma_s) * x - decay * x0 - 0.5 * decay * d1).astype(np.float32)


# The --sampler table: name -> class. ddim first: the default.
SAMPLERS: dict[str, type[Sampler]] = {
    "ddim": Ddim,
    "euler": Euler,
    "euler-a": EulerAncestral,
    "dpm++2m": DpmSolverPlusPlus2M,
}
DEFAULT_SAMPLER = "ddim"


def check_sampler(name: str, karras: bool) -> None:
    """A UsageError for a name not in SAMPLERS, or Karras sigmas on a sampler with a fixed schedule."""
    if name not in SAMPLERS:
        raise UsageError(f"--sampler {name!r} is unknown: use one of {', '.join(SAMPLERS)}")
    if karras and not SAMPLERS[name].supports_karras:
        usable = ", ".join(n for n, cls in SAMPLERS.items() if cls.supports_karras)
        raise UsageError(f"--karras does not apply to --sampler {name} (keras-cv's fixed schedule): "
                         f"drop --karras or pass --sampler {usable}")


def make_sampler(name: str, steps: int, prediction_type: str, karras: bool = False) -> Sampler:
    check_sampler(name, karras)
    return SAMPLERS[name](steps, prediction_type, karras)


def seeded_noise(starting_noise: np.ndarray) -> NoiseSource:
    """Ancestral noise, a stream of its own seeded by the run's starting noise (itself drawn from
    --seed): the seed's first draw stays the starting noise, so ddim images do not change, and a
    run from --noise reproduces the seeded run that drew that noise, as it does for ddim."""
    digest = hashlib.sha256(np.ascontiguousarray(starting_noise, dtype=np.float32).tobytes()).digest()
    rng = np.random.default_rng(np.random.SeedSequence(int.from_bytes(digest[:16], "little")))
    return lambda shape: rng.standard_normal(shape).astype(np.float32)
