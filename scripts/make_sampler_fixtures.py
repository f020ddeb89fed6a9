"""Makes the sampler fixtures in tests/data/samplers/: diffusers' own scheduler loops, recorded.

Runs in a separate venv with torch + diffusers (never the project's own; torch stays out of CI):

    python3 -m venv /work/refvenv
    /work/refvenv/bin/pip install torch==2.13.0 diffusers numpy
    /work/refvenv/bin/python scripts/make_sampler_fixtures.py [OUT_DIR]

For each of diffusers' EulerDiscreteScheduler, EulerAncestralDiscreteScheduler and
DPMSolverMultistepScheduler (dpmsolver++, order 2: its defaults), configured from SD 1.5's
scheduler_config.json as a diffusers user swapping schedulers gets them (`from_config`), with and
without Karras sigmas, epsilon and v_prediction, at 8 and 25 steps, it runs the pipeline's loop
(init_noise_sigma, scale_model_input, step) on a tiny latent with a fake "model": a fixed numpy
function of the scaled input and the timestep. One .npz per case records the starting noise, the
timesteps, the sigmas, the model input and output at every step, the latents after every step and,
for Euler ancestral, the noise drawn at every step. tests/test_samplers.py feeds our samplers the
recorded outputs and noise and compares the rest.

EulerAncestralDiscreteScheduler has no Karras option: its Karras case runs its own `step` on the
Karras sigmas and timesteps that EulerDiscreteScheduler(use_karras_sigmas=True) makes.
Latents are NCHW as diffusers has them; every sampler update is elementwise, so our NHWC runtime
reads them unchanged. Deterministic (fixed seeds).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import diffusers
from diffusers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from diffusers.schedulers import scheduling_euler_ancestral_discrete

# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json (the 0.17 re-save). It has no
# `timestep_spacing`: a scheduler made from it takes its own class's default, "linspace".
SD15_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.17.0.dev0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995, "num_train_timesteps": 1000, "prediction_type": "epsilon",
    "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "thresholding": False, "trained_betas": None,
}
SAMPLERS = {"euler": EulerDiscreteScheduler, "euler-a": EulerAncestralDiscreteScheduler,
            "dpm++2m": DPMSolverMultistepScheduler}
PREDICTION_TYPES = ("epsilon", "v_prediction")
STEPS = (8, 25)
SHAPE = (1, 4, 2, 3)  # small: the fixtures are committed

_rng = np.random.default_rng(20240613)
TARGET = _rng.uniform(-1, 1, size=SHAPE)  # the "image" latent the fake model steers towards
MIX = _rng.normal(size=(SHAPE[1], SHAPE[1])) / 2  # channel mixing of the fake model's error term
PHASE = _rng.uniform(0, 2 * np.pi, size=SHAPE[1])
_BETAS = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
ALPHAS_CUMPROD = np.cumprod(1.0 - _BETAS)


def fake_model(model_input: np.ndarray, timestep: float, prediction_type: str) -> np.ndarray:
    """Deterministic stand-in for a guided UNet: the exact noise for denoising towards TARGET (so
    latents end at a real model's scale, about 1, where the schedule's small sigmas matter), plus
    an error term that mixes channels and depends on t. `model_input` is the variance-preserving
    latent (what scale_model_input gives every one of these schedulers)."""
    x = model_input.astype(np.float64)
    alpha_bar = np.interp(timestep, np.arange(1000), ALPHAS_CUMPROD)
    a, s = np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)
    mixed = np.einsum("oc,bchw->bohw", MIX, x)
    eps = (x - a * TARGET) / s + 0.3 * np.tanh(mixed + 0.5 * np.sin(timestep / 150.0 + PHASE)[None, :, None, None])
    if prediction_type == "v_prediction":
        x0 = (x - s * eps) / a
        return (a * eps - s * x0).astype(np.float32)
    return eps.astype(np.float32)


def make_scheduler(name: str, prediction_type: str, karras: bool, steps: int):
    cls = SAMPLERS[name]
    if name == "euler-a":
        scheduler = cls.from_config(SD15_SCHEDULER_CONFIG, prediction_type=prediction_type)
        scheduler.set_timesteps(steps)
        if karras:
            donor = EulerDiscreteScheduler.from_config(SD15_SCHEDULER_CONFIG, prediction_type=prediction_type,
                                                       use_karras_sigmas=True)
            donor.set_timesteps(steps)
            scheduler.sigmas, scheduler.timesteps = donor.sigmas.clone(), donor.timesteps.clone()
    else:
        scheduler = cls.from_config(SD15_SCHEDULER_CONFIG, prediction_type=prediction_type, use_karras_sigmas=karras)
        scheduler.set_timesteps(steps)
    assert scheduler.config.timestep_spacing == "linspace", scheduler.config.timestep_spacing
    if name == "dpm++2m":
        assert scheduler.config.algorithm_type == "dpmsolver++" and scheduler.config.solver_order == 2
    return scheduler


def run_case(name: str, prediction_type: str, karras: bool, steps: int, seed: int) -> dict[str, np.ndarray]:
    scheduler = make_scheduler(name, prediction_type, karras, steps)
    drawn: list[np.ndarray] = []
    real_randn = scheduling_euler_ancestral_discrete.randn_tensor

    def recording_randn(*args, **kwargs):
        noise = real_randn(*args, **kwargs)
        drawn.append(noise.numpy().copy())
        return noise

    scheduling_euler_ancestral_discrete.randn_tensor = recording_randn
    try:
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(SHAPE, generator=generator, dtype=torch.float32)
        latents = noise * scheduler.init_noise_sigma
        inputs, outputs, after = [], [], []
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(latents, t)
            output = fake_model(model_input.numpy(), float(t), prediction_type)
            latents = scheduler.step(torch.from_numpy(output), t, latents, generator=generator).prev_sample
            inputs.append(model_input.numpy())
            outputs.append(output)
            after.append(latents.numpy())
    finally:
        scheduling_euler_ancestral_discrete.randn_tensor = real_randn
    case = {
        "noise": noise.numpy(),
        "init_noise_sigma": np.float32(scheduler.init_noise_sigma),
        "timesteps": scheduler.timesteps.numpy(),
        "sigmas": scheduler.sigmas.numpy(),
        "model_inputs": np.stack(inputs),
        "model_outputs": np.stack(outputs),
        "latents": np.stack(after),
    }
    if name == "euler-a":
        assert len(drawn) == steps
        case["step_noise"] = np.stack(drawn)
    else:
        assert not drawn
    return case


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = 0
    for name in SAMPLERS:
        for prediction_type in PREDICTION_TYPES:
            for karras in (False, True):
                for steps in STEPS:
                    seed += 1
                    case = run_case(name, prediction_type, karras, steps, seed)
                    file = out_dir / f"{name}-{prediction_type}-{'karras' if karras else 'plain'}-{steps}.npz"
                    np.savez_compressed(file, **case)
    versions = {
        "torch": torch.__version__, "diffusers": diffusers.__version__, "numpy": np.__version__,
        "command": "/work/refvenv/bin/python scripts/make_sampler_fixtures.py",
        "scheduler_config": "runwayml/stable-diffusion-v1-5 scheduler_config.json via from_config "
                            "(timestep_spacing: linspace, the schedulers' default)",
    }
    (out_dir / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")
    total = sum(f.stat().st_size for f in out_dir.iterdir())
    print(f"{len(list(out_dir.glob('*.npz')))} cases, {total / 1024:.1f} KiB in {out_dir}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "tests/data/samplers")
