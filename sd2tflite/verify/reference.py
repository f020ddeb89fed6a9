"""The one Keras reference: the Keras components a set was converted from (rebuilt from the weights
its manifest records, or from --weights), and keras-cv's own StableDiffusion pipeline driven by
them. verify and bench both use it. Imports TensorFlow and keras-cv (lazily)."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import replace
from functools import partial

import numpy as np

from ..core.manifest import Manifest
from ..core.registry import FAMILIES, ModelDims


# Components whose parity is measured against a float64 copy of the Keras model. Keras' float32
# GroupNormalization reduces each group in float32; a full-size VAE group holds 512 x 512 x 4 values and
# loses ~1e-3 of the output scale there (v1 shapes, random weights: the float32 decoder is 83.5 dB
# from a float64 one, the image encoder 87.4 dB, while the fp32 .tflite files are 119.7 / 119.0 dB
# from float64). Against float32 Keras, correct fp32 files failed the 90 dB bar.
FLOAT64_PARITY = frozenset({"decoder", "image_encoder"})


class ReferenceModels(dict):
    """component -> float32 Keras model with the set's weights; `float64(component)` builds the
    same model with float64 variables and arithmetic, carrying the same weights."""

    def __init__(self, models: dict, graph_builders: dict):
        super().__init__(models)
        self._graph_builders = graph_builders  # component -> its Keras graph, no weights loaded

    def float64(self, component: str):
        import keras

        before = keras.config.dtype_policy()
        keras.config.set_dtype_policy("float64")
        try:
            twin = self._graph_builders[component]()
        finally:
            keras.config.set_dtype_policy(before)
        # The float32 model's weights (the graph was built without any: no second read of the
        # weights, and a seeded random initialiser would draw other values in float64).
        twin.set_weights([np.asarray(w, np.float64) for w in self[component].get_weights()])
        return twin

    def for_parity(self, component: str):
        """The model verify's parity check compares the component's files with."""
        return self.float64(component) if component in FLOAT64_PARITY else self[component]


def reference_models(manifest: Manifest, weights_text: str | None = None,
                     components: list[str] | None = None) -> ReferenceModels:
    """component -> Keras model with the weights the set was converted from (or from --weights)."""
    from ..convert.weights import build_for_plan, build_with_weights, from_identity, parse_weights, resolve

    from ..convert.checkpoint_source import CheckpointOptions, is_checkpoint

    family = FAMILIES[manifest.family]
    dims = manifest.model_dims
    components = components or manifest.components
    if weights_text:
        # A checkpoint given here is read as the set's was (prediction type, EMA choice, LoRAs).
        recorded = next((w for w in manifest.weights.values() if w.get("kind") == "checkpoint"), None)
        options = CheckpointOptions()
        if recorded is not None and is_checkpoint(weights_text.split(",")[0].strip()):
            options = CheckpointOptions(manifest.prediction_type, recorded.get("ema") is not False,
                                        tuple(f"{lora['path']}:{lora['scale']}" for lora in recorded.get("loras", [])))
        resolved = resolve(parse_weights(weights_text, family, options), family, components)
    else:
        found: dict[str, object] = {}  # one look (and one hash of a multi-GB file) per distinct source
        resolved = {}
        for c in components:
            identity = manifest.weights.get(c, {})
            key = json.dumps(identity, sort_keys=True)
            if identity.get("kind") == "checkpoint" and key in found:
                resolved[c] = replace(found[key], component=c)
            else:
                resolved[c] = found[key] = from_identity(identity, family, c)
    models = {c: build_with_weights(manifest.family, c, dims, resolved[c]) for c in components}
    return ReferenceModels(models, {c: partial(build_for_plan, manifest.family, c, dims, resolved[c]) for c in components})


class KerasCVPipeline:
    """keras-cv's StableDiffusion (v1 and tiny) or StableDiffusionV2 with our Keras components in
    place of its own, so its generate_image runs exactly the weights of the set."""

    def __init__(self, family: str, dims: ModelDims, models: dict, jit_compile: bool = False):
        from keras_cv.models import StableDiffusion, StableDiffusionV2

        self.dims = dims
        with contextlib.redirect_stdout(io.StringIO()):  # keras-cv prints a licence note
            self.model = (StableDiffusionV2 if family == "v2" else StableDiffusion)(
                img_height=dims.img_height, img_width=dims.img_width, jit_compile=jit_compile)
        self.use(models)

    def use(self, models: dict) -> None:
        """Puts these components in (objects with keras-cv's predict_on_batch)."""
        self.model._text_encoder = models["text_encoder"]
        self.model._diffusion_model = models["diffusion"]
        self.model._decoder = models["decoder"]

    def generate(self, tokens: np.ndarray, steps: int, guidance: float, noise: np.ndarray) -> np.ndarray:
        """uint8 images for the token ids of one prompt, from this starting noise."""
        positions = np.arange(self.dims.max_text_length, dtype=np.int32)[None]
        with contextlib.redirect_stdout(io.StringIO()):  # keras-cv's progress bar
            context = self.model.text_encoder.predict_on_batch(
                {"tokens": np.asarray(tokens, np.int32), "positions": positions})
            return np.asarray(self.model.generate_image(
                context, batch_size=self.dims.batch_size, num_steps=steps,
                unconditional_guidance_scale=guidance, diffusion_noise=noise))
