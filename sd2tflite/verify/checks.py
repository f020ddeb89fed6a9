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
from ..runtime.samples import pipeline_samples, starting_noise

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
    """Seeded inputs per component (runtime/samples.py), with the Keras models' contexts of real
    prompts and latents of real-looking images where those models are at hand."""
    from ..convert.keras_models import call_keras

    def encoder(component: str):
        if component not in keras:
            return None
        return lambda sample: call_keras(keras[component], sample)[0]

    from ..convert.calibration.recorded import with_tiny_vae

    token_rows = [tokenizer.tokens_for(prompt, dims.max_text_length) for prompt in VERIFY_PROMPTS]
    return with_tiny_vae(pipeline_samples(dims, token_rows, VERIFY_TIMESTEPS, seed,
                            encode_text=encoder("text_encoder"), encode_image=encoder("image_encoder")))


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
    noise = starting_noise(dims, seed)
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
