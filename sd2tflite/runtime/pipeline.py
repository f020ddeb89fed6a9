"""Text-to-image, image-to-image and inpainting over any four component callables. No TensorFlow.

With the default ddim sampler the maths is keras-cv's `StableDiffusion.generate_image` step for
step (schedule, guidance, update rule, decode and clipping), so the same starting noise gives the
same image as keras-cv running the same weights; `verify` measures exactly that. The other samplers
(samplers.py) change only the schedule, the UNet input scaling and the update. A component is a
callable taking its inputs by name and returning a dict of named outputs: the LiteRT runtime
provides them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from ..core.registry import PREDICTION_TYPES, ModelDims
from ..core.errors import NumericsError, UsageError
from .samplers import DEFAULT_SAMPLER, check_sampler, make_sampler, seeded_noise
from .samples import starting_noise
from .schedule import timestep_embedding
from .tokenizer import END_TOKEN, ClipTokenizer

Component = Callable[..., Mapping[str, np.ndarray]]

# keras-cv's _UNCONDITIONAL_TOKENS: the empty prompt, padded with end-of-text.
UNCONDITIONAL_PROMPT = ""


@dataclass(frozen=True)
class GenerateSettings:
    prompt: str
    steps: int = 25
    guidance: float = 7.5
    seed: int | None = 0
    negative_prompt: str | None = None
    noise: np.ndarray | None = None  # starting latent noise; replaces the seed
    image: np.ndarray | None = None  # (h, w, 3) float in [-1, 1]: image-to-image / inpainting
    mask: np.ndarray | None = None  # (h, w) in [0, 1]: 1 = repaint, 0 = keep
    strength: float | None = None  # share of the schedule to run from the image (default 1.0)
    sampler: str = DEFAULT_SAMPLER  # a name in samplers.SAMPLERS
    karras: bool = False  # Karras sigmas (sigma-space samplers only)

    def __post_init__(self) -> None:
        check_sampler(self.sampler, self.karras)  # refused where the settings are made, before any loading


@dataclass
class PipelineOutput:
    images: np.ndarray  # (batch, h, w, 3) uint8
    latents: np.ndarray  # final latents, before decoding
    noise: np.ndarray  # the starting noise actually used


class Pipeline:
    def __init__(self, components: Mapping[str, Component], dims: ModelDims, tokenizer: ClipTokenizer,
                 prediction_type: str = "epsilon"):
        if prediction_type not in PREDICTION_TYPES:
            raise UsageError(f"prediction type {prediction_type!r} is unknown: this sd2tflite runs "
                             f"{', '.join(PREDICTION_TYPES)}")
        if END_TOKEN >= dims.vocab_size:
            raise UsageError(f"the set's text encoder knows {dims.vocab_size:,} tokens, CLIP's tokenizer uses ids up "
                             f"to {END_TOKEN:,}: convert a checkpoint whose text encoder has CLIP's vocabulary")
        self.components = components
        self.dims = dims
        self.tokenizer = tokenizer
        self.prediction_type = prediction_type

    # ----------------------------------------------------------------- pieces keras-cv has too

    def _run(self, component: str, output: str, where: str = "", **inputs) -> np.ndarray:
        """One component call; NaN or Inf in its output stops the run, naming the component (a
        broken conversion or an int8 overflow would otherwise become a black image)."""
        result = np.asarray(self.components[component](**inputs)[output])
        if not np.isfinite(result).all():
            bad = int(np.size(result) - np.count_nonzero(np.isfinite(result)))
            raise NumericsError(f"the {component} output holds {bad:,} NaN/Inf values{where}: the set is "
                                "broken or overflows; run sd2tflite verify on it")
        return result

    def encode_text(self, prompt: str) -> np.ndarray:
        b, length = self.dims.batch_size, self.dims.max_text_length
        tokens = np.asarray([self.tokenizer.tokens_for(prompt, length)] * b, dtype=np.int32)
        positions = np.repeat(np.arange(length, dtype=np.int32)[None], b, axis=0)
        return self._run("text_encoder", "context", tokens=tokens, positions=positions)

    def predict_noise(self, latent, t_emb, context, where: str = "") -> np.ndarray:
        return self._run("diffusion", "noise_pred", where, latent=latent, timestep_embedding=t_emb, context=context)

    def decode(self, latent: np.ndarray) -> np.ndarray:
        decoded = self._run("decoder", "image", latent=latent)
        return np.clip((decoded + 1) / 2 * 255, 0, 255).astype("uint8")

    def encode_image(self, image: np.ndarray) -> np.ndarray:
        batch = np.repeat(image[None].astype(np.float32), self.dims.batch_size, axis=0)
        return self._run("image_encoder", "latent", image=batch)

    def starting_noise(self, settings: GenerateSettings) -> np.ndarray:
        shape = self.dims.latent_shape
        if settings.noise is None:
            return starting_noise(self.dims, settings.seed)
        noise = np.asarray(settings.noise, dtype=np.float32)
        if noise.shape == shape[1:]:
            noise = np.repeat(noise[None], shape[0], axis=0)  # one noise for every image, as keras-cv
        if noise.shape != shape:
            raise UsageError(
                f"the noise has shape {list(noise.shape)}, this set needs {list(shape)} "
                f"(or {list(shape[1:])}): save a matching array"
            )
        if not np.isfinite(noise).all():
            raise UsageError("the noise holds NaN or Inf values: save an array of finite numbers")
        return noise

    def _done_with(self, component: str) -> None:
        """Tells components that can unload (LiteRTComponents) that this run no longer needs one:
        the UNet is done before the decoder starts, so the two never share the memory."""
        release = getattr(self.components, "release", None)
        if release is not None:
            release(component)

    # ----------------------------------------------------------------- the loop

    def generate(self, settings: GenerateSettings, on_step: Callable[[int, int], None] | None = None) -> PipelineOutput:
        if settings.steps < 1:
            raise UsageError(f"--steps {settings.steps} must be at least 1")
        strength = settings.strength if settings.strength is not None else 1.0
        if not 0.0 < strength <= 1.0:
            raise UsageError(f"--strength {strength} must be in (0, 1]")
        if settings.mask is not None and settings.image is None:
            raise UsageError("a mask needs an image: pass --image with --mask")
        if not math.isfinite(settings.guidance):
            raise UsageError(f"--guidance {settings.guidance} is not a finite number: use e.g. 7.5")

        context = self.encode_text(settings.prompt)
        unconditional = self.encode_text(settings.negative_prompt or UNCONDITIONAL_PROMPT)
        self._done_with("text_encoder")
        noise = self.starting_noise(settings)
        sampler = make_sampler(settings.sampler, settings.steps, self.prediction_type, settings.karras)
        steps = len(sampler.timesteps)

        # Image-to-image and inpainting start part-way down the schedule from the noised image
        # (diffusers' img2img: at the noise level of the first step run, for every sampler).
        start = 0
        known = None
        if settings.image is not None:
            known = self.encode_image(settings.image)
            self._done_with("image_encoder")
            start = steps - max(1, round(steps * strength))
            if strength >= 1.0 and settings.mask is not None:
                latent = sampler.initial_latent(noise)  # full inpainting: the masked region starts from pure noise
            else:
                latent = sampler.add_noise(known, noise, start).astype(np.float32)
        else:
            latent = sampler.initial_latent(noise)
        repaint = latent_mask(settings.mask, self.dims) if settings.mask is not None else None
        noise_source = seeded_noise(noise)  # ancestral samplers only

        total = steps - start
        for done, index in enumerate(range(start, steps), 1):
            where = f" at step {done} of {total}"
            model_input = sampler.scale_input(latent, index)
            t_emb = timestep_embedding(sampler.timesteps[index], self.dims.batch_size, self.dims.timestep_dim)
            unconditional_eps = self.predict_noise(model_input, t_emb, unconditional, where)
            conditional_eps = self.predict_noise(model_input, t_emb, context, where)
            output = unconditional_eps + settings.guidance * (conditional_eps - unconditional_eps)
            latent = sampler.step(output, index, latent, noise_source)
            if repaint is not None:
                # Outside the mask, follow the input image noised to the level after this step.
                known_t = sampler.add_noise(known, noise, index + 1)
                latent = repaint * latent + (1.0 - repaint) * known_t
            latent = latent.astype(np.float32)
            if on_step:
                on_step(done, total)

        self._done_with("diffusion")
        images = self.decode(latent)
        self._done_with("decoder")
        if settings.mask is not None:
            # The VAE does not reproduce pixels exactly: keep the input outside the mask.
            original = np.clip((settings.image + 1) / 2 * 255, 0, 255).round().astype("uint8")
            keep = settings.mask[None, :, :, None] < 0.5
            images = np.where(keep, original[None], images)
        return PipelineOutput(images=images, latents=latent, noise=noise)


def latent_mask(mask: np.ndarray, dims: ModelDims) -> np.ndarray:
    """An inpainting mask (h, w) at latent resolution, (1, h/8, w/8, 1): a latent cell is
    repainted if any pixel of its 8x8 block is."""
    h, w = dims.latent_shape[1:3]
    blocks = mask.reshape(h, mask.shape[0] // h, w, mask.shape[1] // w).max(axis=(1, 3))
    return blocks[None, :, :, None].astype(np.float32)
