"""`sd2tflite verify`: proof that a converted set computes what the Keras model computes.

Three groups of checks, all run and all reported (failures are collected, not raised):
  integrity    files vs manifest (integrity.py; LiteRT only)
  parity       each component (the UNet as its chained parts) vs the Keras component built from
               the same weights, on seeded inputs that look like the pipeline's
  end-to-end   the LiteRT pipeline vs keras-cv's own `StableDiffusion.generate_image` fed the same
               Keras components and the same starting noise
Thresholds come from the recipe table (quant.py). TensorFlow is imported only for the Keras side.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .calibration import synthetic_images
from .components import FAMILIES, ModelDims
from .integrity import Check, check_integrity
from .manifest import MANIFEST_NAME, Manifest
from .recording import PIPELINE_COMPONENTS

# Prompts for parity and end-to-end inputs: real token sequences, short and long, and the empty
# prompt (the unconditional branch).
VERIFY_PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "",
    "a watercolor painting of a lighthouse on a cliff at dusk, soft warm light, highly detailed",
)
# UNet inputs at these noise levels (timesteps of the 1000-step schedule).
VERIFY_TIMESTEPS = (999, 500, 50)
GUIDANCE = 7.5


@dataclass(frozen=True)
class Parity:
    max_abs: float
    mean_abs: float
    psnr_db: float  # over the reference's value range unless a peak is given
    cosine: float
    snr_db: float = float("inf")  # reference power over error power

    def passes(self, min_psnr_db: float, min_cosine: float) -> bool:
        return self.psnr_db >= min_psnr_db and self.cosine >= min_cosine

    def __str__(self) -> str:
        return (f"PSNR {self.psnr_db:.1f} dB, cosine {self.cosine:.6f}, "
                f"max |err| {self.max_abs:.3g}, mean |err| {self.mean_abs:.3g}")


def parity(reference: np.ndarray, actual: np.ndarray, peak: float | None = None) -> Parity:
    ref = np.asarray(reference, dtype=np.float64).ravel()
    out = np.asarray(actual, dtype=np.float64).ravel()
    if ref.shape != out.shape:
        raise ValueError(f"shape mismatch: {np.shape(reference)} vs {np.shape(actual)}")
    err = out - ref
    rmse = float(np.sqrt(np.mean(err**2)))
    peak = peak or float(ref.max() - ref.min()) or 1.0
    psnr = float("inf") if rmse == 0 else float(20.0 * np.log10(peak / rmse))
    denom = float(np.linalg.norm(ref) * np.linalg.norm(out))
    cosine = float(ref @ out / denom) if denom else float(rmse == 0)
    signal = float(np.mean(ref**2))
    snr = float("inf") if rmse == 0 else float(10.0 * np.log10(max(signal, 1e-30) / rmse**2))
    return Parity(float(np.abs(err).max()), float(np.abs(err).mean()), psnr, cosine, snr)


@dataclass
class VerifyReport:
    directory: str
    manifest: Manifest | None
    checks: list[Check] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)  # calibrated precisions: quality.quality_report
    manifest_sha256: str | None = None  # ties the report to the exact files it checked

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_json(self) -> dict:
        m = self.manifest
        return {
            "directory": self.directory,
            "family": m.family if m else None,
            "quant": m.quant if m else None,
            "dims": m.dims if m else None,
            "passed": self.passed,
            "manifest_sha256": self.manifest_sha256,
            "settings": self.settings,
            "checks": [c.to_json() for c in self.checks],
            "quality": self.quality,
        }

    def table(self) -> str:
        m = self.manifest
        title = f"{m.family} {m.quant}, {m.dims['img_width']}x{m.dims['img_height']}" if m else "no manifest"
        lines = [f"verify {self.directory} ({title})"]
        for c in self.checks:
            lines.append(f"  {'✓' if c.passed else '✗'} {c.group:10s} {c.name:26s} {c.detail}")
        if self.quality:
            from .quality import describe

            lines.append("  int8 quality against float Keras on held-out pipeline inputs (report):")
            lines.extend(describe(self.quality))
        failed = sum(not c.passed for c in self.checks)
        lines.append("PASSED" if self.passed else f"FAILED: {failed} of {len(self.checks)} checks")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- inputs


def parity_inputs(dims: ModelDims, tokenizer, keras: dict, seed: int = 7) -> dict[str, list[dict]]:
    """Seeded inputs per component, computed with the Keras models where a real one is needed
    (contexts from real prompts, latents of real-looking images noised along the schedule)."""
    from .schedule import alphas_cumprod, timestep_embedding

    rng = np.random.default_rng(seed)
    b, length = dims.batch_size, dims.max_text_length
    positions = np.repeat(np.arange(length, dtype=np.int32)[None], b, axis=0)
    tokens = [np.asarray([tokenizer.tokens_for(p, length)] * b, np.int32) for p in VERIFY_PROMPTS]
    images = synthetic_images(dims, 2, seed)
    inputs: dict[str, list[dict]] = {
        "text_encoder": [{"tokens": t, "positions": positions} for t in tokens],
        "image_encoder": [{"image": image} for image in images],
    }
    contexts = [run_keras(keras["text_encoder"], s) for s in inputs["text_encoder"]] if "text_encoder" in keras \
        else [rng.standard_normal((b, length, dims.context_dim)).astype(np.float32) for _ in tokens]
    clean = [run_keras(keras["image_encoder"], s) for s in inputs["image_encoder"]] if "image_encoder" in keras \
        else [0.8 * rng.standard_normal(dims.latent_shape).astype(np.float32) for _ in images]
    table = alphas_cumprod()
    unet = []
    for i, t in enumerate(VERIFY_TIMESTEPS):
        a = float(table[t])
        eps = rng.standard_normal(dims.latent_shape).astype(np.float32)
        latent = (np.sqrt(a) * clean[i % len(clean)] + np.sqrt(1 - a) * eps).astype(np.float32)
        unet.append({"latent": latent, "timestep_embedding": timestep_embedding(t, b),
                     "context": contexts[i % len(contexts)]})
    inputs["diffusion"] = unet
    inputs["decoder"] = [{"latent": c} for c in clean] + [{"latent": unet[-1]["latent"]}]
    return inputs


def run_keras(model, sample: dict) -> np.ndarray:
    """Runs a Keras component on named inputs, in the model's own input order."""
    if len(model.inputs) == 1:
        return np.asarray(model(next(iter(sample.values())), training=False))
    return np.asarray(model([sample[t.name.split(":")[0]] for t in model.inputs], training=False))


# ----------------------------------------------------------------------------- checks


def component_check(component: str, keras_model, litert, samples: list[dict], quant: str) -> Check:
    from .quality import component_figures
    from .quant import RECIPES

    figures = component_figures(keras_model, litert, samples, component)
    min_psnr, min_cosine = RECIPES[quant].tolerance(component)
    return Check("parity", component, figures.passes(min_psnr, min_cosine),
                 f"{figures} (needs PSNR ≥ {min_psnr:g} dB, cosine ≥ {min_cosine:g}; {len(samples)} inputs)",
                 {**asdict(figures), "min_psnr_db": min_psnr, "min_cosine": min_cosine, "samples": len(samples)})


def end_to_end_check(keras: dict, litert_pipeline, dims: ModelDims, quant: str, steps: int, seed: int = 11) -> Check:
    """keras-cv's generate_image vs the LiteRT pipeline, same components' weights, same noise."""
    from keras_cv.models import StableDiffusion

    from .pipeline import GenerateSettings
    from .quant import RECIPES

    prompt = VERIFY_PROMPTS[0]
    noise = np.random.default_rng(seed).standard_normal(dims.latent_shape).astype(np.float32)
    tokens = np.asarray([litert_pipeline.tokenizer.tokens_for(prompt)], np.int32)
    with contextlib.redirect_stdout(io.StringIO()):  # keras-cv prints a licence note and a progress bar
        reference = StableDiffusion(img_height=dims.img_height, img_width=dims.img_width, jit_compile=False)
        reference._text_encoder = keras["text_encoder"]
        reference._diffusion_model = keras["diffusion"]
        reference._decoder = keras["decoder"]
        context = reference.text_encoder.predict_on_batch(
            {"tokens": tokens, "positions": np.arange(dims.max_text_length, dtype=np.int32)[None]})
        expected = reference.generate_image(
            context, batch_size=dims.batch_size, num_steps=steps,
            unconditional_guidance_scale=GUIDANCE, diffusion_noise=noise)
    actual = litert_pipeline.generate(GenerateSettings(prompt, steps=steps, guidance=GUIDANCE, noise=noise)).images
    figures = parity(np.asarray(expected, np.float64), actual.astype(np.float64), peak=255.0)
    minimum = RECIPES[quant].min_image_psnr_db
    passed = figures.psnr_db >= minimum
    return Check("end-to-end", f"{steps} steps, guidance {GUIDANCE:g}", passed,
                 f"image PSNR {figures.psnr_db:.1f} dB (needs ≥ {minimum:g}), max |pixel diff| "
                 f"{figures.max_abs:.0f}, mean {figures.mean_abs:.2f}",
                 {**asdict(figures), "min_image_psnr_db": minimum, "steps": steps, "prompt": prompt})


def reference_models(manifest: Manifest, weights_text: str | None) -> dict:
    """The Keras components the set was converted from (or from --weights)."""
    from .weights import build_with_weights, from_identity, parse_weights, resolve

    family = FAMILIES[manifest.family]
    dims = ModelDims(**manifest.dims)
    components = manifest.components
    if weights_text:
        resolved = resolve(parse_weights(weights_text, family), family, components)
    else:
        resolved = {c: from_identity(manifest.weights.get(c, {}), family, c) for c in components}
    return {c: build_with_weights(manifest.family, c, dims, resolved[c]) for c in components}


def verify(directory: Path, weights: str | None = None, vocab: Path | None = None, steps: int = 3,
           end_to_end: bool = True, threads: int | None = None,
           on_stage: Callable[[str], None] = lambda text: None) -> VerifyReport:
    from .errors import UsageError
    from .pipeline import Pipeline
    from .quant import RECIPES
    from .runtime import LiteRTComponents
    from .tokenizer import load_tokenizer

    if steps < 1:
        raise UsageError(f"--steps {steps} must be at least 1")
    report = VerifyReport(str(directory), None, settings={
        "steps": steps, "guidance": GUIDANCE, "weights": weights or "from the manifest",
        "prompts": list(VERIFY_PROMPTS), "timesteps": list(VERIFY_TIMESTEPS)})
    on_stage("integrity: sizes, sha256, signatures")
    manifest, checks = check_integrity(directory)
    report.manifest = manifest
    if manifest is not None:
        from .weights import sha256_file

        report.manifest_sha256 = sha256_file(Path(directory) / MANIFEST_NAME)
    report.checks += checks
    if manifest is None:
        return report
    if manifest.family not in FAMILIES:
        report.checks.append(Check("parity", "model family", False,
                                   f"unknown family {manifest.family!r}: this sd2tflite cannot rebuild it"))
        return report
    broken = {a.component for a in manifest.artifacts
              for c in checks if c.name == a.path and not c.passed}
    broken |= {"diffusion"} if any(c.name == "parts and wiring" and not c.passed for c in checks) else set()

    on_stage("building the Keras reference models")
    dims = ModelDims(**manifest.dims)
    keras = reference_models(manifest, weights)
    tokenizer = load_tokenizer(manifest.family, vocab)
    litert = LiteRTComponents(Path(directory), manifest, threads)
    samples = parity_inputs(dims, tokenizer, keras)
    for component in manifest.components:
        if component in broken:
            report.checks.append(Check("parity", component, False, "not run: its files do not match the manifest"))
            continue
        on_stage(f"parity: {component}")
        report.checks.append(component_check(component, keras[component], litert[component],
                                             samples[component], manifest.quant))
    pipeline_parts = set(PIPELINE_COMPONENTS)
    if RECIPES[manifest.quant].needs_calibration and pipeline_parts <= set(manifest.components) - broken:
        from .quality import held_out_inputs, quality_report

        on_stage("int8 quality: recording held-out inputs from the Keras pipeline")
        report.quality = quality_report(manifest, keras, litert, held_out_inputs(keras, dims, tokenizer))
    if end_to_end:
        needed = pipeline_parts
        missing = needed - set(manifest.components)
        if missing or needed & broken:
            report.checks.append(Check("end-to-end", "pipeline", False,
                                       f"not run: {', '.join(sorted(missing or needed & broken))} "
                                       f"{'missing from the set' if missing else 'do not match the manifest'}"))
        else:
            on_stage(f"end to end: keras-cv vs LiteRT, {steps} steps")
            pipeline = Pipeline(litert, dims, tokenizer)
            report.checks.append(end_to_end_check(keras, pipeline, dims, manifest.quant, steps))
    return report
