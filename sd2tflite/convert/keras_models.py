"""Keras builders for the Stable Diffusion components.

v1 and v2 use keras-cv's own classes, so keras-cv's released weight files load by layer order.
The tiny family is the v1 topology rebuilt from keras-cv's layer classes with small widths but
the real interfaces (77 tokens, 320-d timestep embedding, 4 latent channels, VAE factor 8,
768-d context), so every code path (split, convert, runtime) is the one v1 takes.

Everything here imports Keras: import this module lazily.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import keras
import numpy as np
from keras_cv.src.models.stable_diffusion import (
    decoder as kcv_decoder,
    diffusion_model as kcv_diffusion,
    image_encoder as kcv_image_encoder,
    text_encoder as kcv_text_encoder,
)
from keras_cv.src.models.stable_diffusion.attention_block import AttentionBlock
from keras_cv.src.models.stable_diffusion.diffusion_model import (
    ResBlock,
    SpatialTransformer,
    Upsample,
)
from keras_cv.src.models.stable_diffusion.padded_conv2d import PaddedConv2D
from keras_cv.src.models.stable_diffusion.resnet_block import ResnetBlock
from keras_cv.src.models.stable_diffusion.text_encoder import (
    CLIPEmbedding,
    CLIPEncoderLayer,
    quick_gelu,
)

from ..core.registry import ModelDims


@dataclass(frozen=True)
class TinyWidths:
    """Widths of the tiny family: multiples of 32 because GroupNormalization uses 32 groups."""

    unet: tuple[int, int, int] = (64, 64, 64)
    unet_heads: int = 2
    text_width: int = 64
    text_heads: int = 2
    text_layers: int = 1
    vae: tuple[int, int, int] = (64, 64, 64)


TINY = TinyWidths()


def build_component(family: str, component: str, dims: ModelDims) -> keras.Model:
    """Builds one component with freshly initialised (random) weights."""
    if component.startswith("taesd_"):  # the tiny autoencoder: madebyollin/taesd's shapes in every family
        from .taesd import DEFAULT, build

        return build(DEFAULT, component, dims.img_height, dims.img_width)[0]
    builders = _BUILDERS[family]
    return builders[component](dims)


def call_keras(model: keras.Model, inputs: Mapping[str, np.ndarray], compiled: bool = False) -> list[np.ndarray]:
    """Runs a Keras component (or a UNet part) on named inputs, in the model's own input order; its
    outputs as a list. `compiled`: predict_on_batch, a compiled graph, several times faster than an
    eager call at full size (what keras-cv's pipeline uses)."""
    if len(model.inputs) == 1:
        feed = next(iter(inputs.values()))
    else:
        feed = [inputs[t.name.split(":")[0]] for t in model.inputs]
    outputs = model.predict_on_batch(feed) if compiled else model(feed, training=False)
    return [np.asarray(o) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]


# ---------------------------------------------------------------- keras-cv (v1, v2)


def _v1_text_encoder(dims: ModelDims) -> keras.Model:
    return kcv_text_encoder.TextEncoder(dims.max_text_length, download_weights=False)


def _v2_text_encoder(dims: ModelDims) -> keras.Model:
    return kcv_text_encoder.TextEncoderV2(dims.max_text_length, download_weights=False)


def _v1_diffusion(dims: ModelDims) -> keras.Model:
    return kcv_diffusion.DiffusionModel(
        dims.img_height, dims.img_width, dims.max_text_length, download_weights=False
    )


def _v2_diffusion(dims: ModelDims) -> keras.Model:
    return kcv_diffusion.DiffusionModelV2(
        dims.img_height, dims.img_width, dims.max_text_length, download_weights=False
    )


def _kcv_decoder(dims: ModelDims) -> keras.Model:
    return kcv_decoder.Decoder(dims.img_height, dims.img_width, download_weights=False)


def _kcv_image_encoder(dims: ModelDims) -> keras.Model:
    return kcv_image_encoder.ImageEncoder(download_weights=False)


# ---------------------------------------------------------------- tiny


def _tiny_text_encoder(dims: ModelDims, w: TinyWidths = TINY) -> keras.Model:
    # Same layers as TextEncoder at a small width; a final projection restores the
    # 768-d context that the UNet's cross-attention expects.
    tokens = keras.layers.Input(shape=(dims.max_text_length,), dtype="int32", name="tokens")
    positions = keras.layers.Input(shape=(dims.max_text_length,), dtype="int32", name="positions")
    x = CLIPEmbedding(dims.vocab_size, w.text_width, dims.max_text_length)([tokens, positions])
    for _ in range(w.text_layers):
        x = CLIPEncoderLayer(w.text_width, w.text_heads, activation=quick_gelu)(x)
    x = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    context = keras.layers.Dense(dims.context_dim)(x)
    return keras.Model([tokens, positions], context, name="tiny_text_encoder")


def _tiny_diffusion(dims: ModelDims, w: TinyWidths = TINY) -> keras.Model:
    """keras-cv's DiffusionModel wiring (skip connections included) at small widths."""
    c1, c2, c3 = w.unet
    heads = w.unet_heads
    context = keras.layers.Input((dims.max_text_length, dims.context_dim), name="context")
    t_embed_input = keras.layers.Input((320,), name="timestep_embedding")
    latent = keras.layers.Input((dims.img_height // 8, dims.img_width // 8, 4), name="latent")

    t_emb = keras.layers.Dense(4 * c1)(t_embed_input)
    t_emb = keras.layers.Activation("swish")(t_emb)
    t_emb = keras.layers.Dense(4 * c1)(t_emb)

    skips = []
    x = PaddedConv2D(c1, kernel_size=3, padding=1)(latent)
    skips.append(x)
    for width, downsample in ((c1, True), (c2, True), (c3, True)):
        x = ResBlock(width)([x, t_emb])
        x = SpatialTransformer(heads, width // heads)([x, context])
        skips.append(x)
        if downsample:
            x = PaddedConv2D(width, 3, strides=2, padding=1)(x)
            skips.append(x)
    x = ResBlock(c3)([x, t_emb])
    skips.append(x)

    x = ResBlock(c3)([x, t_emb])
    x = SpatialTransformer(heads, c3 // heads)([x, context])
    x = ResBlock(c3)([x, t_emb])

    for width, attention, upsample in (
        (c3, False, True),
        (c3, True, True),
        (c2, True, True),
        (c1, True, False),
    ):
        for _ in range(2):
            x = keras.layers.Concatenate()([x, skips.pop()])
            x = ResBlock(width)([x, t_emb])
            if attention:
                x = SpatialTransformer(heads, width // heads)([x, context])
        if upsample:
            x = Upsample(width)(x)
    assert not skips, "every skip tensor must be consumed"

    x = keras.layers.GroupNormalization(epsilon=1e-5)(x)
    x = keras.layers.Activation("swish")(x)
    output = PaddedConv2D(4, kernel_size=3, padding=1)(x)
    return keras.Model([latent, t_embed_input, context], output, name="tiny_diffusion_model")


def _tiny_decoder(dims: ModelDims, w: TinyWidths = TINY) -> keras.Model:
    c1, c2, c3 = w.vae
    return keras.Sequential(
        [
            keras.layers.Input((dims.img_height // 8, dims.img_width // 8, 4)),
            keras.layers.Rescaling(1.0 / 0.18215),
            PaddedConv2D(4, 1),
            PaddedConv2D(c1, 3, padding=1),
            ResnetBlock(c1),
            AttentionBlock(c1),
            ResnetBlock(c1),
            keras.layers.UpSampling2D(2),
            PaddedConv2D(c1, 3, padding=1),
            ResnetBlock(c2),
            keras.layers.UpSampling2D(2),
            PaddedConv2D(c2, 3, padding=1),
            ResnetBlock(c3),
            keras.layers.UpSampling2D(2),
            PaddedConv2D(c3, 3, padding=1),
            ResnetBlock(c3),
            keras.layers.GroupNormalization(epsilon=1e-5),
            keras.layers.Activation("swish"),
            PaddedConv2D(3, 3, padding=1),
        ],
        name="tiny_decoder",
    )


def take_mean_latent(x):
    # keras-cv's ImageEncoder keeps the first 4 of 8 channels (the mean) and scales them.
    return x[..., :4] * 0.18215


def _tiny_image_encoder(dims: ModelDims, w: TinyWidths = TINY) -> keras.Model:
    c3, c2, c1 = w.vae
    return keras.Sequential(
        [
            keras.layers.Input((None, None, 3)),
            PaddedConv2D(c1, 3, padding=1),
            ResnetBlock(c1),
            PaddedConv2D(c1, 3, padding=((0, 1), (0, 1)), strides=2),
            ResnetBlock(c2),
            PaddedConv2D(c2, 3, padding=((0, 1), (0, 1)), strides=2),
            ResnetBlock(c3),
            PaddedConv2D(c3, 3, padding=((0, 1), (0, 1)), strides=2),
            ResnetBlock(c3),
            AttentionBlock(c3),
            keras.layers.GroupNormalization(epsilon=1e-5),
            keras.layers.Activation("swish"),
            PaddedConv2D(8, 3, padding=1),
            PaddedConv2D(8, 1),
            keras.layers.Lambda(take_mean_latent),
        ],
        name="tiny_image_encoder",
    )


_BUILDERS = {
    "v1": {
        "text_encoder": _v1_text_encoder,
        "diffusion": _v1_diffusion,
        "decoder": _kcv_decoder,
        "image_encoder": _kcv_image_encoder,
    },
    "v2": {
        "text_encoder": _v2_text_encoder,
        "diffusion": _v2_diffusion,
        "decoder": _kcv_decoder,
        "image_encoder": _kcv_image_encoder,
    },
    "tiny": {
        "text_encoder": _tiny_text_encoder,
        "diffusion": _tiny_diffusion,
        "decoder": _tiny_decoder,
        "image_encoder": _tiny_image_encoder,
    },
}
