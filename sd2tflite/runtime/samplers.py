"""Samplers: the schedule and the update that turn a guided model output into the next latent. numpy only.

`ddim` on a keras-cv set (no --spacing) is keras-cv's own update, bit for bit (`verify` compares it
with keras-cv's pipeline; `ddim-kerascv` names it anywhere). Everything else reproduces diffusers'
schedulers to float precision, with the set's own schedule (`schedule.Schedule`: betas, spacing,
offset, from the model's scheduler config; tests/test_samplers.py replays loops recorded from
diffusers by tests/fixtures/make_sampler_fixtures.py):

  ddim      DDIMScheduler (eta 0 unless --eta)
  pndm      PNDMScheduler with skip_prk_steps (PLMS: steps + 1 UNet calls, as diffusers runs it)
  euler     EulerDiscreteScheduler
  euler-a   EulerAncestralDiscreteScheduler (noise added at every step)
  dpm++2m   DPMSolverMultistepScheduler (dpmsolver++, second order, midpoint: its defaults)
  lcm       LCMScheduler (noise added between steps)
  tcd       TCDScheduler (gamma = --eta, default 0.3; noise added between steps when gamma > 0)

Timestep spacing (leading | trailing | linspace): the model's scheduler config when it names one,
else each class's own default as diffusers' `from_config` gives it (DDIM, PNDM, LCM, TCD: leading;
Euler, Euler ancestral, DPM-Solver: linspace). SD 1.5's scheduler_config.json (PNDMScheduler,
steps_offset 1) names none, so its own PNDM runs leading with offset 1 and a swap to euler runs
linspace. LCM and TCD space their steps over the distillation schedule (original_inference_steps).

The update maths is float64 on diffusers' float32 alpha_bar table (diffusers: float32), the latent
between steps float32 as in both. Steps are counted in the order they run: index 0 is the noisiest,
index == len(timesteps) is the clean end. Stochastic samplers draw from the run's noise stream
(`seeded_noise`), so a run is reproducible from its seed.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from typing import Callable, ClassVar

import numpy as np

from ..core.errors import UsageError
from ..core.registry import PREDICTION_TYPES
from .schedule import (SPACINGS, Schedule, alphas, karras_sigmas, spaced_timesteps,
                       timesteps)

NoiseSource = Callable[[tuple[int, ...]], np.ndarray]  # shape -> standard normal float32 noise

KERAS_CV_SCHEDULE = Schedule()


class Sampler(ABC):
    """One run's schedule and update rule; a fresh one per run (multistep samplers keep state)."""

    supports_karras: ClassVar[bool] = True
    default_spacing: ClassVar[str] = "linspace"  # diffusers' class default
    default_alpha_to_one: ClassVar[bool] = False
    timesteps: np.ndarray  # the UNet's timestep at each step (fractional with Karras sigmas)
    start: int = 0  # the step an image-to-image run starts at (diffusers' steps x strength rule)

    def __init__(self, steps: int, prediction_type: str, karras: bool = False, schedule: Schedule | None = None,
                 eta: float | None = None):
        if prediction_type not in PREDICTION_TYPES:
            raise UsageError(f"prediction type {prediction_type!r} is unknown: use one of "
                             f"{', '.join(PREDICTION_TYPES)}")
        self.prediction_type = prediction_type
        self.steps = steps
        self.schedule = schedule or KERAS_CV_SCHEDULE
        self.spacing = self.schedule.timestep_spacing or self.default_spacing
        self.eta = eta
        self._alpha_bar = self.schedule.train_alphas_cumprod()

    def set_strength(self, strength: float) -> None:
        """Image-to-image: run the last int(steps x strength) steps (diffusers' get_timesteps)."""
        kept = min(int(self.steps * strength), self.steps)
        if kept < 1:
            raise UsageError(f"--steps {self.steps} x --strength {strength} leaves no step to run: raise --steps "
                             f"to at least {math.ceil(1 / strength)} or --strength to at least {1 / self.steps:.3g}")
        self.start = max(self.steps - kept, 0)

    @abstractmethod
    def initial_latent(self, noise: np.ndarray) -> np.ndarray:
        """The first latent of a text-to-image run, from unit-variance noise."""

    @abstractmethod
    def add_noise(self, x0: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        """`x0` noised to the level the latent has before step `index` (img2img start, inpainting's
        kept region); index == len(timesteps) gives x0."""

    @abstractmethod
    def scale_input(self, latent: np.ndarray, index: int) -> np.ndarray:
        """What the UNet sees at step `index` (it was trained on variance-preserving latents)."""

    @abstractmethod
    def step(self, model_output: np.ndarray, index: int, latent: np.ndarray, noise_source: NoiseSource) -> np.ndarray:
        """The latent after step `index`, from the guided model output at that step."""


class KerasCvDdim(Sampler):
    """keras-cv's `generate_image` update, expression for expression (deterministic DDIM, eta 0)."""

    supports_karras = False

    def __init__(self, steps: int, prediction_type: str, karras: bool = False, schedule: Schedule | None = None,
                 eta: float | None = None):
        super().__init__(steps, prediction_type, karras, schedule, eta)
        if not self.schedule.is_default_betas:
            raise UsageError("--sampler ddim-kerascv runs keras-cv's fixed schedule, not this model's betas: "
                             "pass --sampler ddim")
        schedule_ = timesteps(steps)  # ascending, as keras-cv builds it; run from the end
        alpha, alpha_prev = alphas(schedule_)
        self.timesteps = schedule_[::-1]
        self._alpha, self._alpha_prev = alpha[::-1], alpha_prev[::-1]

    def set_strength(self, strength: float) -> None:
        # keras-cv has no image-to-image: start at the noise level of the first step run, rounding
        # the share of steps (at least one), as this sampler always has: keras-cv sets' images stay
        # as they were; diffusers' samplers (`--sampler ddim --spacing ...`) refuse steps x strength < 1.
        self.start = self.steps - max(1, round(self.steps * strength))

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


class _Discrete(Sampler):
    """Samplers on the variance-preserving latent at integer timesteps (DDIM, PNDM, LCM, TCD)."""

    supports_karras = False
    default_spacing = "leading"
    default_alpha_to_one = True

    def _final_alpha(self) -> float:
        one = self.schedule.set_alpha_to_one
        return 1.0 if (self.default_alpha_to_one if one is None else one) else float(self._alpha_bar[0])

    def _a(self, t: int) -> float:
        return float(self._alpha_bar[int(t)]) if t >= 0 else self._final_alpha()

    def initial_latent(self, noise: np.ndarray) -> np.ndarray:
        return noise

    def add_noise(self, x0: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        if index >= len(self.timesteps):
            return x0
        a = self._a(int(self.timesteps[index]))
        return (math.sqrt(a) * x0.astype(np.float64) + math.sqrt(1 - a) * noise).astype(np.float32)

    def scale_input(self, latent: np.ndarray, index: int) -> np.ndarray:
        return latent

    def _x0_eps(self, model_output: np.ndarray, latent: np.ndarray, a_t: float) -> tuple[np.ndarray, np.ndarray]:
        x, out = latent.astype(np.float64), model_output.astype(np.float64)
        if self.prediction_type == "v_prediction":
            return math.sqrt(a_t) * x - math.sqrt(1 - a_t) * out, math.sqrt(a_t) * out + math.sqrt(1 - a_t) * x
        return (x - math.sqrt(1 - a_t) * out) / math.sqrt(a_t), out

    def _clip(self, x0: np.ndarray) -> np.ndarray:
        if self.schedule.clip_sample:
            r = self.schedule.clip_sample_range
            return np.clip(x0, -r, r)
        return x0


class Ddim(_Discrete):
    """diffusers' DDIMScheduler: the previous timestep is t - N // steps whatever the spacing."""

    def __init__(self, steps: int, prediction_type: str, karras: bool = False, schedule: Schedule | None = None,
                 eta: float | None = None):
        super().__init__(steps, prediction_type, karras, schedule, eta)
        n = self.schedule.num_train_timesteps
        self.timesteps = spaced_timesteps(self.spacing, steps, n, self.schedule.steps_offset).astype(np.int64)
        self._ratio = n // steps

    def step(self, model_output: np.ndarray, index: int, latent: np.ndarray, noise_source: NoiseSource) -> np.ndarray:
        t = int(self.timesteps[index])
        prev = t - self._ratio
        a_t, a_prev = self._a(t), self._a(prev)
        x0, eps = self._x0_eps(model_output, latent, a_t)
        x0 = self._clip(x0)  # diffusers keeps the model's eps (use_clipped_model_output False)
        eta = self.eta or 0.0
        std = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) if eta else 0.0
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - std**2, 0.0)) * eps
        if eta > 0:
            x = x + std * np.asarray(noise_source(latent.shape), dtype=np.float64)
        return x.astype(np.float32)


class Pndm(_Discrete):
    """diffusers' PNDMScheduler with skip_prk_steps (PLMS): linear multistep on the noise
    prediction; the second timestep is visited twice (steps + 1 UNet calls)."""

    default_alpha_to_one = False

    def __init__(self, steps: int, prediction_type: str, karras: bool = False, schedule: Schedule | None = None,
                 eta: float | None = None):
        super().__init__(steps, prediction_type, karras, schedule, eta)
        n = self.schedule.num_train_timesteps
        ascending = spaced_timesteps(self.spacing, steps, n, self.schedule.steps_offset)[::-1].astype(np.int64)
        self._ratio = n // steps
        self.timesteps = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1].copy()
        self._ets: list[np.ndarray] = []
        self._counter = 0
        self._cur_sample: np.ndarray | None = None

    def set_strength(self, strength: float) -> None:
        super().set_strength(strength)  # an index into the steps + 1 timesteps, as diffusers slices them

    def step(self, model_output: np.ndarray, index: int, latent: np.ndarray, noise_source: NoiseSource) -> np.ndarray:
        t = int(self.timesteps[index])
        out, sample = model_output.astype(np.float64), latent.astype(np.float64)
        prev = t - self._ratio
        if self._counter != 1:
            self._ets = self._ets[-3:] + [out]
        else:
            prev, t = t, t + self._ratio
        ets = self._ets
        if len(ets) == 1 and self._counter == 0:
            self._cur_sample = sample
        elif len(ets) == 1 and self._counter == 1:
            out = (out + ets[-1]) / 2
            sample, self._cur_sample = self._cur_sample, None
        elif len(ets) == 2:
            out = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            out = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            out = (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4]) / 24
        self._counter += 1
        a_t, a_prev = self._a(t), self._a(prev)
        if self.prediction_type == "v_prediction":
            out = math.sqrt(a_t) * out + math.sqrt(1 - a_t) * sample
        denominator = a_t * math.sqrt(1 - a_prev) + math.sqrt(a_t * (1 - a_t) * a_prev)
        return (math.sqrt(a_prev / a_t) * sample - (a_prev - a_t) * out / denominator).astype(np.float32)


class _Consistency(_Discrete):
    """LCM and TCD: timesteps picked evenly from the distillation schedule (original_inference_steps
    points, k = N // original apart); image-to-image shortens that schedule (diffusers' strength)."""

    def __init__(self, steps: int, prediction_type: str, karras: bool = False, schedule: Schedule | None = None,
                 eta: float | None = None):
        super().__init__(steps, prediction_type, karras, schedule, eta)
        self._make(1.0)

    def _make(self, strength: float) -> None:
        n, original = self.schedule.num_train_timesteps, self.schedule.original_inference_steps
        k = n // original
        origin = np.arange(1, int(original * strength) + 1) * k - 1
        if len(origin) // self.steps < 1 or self.steps > original:
            raise UsageError(f"--steps {self.steps} is more than this model's distillation schedule holds "
                             f"({int(original * strength)} steps at this strength): lower --steps"
                             + (" or raise --strength" if strength < 1 else ""))
        origin = origin[::-1].copy()
        indices = np.floor(np.linspace(0, len(origin), num=self.steps, endpoint=False)).astype(np.int64)
        self.timesteps = origin[indices]

    def set_strength(self, strength: float) -> None:
        self._make(strength)
        self.start = 0


class Lcm(_Consistency):
    """diffusers' LCMScheduler: boundary-condition scalings, then fresh noise to the next timestep."""

    def step(self, model_output: np.ndarray, index: int, latent: np.ndarray, noise_source: NoiseSource) -> np.ndarray:
        t = int(self.timesteps[index])
        prev = int(self.timesteps[index + 1]) if index + 1 < len(self.timesteps) else t
        a_t, a_prev = self._a(t), self._a(prev)
        scaled = t * self.schedule.timestep_scaling
        c_skip = 0.25 / (scaled**2 + 0.25)
        c_out = scaled / math.sqrt(scaled**2 + 0.25)
        x0, _ = self._x0_eps(model_output, latent, a_t)
        denoised = c_out * self._clip(x0) + c_skip * latent.astype(np.float64)
        if index == len(self.timesteps) - 1:
            return denoised.astype(np.float32)
        noise = np.asarray(noise_source(latent.shape), dtype=np.float64)
        return (math.sqrt(a_prev) * denoised + math.sqrt(1 - a_prev) * noise).astype(np.float32)


class Tcd(_Consistency):
    """diffusers' TCDScheduler: back to s = floor((1 - gamma) * t_prev) on the predicted trajectory,
    then forward to t_prev with fresh noise (gamma 0: deterministic)."""

    DEFAULT_ETA = 0.3

    def __init__(self, steps: int, prediction_type: str, karras: bool = False, schedule: Schedule | None = None,
                 eta: float | None = None):
        eta = eta if eta is not None else (schedule.eta if schedule and schedule.eta is not None else self.DEFAULT_ETA)
        if not 0.0 <= eta <= 1.0:
            raise UsageError(f"--eta {eta} must be in [0, 1] for tcd (its gamma; 0.3 is the default)")
        super().__init__(steps, prediction_type, karras, schedule, eta)

    def step(self, model_output: np.ndarray, index: int, latent: np.ndarray, noise_source: NoiseSource) -> np.ndarray:
        eta = float(self.eta)
        t = int(self.timesteps[index])
        prev = int(self.timesteps[index + 1]) if index + 1 < len(self.timesteps) else 0
        s = int(math.floor((1 - eta) * prev))
        a_t, a_prev, a_s = self._a(t), self._a(prev), self._a(s)
        x0, eps = self._x0_eps(model_output, latent, a_t)
        noised = math.sqrt(a_s) * x0 + math.sqrt(1 - a_s) * eps
        if eta > 0 and index != len(self.timesteps) - 1:
            noise = np.asarray(noise_source(latent.shape), dtype=np.float64)
            noised = math.sqrt(a_prev / a_s) * noised + math.sqrt(1 - a_prev / a_s) * noise
        return noised.astype(np.float32)


class _EulerFamily(Sampler):
    """Latents in sigma space (x = x0 + sigma * eps), as diffusers' Euler schedulers keep them."""

    def __init__(self, steps: int, prediction_type: str, karras: bool = False, schedule: Schedule | None = None,
                 eta: float | None = None):
        super().__init__(steps, prediction_type, karras, schedule, eta)
        n = self.schedule.num_train_timesteps
        t = spaced_timesteps(self.spacing, steps, n, self.schedule.steps_offset, kind="euler")
        if self.spacing != "linspace":
            t = t.astype(np.float32).astype(np.float64)
        table = self.schedule.train_sigmas()
        sigmas = np.interp(t, np.arange(n), table)
        if karras:
            sigmas = karras_sigmas(sigmas[-1], sigmas[0], steps)
            t = _sigma_to_t(sigmas, table)
        self.timesteps = t
        self.sigmas = np.append(sigmas, 0.0)  # steps + 1: the last step lands on the clean latent

    def initial_latent(self, noise: np.ndarray) -> np.ndarray:
        # diffusers' init_noise_sigma: sigma_max for linspace / trailing, sqrt(sigma_max^2 + 1) for leading
        scale = self.sigmas[0] if self.spacing in ("linspace", "trailing") else math.sqrt(self.sigmas[0] ** 2 + 1)
        return (noise * scale).astype(np.float32)

    def add_noise(self, x0: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        return x0 + noise * self.sigmas[index]

    def scale_input(self, latent: np.ndarray, index: int) -> np.ndarray:
        return (latent / math.sqrt(self.sigmas[index] ** 2 + 1)).astype(np.float32)

    def _denoised(self, model_output: np.ndarray, latent: np.ndarray, sigma: float) -> np.ndarray:
        if self.prediction_type == "v_prediction":
            return model_output * (-sigma / math.sqrt(sigma**2 + 1)) + latent / (sigma**2 + 1)
        return latent - sigma * model_output


def _sigma_to_t(sigma: np.ndarray, table: np.ndarray) -> np.ndarray:
    """diffusers' `_sigma_to_t`: log sigma interpolated between training timesteps, clamped."""
    log_sigma = np.log(np.maximum(np.asarray(sigma, dtype=np.float64), 1e-10))
    return np.interp(log_sigma, np.log(table), np.arange(len(table), dtype=np.float64))


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

    def __init__(self, steps: int, prediction_type: str, karras: bool = False, schedule: Schedule | None = None,
                 eta: float | None = None):
        super().__init__(steps, prediction_type, karras, schedule, eta)
        table = self.schedule.train_sigmas()
        n = self.schedule.num_train_timesteps
        if karras:
            sigmas = karras_sigmas(table[0], table[-1], steps)
            t = np.round(_sigma_to_t(sigmas, table))  # this scheduler feeds integer timesteps
        else:
            t = spaced_timesteps(self.spacing, steps, n, self.schedule.steps_offset, kind="dpm")
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


# The --sampler table: name -> class. `ddim` resolves to keras-cv's on keras-cv sets (resolve_sampler).
SAMPLERS: dict[str, type[Sampler]] = {
    "ddim": Ddim,
    "euler": Euler,
    "euler-a": EulerAncestral,
    "dpm++2m": DpmSolverPlusPlus2M,
    "pndm": Pndm,
    "lcm": Lcm,
    "tcd": Tcd,
    "ddim-kerascv": KerasCvDdim,
}
DEFAULT_SAMPLER = "ddim"
STOCHASTIC = ("euler-a", "lcm", "tcd")  # draw from the run's noise stream between steps
# diffusers scheduler class -> our sampler (what a model's scheduler_config.json can name)
SCHEDULER_CLASSES = {
    "DDIMScheduler": "ddim", "PNDMScheduler": "pndm", "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler-a", "DPMSolverMultistepScheduler": "dpm++2m",
    "LCMScheduler": "lcm", "TCDScheduler": "tcd",
}


def check_sampler(name: str | None, karras: bool) -> None:
    """A UsageError for a name not in SAMPLERS, or Karras sigmas on a sampler with a fixed schedule."""
    if name is None:
        return
    if name not in SAMPLERS:
        raise UsageError(f"--sampler {name!r} is unknown: use one of {', '.join(SAMPLERS)}")
    if karras and not SAMPLERS[name].supports_karras:
        usable = ", ".join(n for n, cls in SAMPLERS.items() if cls.supports_karras)
        raise UsageError(f"--karras does not apply to --sampler {name} (a fixed timestep schedule): "
                         f"drop --karras or pass --sampler {usable}")


def check_spacing(spacing: str | None) -> None:
    if spacing is not None and spacing not in SPACINGS:
        raise UsageError(f"--spacing {spacing!r} is unknown: use one of {', '.join(SPACINGS)}")


def resolve_sampler(name: str, schedule: Schedule, spacing: str | None = None) -> str:
    """The class a name runs on this set: `ddim` is keras-cv's on keras-cv sets unless a spacing is given."""
    if name == "ddim" and schedule.is_keras_cv and spacing is None and schedule.timestep_spacing is None:
        return "ddim-kerascv"
    return name


def make_sampler(name: str, steps: int, prediction_type: str, karras: bool = False,
                 schedule: Schedule | None = None, spacing: str | None = None, eta: float | None = None) -> Sampler:
    """A fresh sampler for one run. `spacing` overrides the schedule's (--spacing)."""
    from dataclasses import replace

    check_sampler(name, karras)
    check_spacing(spacing)
    schedule = schedule or KERAS_CV_SCHEDULE
    name = resolve_sampler(name, schedule, spacing)
    if spacing is not None:
        schedule = replace(schedule, timestep_spacing=spacing)
    if schedule.timestep_spacing is None and schedule.is_keras_cv and name in ("euler", "euler-a", "dpm++2m"):
        schedule = replace(schedule, timestep_spacing="linspace")
    if steps > schedule.num_train_timesteps:
        raise UsageError(f"--steps {steps} is more than the model's {schedule.num_train_timesteps} training "
                         "timesteps: lower --steps")
    return SAMPLERS[name](steps, prediction_type, karras, schedule, eta)


def seeded_noise(starting_noise: np.ndarray) -> NoiseSource:
    """The run's noise stream for stochastic samplers (euler-a, lcm, tcd, ddim with --eta): a
    stream of its own seeded by the run's starting noise (itself drawn from --seed): the seed's
    first draw stays the starting noise, so deterministic images do not change, and a run from
    --noise reproduces the seeded run that drew that noise."""
    digest = hashlib.sha256(np.ascontiguousarray(starting_noise, dtype=np.float32).tobytes()).digest()
    rng = np.random.default_rng(np.random.SeedSequence(int.from_bytes(digest[:16], "little")))
    return lambda shape: rng.standard_normal(shape).astype(np.float32)
