"""verify's checks against Keras: seeded parity inputs, one component against its Keras model,
and whole images against keras-cv's own pipeline. Thresholds come from the recipe table."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from ..core.metrics import parity
from ..core.precisions import RECIPES
from ..core.registry import TIMESTEP_EMBEDDING_DIM, ModelDims
from ..runtime.integrity import Check
from ..runtime.pipeline import GenerateSettings, Pipeline
from ..runtime.schedule import alphas_cumprod, timestep_embedding

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


def parity_inputs(dims: ModelDims, tokenizer, keras: dict, seed: int = 7) -> dict[str, list[dict]]:
    """Seeded inputs per component, computed with the Keras models where a real one is needed
    (contexts from real prompts, latents of real-looking images noised along the schedule)."""
    from ..convert.calibration.synthetic import synthetic_images
    from ..convert.keras_models import call_keras

    rng = np.random.default_rng(seed)
    b, length = dims.batch_size, dims.max_text_length
    positions = np.repeat(np.arange(length, dtype=np.int32)[None], b, axis=0)
    tokens = [np.asarray([tokenizer.tokens_for(p, length)] * b, np.int32) for p in VERIFY_PROMPTS]
    images = synthetic_images(dims, 2, seed)
    inputs: dict[str, list[dict]] = {
        "text_encoder": [{"tokens": t, "positions": positions} for t in tokens],
        "image_encoder": [{"image": image} for image in images],
    }
    contexts = [call_keras(keras["text_encoder"], s)[0] for s in inputs["text_encoder"]] if "text_encoder" in keras \
        else [rng.standard_normal((b, length, dims.context_dim)).astype(np.float32) for _ in tokens]
    clean = [call_keras(keras["image_encoder"], s)[0] for s in inputs["image_encoder"]] if "image_encoder" in keras \
        else [0.8 * rng.standard_normal(dims.latent_shape).astype(np.float32) for _ in images]
    table = alphas_cumprod()
    unet = []
    for i, t in enumerate(VERIFY_TIMESTEPS):
        a = float(table[t])
        eps = rng.standard_normal(dims.latent_shape).astype(np.float32)
        latent = (np.sqrt(a) * clean[i % len(clean)] + np.sqrt(1 - a) * eps).astype(np.float32)
        unet.append({"latent": latent, "timestep_embedding": timestep_embedding(t, b, dims.timestep_dim),
                     "context": contexts[i % len(contexts)]})
    inputs["diffusion"] = unet
    inputs["decoder"] = [{"latent": c} for c in clean] + [{"latent": unet[-1]["latent"]}]
    return inputs


def component_check(component: str, keras_model, litert, samples: list[dict], quant: str) -> Check:
    from .quality import component_figures

    figures = component_figures(keras_model, litert, samples, component)
    min_psnr, min_cosine = RECIPES[quant].tolerance(component)
    return Check("parity", component, figures.passes(min_psnr, min_cosine),
                 f"{figures} (needs PSNR ≥ {min_psnr:g} dB, cosine ≥ {min_cosine:g}; {len(samples)} inputs)",
                 {**asdict(figures), "min_psnr_db": min_psnr, "min_cosine": min_cosine, "samples": len(samples)},
                 component=component)


def end_to_end_check(family: str, keras: dict, litert_pipeline, dims: ModelDims, quant: str, steps: int,
                     seed: int = 11) -> Check:
    """keras-cv's generate_image vs the LiteRT pipeline, same components' weights, same noise. keras-cv
    knows only noise prediction and a 320-d timestep embedding: other sets (v-prediction, imported
    checkpoints of other widths) are compared with sd2tflite's pipeline over the Keras components."""
    from .reference import KerasCVPipeline

    prompt = VERIFY_PROMPTS[0]
    noise = np.random.default_rng(seed).standard_normal(dims.latent_shape).astype(np.float32)
    settings = GenerateSettings(prompt, steps=steps, guidance=GUIDANCE, noise=noise)
    if litert_pipeline.prediction_type == "epsilon" and dims.timestep_dim == TIMESTEP_EMBEDDING_DIM:
        tokens = np.asarray([litert_pipeline.tokenizer.tokens_for(prompt)], np.int32)
        expected = KerasCVPipeline(family, dims, keras).generate(tokens, steps, GUIDANCE, noise)
        reference = "keras-cv's generate_image"
    else:
        from ..convert.calibration.recorded import keras_callable

        callables = {c: keras_callable(keras[c], c) for c in ("text_encoder", "diffusion", "decoder")}
        expected = Pipeline(callables, dims, litert_pipeline.tokenizer, litert_pipeline.prediction_type) \
            .generate(settings).images
        reference = "sd2tflite's pipeline over the Keras components"
    actual = litert_pipeline.generate(settings).images
    figures = parity(np.asarray(expected, np.float64), actual.astype(np.float64), peak=255.0)
    minimum = RECIPES[quant].min_image_psnr_db
    passed = figures.psnr_db >= minimum
    return Check("end-to-end", f"{steps} steps, guidance {GUIDANCE:g}", passed,
                 f"image PSNR {figures.psnr_db:.1f} dB (needs ≥ {minimum:g}), max |pixel diff| "
                 f"{figures.max_abs:.0f}, mean {figures.mean_abs:.2f} (against {reference})",
                 {**asdict(figures), "min_image_psnr_db": minimum, "steps": steps, "prompt": prompt,
                  "reference": reference})
