"""Seeded sample inputs for the components, made in one place from the component spec. numpy only.

Every user of made-up inputs takes them from here: int8 calibration's synthetic source, the joined
UNet's check, verify's parity inputs, bench's timed calls and the tests. Shapes and dtypes come from
`COMPONENTS[name].input_specs(dims)`; each input of each component has one maker below that spreads
its values over the ranges the pipeline produces.

The numbers are part of the contract: a manifest records synthetic calibration as (seed, count),
and verify's bars were set on these inputs, so a change here changes converted int8 files and
verify's figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..core.registry import COMPONENTS, ModelDims, TensorSpec
from .schedule import NUM_TRAIN_TIMESTEPS, alphas_cumprod, timestep_embedding
from .tokenizer import END_TOKEN, START_TOKEN

Sample = dict[str, np.ndarray]  # one call's inputs, by signature name


def starting_noise(dims: ModelDims, seed: int | None) -> np.ndarray:
    """The pipeline's starting latent noise for a seed (what `generate --seed` uses)."""
    return np.random.default_rng(seed).standard_normal(dims.latent_shape).astype(np.float32)


def synthetic_images(dims: ModelDims, count: int, seed: int) -> list[np.ndarray]:
    """Smooth, photo-like images in [-1, 1]: a few low-frequency waves plus a little grain."""
    rng = np.random.default_rng(seed)
    return [_image(rng, (dims.batch_size, dims.img_height, dims.img_width, 3)) for _ in range(count)]


def _image(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    _, h, w, _ = shape
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.zeros(shape, np.float32)
    for _ in range(4):
        fy, fx, phase = rng.uniform(0.5, 4, 2).tolist() + [rng.uniform(0, 6.3)]
        img += (np.sin(2 * np.pi * (fy * y + fx * x) + phase)[None, :, :, None]
                * rng.uniform(-0.4, 0.4, 3)).astype(np.float32)
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return np.clip(img, -1, 1)


def smooth_latents(shape: tuple[int, ...], rng: np.random.Generator, scale: float = 0.8) -> np.ndarray:
    """Spatially correlated latents, like encoded images: low-resolution noise, upsampled."""
    b, h, w, c = shape
    coarse = rng.standard_normal((b, -(-h // 8), -(-w // 8), c))  # rounded up: covers any side
    up = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)[:, :h, :w]
    return (scale * up + 0.2 * rng.standard_normal(shape)).astype(np.float32)


# ---------------------------------------------------------------- one maker per component input


@dataclass(frozen=True)
class _Draw:
    """Where a sample stands in its batch of samples, and the batch's random stream."""

    index: int
    count: int
    rng: np.random.Generator
    dims: ModelDims

    @property
    def timestep(self) -> float:
        """UNet samples spread their timesteps evenly over the schedule."""
        return (self.index + 0.5) / self.count * NUM_TRAIN_TIMESTEPS


def _tokens(spec: TensorSpec, draw: _Draw) -> np.ndarray:
    """A start token, a random number of random words, end-of-text padding."""
    b, length = spec.shape
    tokens = np.full((b, length), END_TOKEN, dtype=np.int32)
    n_words = int(draw.rng.integers(0, length - 1))
    tokens[:, 0] = START_TOKEN
    tokens[:, 1 : 1 + n_words] = draw.rng.integers(0, draw.dims.vocab_size - 2, size=(b, n_words))
    return tokens


def _positions(spec: TensorSpec, draw: _Draw) -> np.ndarray:
    b, length = spec.shape
    return np.repeat(np.arange(length, dtype=np.int32)[None], b, axis=0)


def _noisy_latent(spec: TensorSpec, draw: _Draw) -> np.ndarray:
    """Noise at the scale of the sample's timestep."""
    latent = draw.rng.standard_normal(spec.shape).astype(np.float32)
    latent *= np.float32(0.5 + draw.timestep / NUM_TRAIN_TIMESTEPS)
    return latent


def _timestep_embedding(spec: TensorSpec, draw: _Draw) -> np.ndarray:
    return timestep_embedding(draw.timestep, spec.shape[0], spec.shape[1])


def _guidance_embedding(spec: TensorSpec, draw: _Draw) -> np.ndarray:
    """LCM UNets: the guidance scale's embedding, for scales spread over 1..15."""
    from .schedule import guidance_scale_embedding

    return guidance_scale_embedding(1.0 + 14.0 * draw.rng.random(), spec.shape[0], spec.shape[1])


def _context(spec: TensorSpec, draw: _Draw) -> np.ndarray:
    """Prompt-like contexts, and every other one near-constant (the unconditional branch)."""
    context = draw.rng.standard_normal(spec.shape).astype(np.float32)
    if draw.index % 2:
        context = context * np.float32(0.1) + np.float32(draw.rng.standard_normal())
    return context


def _decoded_latent(spec: TensorSpec, draw: _Draw) -> np.ndarray:
    """Mostly image-like latents, some still noisy (intermediate steps)."""
    if draw.index % 3 == 2:
        return draw.rng.standard_normal(spec.shape).astype(np.float32)
    return smooth_latents(spec.shape, draw.rng)


def _encoder_image(spec: TensorSpec, draw: _Draw) -> np.ndarray:
    return _image(np.random.default_rng(int(draw.rng.integers(1 << 31))), spec.shape)


# component -> input name -> maker; the test suite checks this covers every spec in the registry.
MAKERS: dict[str, dict[str, Callable[[TensorSpec, _Draw], np.ndarray]]] = {
    "text_encoder": {"tokens": _tokens, "positions": _positions},
    "diffusion": {"latent": _noisy_latent, "timestep_embedding": _timestep_embedding, "context": _context,
                  "guidance_embedding": _guidance_embedding},
    "decoder": {"latent": _decoded_latent},
    "image_encoder": {"image": _encoder_image},
    "taesd_decoder": {"latent": _decoded_latent},
    "taesd_encoder": {"image": _encoder_image},
}


def synthetic_samples(component: str, dims: ModelDims, count: int, seed: int) -> list[Sample]:
    """`count` seeded inputs for a component's signature, spread over the ranges the pipeline produces
    (UNet samples over the whole schedule). Same (component, dims, count, seed), same numbers."""
    specs = COMPONENTS[component].input_specs(dims)
    makers = MAKERS[component]
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(count):
        draw = _Draw(index, count, rng, dims)
        samples.append({spec.name: _as_spec(spec, makers[spec.name](spec, draw)) for spec in specs})
    return samples


def _as_spec(spec: TensorSpec, value: np.ndarray) -> np.ndarray:
    if value.shape != spec.shape or value.dtype != np.dtype(spec.dtype):
        raise AssertionError(f"{spec.name}: made {value.dtype}{list(value.shape)}, "
                             f"the signature takes {spec.dtype}{list(spec.shape)}")
    return value


# ---------------------------------------------------------------- inputs as a pipeline run makes them


Encoder = Callable[[Sample], np.ndarray]  # one component's first output for one sample


def pipeline_samples(dims: ModelDims, token_rows: Sequence[Sequence[int]], timesteps: Sequence[int], seed: int,
                     encode_text: Encoder | None = None, encode_image: Encoder | None = None) -> dict[str, list[Sample]]:
    """Inputs per component as a real run would feed them: the prompts' tokens; images (synthetic_images);
    UNet latents made from the images' latents noised to each timestep of the schedule, with the
    prompts' contexts; the decoder fed the clean latents and the last UNet latent. With the encoders
    (verify passes the Keras ones) contexts and clean latents are theirs, else seeded stand-ins."""
    rng = np.random.default_rng(seed)
    b, length = dims.batch_size, dims.max_text_length
    positions = np.repeat(np.arange(length, dtype=np.int32)[None], b, axis=0)
    tokens = [np.asarray([list(row)] * b, np.int32) for row in token_rows]
    images = synthetic_images(dims, 2, seed)
    inputs: dict[str, list[Sample]] = {
        "text_encoder": [{"tokens": t, "positions": positions} for t in tokens],
        "image_encoder": [{"image": image} for image in images],
    }
    contexts = [encode_text(s) for s in inputs["text_encoder"]] if encode_text is not None \
        else [rng.standard_normal((b, length, dims.context_dim)).astype(np.float32) for _ in tokens]
    clean = [encode_image(s) for s in inputs["image_encoder"]] if encode_image is not None \
        else [0.8 * rng.standard_normal(dims.latent_shape).astype(np.float32) for _ in images]
    table = alphas_cumprod()
    unet = []
    for i, t in enumerate(timesteps):
        a = float(table[t])
        eps = rng.standard_normal(dims.latent_shape).astype(np.float32)
        latent = (np.sqrt(a) * clean[i % len(clean)] + np.sqrt(1 - a) * eps).astype(np.float32)
        unet.append({"latent": latent, "timestep_embedding": timestep_embedding(t, b, dims.timestep_dim),
                     "context": contexts[i % len(contexts)]})
        if dims.guidance_embedding_dim:  # LCM UNets: guidance scales an LCM run uses
            from .schedule import guidance_scale_embedding

            unet[-1]["guidance_embedding"] = guidance_scale_embedding((1.0, 4.0, 8.0)[i % 3], b,
                                                                      dims.guidance_embedding_dim)
    inputs["diffusion"] = unet
    inputs["decoder"] = [{"latent": c} for c in clean] + [{"latent": unet[-1]["latent"]}]
    return inputs
