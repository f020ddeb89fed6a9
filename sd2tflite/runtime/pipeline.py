"""Text-to-image, image-to-image and inpainting over any four component callables. No TensorFlow.

On a keras-cv set the default (ddim) is keras-cv's `StableDiffusion.generate_image` step for step
(schedule, guidance, update rule, decode and truncation to 8 bits), so the same starting noise gives
the same image as keras-cv running the same weights; `verify` measures exactly that. On a set
imported from a diffusers checkpoint the defaults are the model's own scheduler (schedule.Schedule,
recorded in the manifest) and diffusers' rounding to 8 bits, so the same starting noise gives the
image diffusers' StableDiffusionPipeline gives. The samplers (samplers.py) change only the schedule,
the UNet input scaling and the update. Guidance <= 1 skips the unconditional UNet call (diffusers'
rule); UNets with a guidance embedding (LCM) take the guidance through it and are never run twice
per step. A component is a callable taking its inputs by name and returning a dict of named
outputs: the LiteRT runtime provides them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Mapping

import numpy as np

from ..core.registry import PREDICTION_TYPES, ModelDims
from ..core.errors import NumericsError, UsageError
from .samplers import DEFAULT_SAMPLER, check_sampler, check_spacing, make_sampler, seeded_noise
from .samples import starting_noise
from .schedule import Schedule, guidance_scale_embedding, timestep_embedding
from .tokenizer import END_TOKEN, ClipTokenizer

Component = Callable[..., Mapping[str, np.ndarray]]

# keras-cv's _UNCONDITIONAL_TOKENS: the empty prompt, padded with end-of-text.
UNCONDITIONAL_PROMPT = ""


DEFAULT_STEPS, DEFAULT_GUIDANCE = 25, 7.5
# LCM / TCD without recorded recommendations: diffusers' LatentConsistencyModelPipeline's 4 steps;
# guidance 8.5 through an LCM UNet's embedding (that pipeline's default), else 1 (no CFG; LCM-LoRA).
FEW_STEP_DEFAULTS = {"steps": 4, "embedded_guidance": 8.5, "guidance": 1.0}
PIXEL_RULES = ("truncate", "round")


@dataclass(frozen=True)
class GenerateSettings:
    """What to draw. None for steps / guidance / sampler: the set's recommendation (its manifest's
    scheduler record), else 25 steps, guidance 7.5, ddim."""

    prompt: str
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = 0
    negative_prompt: str | None = None
    noise: np.ndarray | None = None  # starting latent noise; replaces the seed
    image: np.ndarray | None = None  # (h, w, 3) float in [-1, 1]: image-to-image / inpainting
    mask: np.ndarray | None = None  # (h, w) in [0, 1]: 1 = repaint, 0 = keep
    strength: float | None = None  # share of the schedule to run from the image (default 1.0)
    sampler: str | None = None  # a name in samplers.SAMPLERS; None: the set's own scheduler
    karras: bool = False  # Karras sigmas (sigma-space samplers only)
    spacing: str | None = None  # timestep spacing leading | trailing | linspace; None: the set's
    eta: float | None = None  # tcd's gamma (default 0.3), ddim's eta (default 0)

    def __post_init__(self) -> None:
        # refused where the settings are made, before any loading
        check_sampler(self.sampler, self.karras)  # no sampler: the set's, checked with --karras in Pipeline.resolve
        check_spacing(self.spacing)
        if self.steps is not None and self.steps < 1:
            raise UsageError(f"--steps {self.steps} must be at least 1")
        if self.guidance is not None and not math.isfinite(self.guidance):
            raise UsageError(f"--guidance {self.guidance} is not a finite number: use e.g. 7.5")


@dataclass
class PipelineOutput:
    images: np.ndarray  # (batch, h, w, 3) uint8
    latents: np.ndarray  # final latents, before decoding
    noise: np.ndarray  # the starting noise actually used
    settings: GenerateSettings | None = None  # with the set's defaults filled in (what ran)


class Pipeline:
    def __init__(self, components: Mapping[str, Component], dims: ModelDims, tokenizer: ClipTokenizer,
                 prediction_type: str = "epsilon", schedule: Schedule | None = None, pixels: str = "truncate"):
        if prediction_type not in PREDICTION_TYPES:
            raise UsageError(f"prediction type {prediction_type!r} is unknown: this sd2tflite runs "
                             f"{', '.join(PREDICTION_TYPES)}")
        if END_TOKEN >= dims.vocab_size:
            raise UsageError(f"the set's text encoder knows {dims.vocab_size:,} tokens, CLIP's tokenizer uses ids up "
                             f"to {END_TOKEN:,}: convert a checkpoint whose text encoder has CLIP's vocabulary")
        if pixels not in PIXEL_RULES:
            raise UsageError(f"pixel rule {pixels!r} is unknown: the manifest says truncate or round; convert again")
        self.components = components
        self.dims = dims
        self.tokenizer = tokenizer
        self.prediction_type = prediction_type
        self.schedule = schedule or Schedule()
        self.pixels = pixels
        # LCM UNets: the width of the guidance embedding their first part takes (0: none)
        self.guidance_embedding_dim = int(getattr(dims, "guidance_embedding_dim", 0) or 0)

    @classmethod
    def for_manifest(cls, components: Mapping[str, Component], manifest, tokenizer: ClipTokenizer) -> "Pipeline":
        """A pipeline with everything the set's manifest says: shapes, prediction type, the model's
        own scheduler and its pixel rule."""
        return cls(components, manifest.model_dims, tokenizer, manifest.prediction_type,
                   Schedule.from_json(getattr(manifest, "scheduler", None)), getattr(manifest, "pixels", "truncate"))

    def resolve(self, settings: GenerateSettings) -> GenerateSettings:
        """The settings with the set's defaults filled in: --sampler / --steps / --guidance, else the
        recorded recommendation, else ddim / 25 / 7.5 (4 steps for lcm / tcd)."""
        schedule = self.schedule
        sampler = settings.sampler or schedule.sampler or DEFAULT_SAMPLER
        few = sampler in ("lcm", "tcd")
        steps = settings.steps or schedule.steps or (FEW_STEP_DEFAULTS["steps"] if few else DEFAULT_STEPS)
        guidance = settings.guidance if settings.guidance is not None else schedule.guidance
        if guidance is None:
            guidance = (FEW_STEP_DEFAULTS["embedded_guidance"] if self.guidance_embedding_dim else
                        FEW_STEP_DEFAULTS["guidance"]) if few else DEFAULT_GUIDANCE
        check_sampler(sampler, settings.karras)
        return replace(settings, sampler=sampler, steps=int(steps), guidance=float(guidance))

    def sampler_notes(self, settings: GenerateSettings) -> list[str]:
        """What a user should know about the sampler asked for on this model (one line each)."""
        notes = []
        asked = settings.sampler
        if asked in ("lcm", "tcd") and self.schedule.sampler not in ("lcm", "tcd") and not self.guidance_embedding_dim:
            recommended = self.schedule.sampler or "ddim"
            notes.append(f"--sampler {asked} on a model not distilled for it: its scheduler config recommends "
                         f"{recommended}; expect a blurry image unless an LCM/TCD LoRA is merged")
        return notes

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

    def predict_noise(self, latent, t_emb, context, where: str = "", guidance_embedding=None) -> np.ndarray:
        extra = {} if guidance_embedding is None else {"guidance_embedding": guidance_embedding}
        return self._run("diffusion", "noise_pred", where, latent=latent, timestep_embedding=t_emb, context=context,
                         **extra)

    def decode(self, latent: np.ndarray) -> np.ndarray:
        decoded = self._run("decoder", "image", latent=latent)
        return to_pixels(decoded, self.pixels)

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

    def make_sampler(self, settings: GenerateSettings):
        """The run's sampler for resolved settings (refuses steps x strength < 1 before any model runs)."""
        sampler = make_sampler(settings.sampler, settings.steps, self.prediction_type, settings.karras,
                               self.schedule, settings.spacing, settings.eta)
        if settings.image is not None:
            sampler.set_strength(settings.strength if settings.strength is not None else 1.0)
        return sampler

    def generate(self, settings: GenerateSettings, on_step: Callable[[int, int], None] | None = None) -> PipelineOutput:
        settings = self.resolve(settings)
        strength = settings.strength if settings.strength is not None else 1.0
        if not 0.0 < strength <= 1.0:
            raise UsageError(f"--strength {strength} must be in (0, 1]")
        if settings.mask is not None and settings.image is None:
            raise UsageError("a mask needs an image: pass --image with --mask")
        sampler = self.make_sampler(settings)  # before any model runs: bad steps x strength is refused here
        # diffusers' rule: guidance <= 1 runs the conditional prediction alone; an LCM UNet takes the
        # guidance through its embedding and runs once per step.
        embedded = self.guidance_embedding_dim > 0
        guided = settings.guidance > 1.0 and not embedded

        context = self.encode_text(settings.prompt)
        unconditional = self.encode_text(settings.negative_prompt or UNCONDITIONAL_PROMPT) if guided else None
        self._done_with("text_encoder")
        noise = self.starting_noise(settings)
        steps = len(sampler.timesteps)
        w_emb = guidance_scale_embedding(settings.guidance, self.dims.batch_size, self.guidance_embedding_dim) \
            if embedded else None

        # Image-to-image and inpainting start part-way down the schedule from the noised image
        # (diffusers' img2img: the last int(steps x strength) steps, from the noise level of the first).
        start = 0
        known = None
        if settings.image is not None:
            known = self.encode_image(settings.image)
            self._done_with("image_encoder")
            start = sampler.start
            if strength >= 1.0 and settings.mask is not None:
                latent = sampler.initial_latent(noise)  # full inpainting: the masked region starts from pure noise
            else:
                latent = sampler.add_noise(known, noise, start).astype(np.float32)
        else:
            latent = sampler.initial_latent(noise)
        repaint = latent_mask(settings.mask, self.dims) if settings.mask is not None else None
        noise_source = seeded_noise(noise)  # stochastic samplers only

        total = steps - start
        for done, index in enumerate(range(start, steps), 1):
            where = f" at step {done} of {total}"
            model_input = sampler.scale_input(latent, index)
            t_emb = timestep_embedding(sampler.timesteps[index], self.dims.batch_size, self.dims.timestep_dim)
            if guided:
                unconditional_eps = self.predict_noise(model_input, t_emb, unconditional, where)
                conditional_eps = self.predict_noise(model_input, t_emb, context, where)
                output = unconditional_eps + settings.guidance * (conditional_eps - unconditional_eps)
            else:
                output = self.predict_noise(model_input, t_emb, context, where, w_emb)
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
        return PipelineOutput(images=images, latents=latent, noise=noise, settings=settings)


def to_pixels(decoded: np.ndarray, rule: str = "truncate") -> np.ndarray:
    """Decoder output in [-1, 1] -> uint8: keras-cv truncates ((x + 1) / 2 * 255, clipped, astype);
    diffusers' pipelines round (x / 2 + 0.5 clamped to [0, 1], times 255, rounded), in float32."""
    if rule == "round":
        unit = np.clip(np.asarray(decoded, dtype=np.float32) * np.float32(0.5) + np.float32(0.5), 0, 1)
        return (unit * np.float32(255)).round().astype("uint8")
    return np.clip((decoded + 1) / 2 * 255, 0, 255).astype("uint8")


def latent_mask(mask: np.ndarray, dims: ModelDims) -> np.ndarray:
    """An inpainting mask (h, w) at latent resolution, (1, h/8, w/8, 1): a latent cell is
    repainted if any pixel of its 8x8 block is."""
    h, w = dims.latent_shape[1:3]
    blocks = mask.reshape(h, mask.shape[0] // h, w, mask.shape[1] // w).max(axis=(1, 3))
    return blocks[None, :, :, None].astype(np.float32)
