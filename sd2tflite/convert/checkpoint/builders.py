"""Keras builders with keras-cv's Stable Diffusion structure, parametrized by an Architecture, and
the table that maps canonical (diffusers) tensor names to their Keras weights.

The builders use keras-cv's own layer classes in keras-cv's order (a test checks that at the SD 1.x
and 2.x widths their weight lists equal keras-cv's TextEncoder(V2) / DiffusionModel(V2) / Decoder /
ImageEncoder). While building, each keras-cv block is tagged with its canonical prefix and a block
template (below); after the model is built the templates expand to the table: rows of
(canonical tensor name, Keras variable, transform).

Transforms: conv (OIHW -> HWIO), dense (W.T), conv_from_linear (W.T as a 1x1 HWIO kernel: VAE
attention), copy (norms, embeddings, biases).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras_cv.src.backend import ops
from keras_cv.src.models.stable_diffusion.attention_block import AttentionBlock
from keras_cv.src.models.stable_diffusion.diffusion_model import ResBlock, SpatialTransformer, Upsample
from keras_cv.src.models.stable_diffusion.padded_conv2d import PaddedConv2D
from keras_cv.src.models.stable_diffusion.resnet_block import ResnetBlock
from keras_cv.src.models.stable_diffusion.text_encoder import CLIPEmbedding, CLIPEncoderLayer, quick_gelu

from sd2tflite.convert.keras_models import take_mean_latent
from sd2tflite.core.errors import UsageError, WeightsError

from .architecture import Architecture, TextArch, UNetArch, VaeArch

# ---------------------------------------------------------------- block templates (data)

# leaf kind -> [(keras attribute of the leaf, canonical suffix, transform)]
LEAVES = {
    "conv": [("conv2d.kernel", "weight", "conv"), ("conv2d.bias", "bias", "copy")],
    "conv_from_linear": [("conv2d.kernel", "weight", "conv_from_linear"), ("conv2d.bias", "bias", "copy")],
    "dense": [("kernel", "weight", "dense"), ("bias", "bias", "copy")],
    "dense_nobias": [("kernel", "weight", "dense")],
    "norm": [("gamma", "weight", "copy"), ("beta", "bias", "copy")],
    "embedding": [("embeddings", "weight", "copy")],
}

# block kind -> [(path of a leaf inside the keras-cv block, canonical sub-name, leaf kind)];
# a leaf kind of None marks an optional leaf (only built when the channel count changes).
BLOCKS = {
    "unet_resnet": [  # keras-cv ResBlock <- diffusers ResnetBlock2D
        ("entry_flow.0", "norm1", "norm"), ("entry_flow.2", "conv1", "conv"),
        ("embedding_flow.1", "time_emb_proj", "dense"),
        ("exit_flow.0", "norm2", "norm"), ("exit_flow.2", "conv2", "conv"),
        ("residual_projection", "conv_shortcut", "conv?"),
    ],
    "transformer_conv": [  # keras-cv SpatialTransformer(fully_connected=False) <- Transformer2DModel (v1)
        ("norm", "norm", "norm"), ("proj1", "proj_in", "conv"),
        *[(f"transformer_block.{a}", f"transformer_blocks.0.{b}", k) for a, b, k in (
            ("norm1", "norm1", "norm"), ("attn1.to_q", "attn1.to_q", "dense_nobias"),
            ("attn1.to_k", "attn1.to_k", "dense_nobias"), ("attn1.to_v", "attn1.to_v", "dense_nobias"),
            ("attn1.out_proj", "attn1.to_out.0", "dense"), ("norm2", "norm2", "norm"),
            ("attn2.to_q", "attn2.to_q", "dense_nobias"), ("attn2.to_k", "attn2.to_k", "dense_nobias"),
            ("attn2.to_v", "attn2.to_v", "dense_nobias"), ("attn2.out_proj", "attn2.to_out.0", "dense"),
            ("norm3", "norm3", "norm"), ("geglu.dense", "ff.net.0.proj", "dense"),
            ("dense", "ff.net.2", "dense"))],
        ("proj2", "proj_out", "conv"),
    ],
    "vae_resnet": [  # keras-cv ResnetBlock <- diffusers ResnetBlock2D (no time embedding)
        ("norm1", "norm1", "norm"), ("conv1", "conv1", "conv"), ("norm2", "norm2", "norm"),
        ("conv2", "conv2", "conv"), ("residual_projection", "conv_shortcut", "conv?"),
    ],
    "vae_attention": [  # keras-cv AttentionBlock (1x1 convs) <- diffusers Attention (linear)
        ("norm", "group_norm", "norm"), ("q", "to_q", "conv_from_linear"), ("k", "to_k", "conv_from_linear"),
        ("v", "to_v", "conv_from_linear"), ("proj_out", "to_out.0", "conv_from_linear"),
    ],
    "clip_layer": [  # keras-cv CLIPEncoderLayer <- transformers CLIPEncoderLayer
        ("layer_norm1", "layer_norm1", "norm"), ("clip_attn.q_proj", "self_attn.q_proj", "dense"),
        ("clip_attn.k_proj", "self_attn.k_proj", "dense"), ("clip_attn.v_proj", "self_attn.v_proj", "dense"),
        ("clip_attn.out_proj", "self_attn.out_proj", "dense"), ("layer_norm2", "layer_norm2", "norm"),
        ("fc1", "mlp.fc1", "dense"), ("fc2", "mlp.fc2", "dense"),
    ],
    "clip_embedding": [
        ("token_embedding", "token_embedding", "embedding"),
        ("position_embedding", "position_embedding", "embedding"),
    ],
}
BLOCKS["transformer_linear"] = [
    (a, b, "dense" if b in ("proj_in", "proj_out") else k) for a, b, k in BLOCKS["transformer_conv"]
]


def to_keras(x: np.ndarray, transform: str) -> np.ndarray:
    if transform == "conv":
        return x.transpose(2, 3, 1, 0)
    if transform == "dense":
        return x.T
    if transform == "conv_from_linear":
        return x.T[None, None]
    return x


def source_shape(keras_shape: tuple[int, ...], transform: str) -> tuple[int, ...]:
    """The canonical (PyTorch) shape a Keras weight of this shape needs."""
    s = tuple(keras_shape)
    if transform == "conv":
        return (s[3], s[2], s[0], s[1])
    if transform == "dense":
        return s[::-1]
    if transform == "conv_from_linear":
        return (s[3], s[2])
    return s


@dataclass(frozen=True)
class Row:
    source: str  # canonical tensor name
    target: keras.Variable
    transform: str

    def to_json(self) -> dict:
        return {"source": self.source, "target": self.target.path, "shape": list(self.target.shape),
                "transform": self.transform}


class Tags:
    """Records (keras-cv block, canonical prefix, block kind) in build order."""

    def __init__(self):
        self.items: list[tuple[object, str, str]] = []

    def __call__(self, layer, prefix: str, kind: str):
        self.items.append((layer, prefix, kind))
        return layer

    def table(self) -> list[Row]:
        rows = []
        for layer, prefix, kind in self.items:
            leaves = BLOCKS.get(kind, [("", "", kind)])
            for path, sub, leaf_kind in leaves:
                obj = layer
                for part in path.split(".") if path else []:
                    obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
                if leaf_kind.endswith("?"):
                    if not isinstance(obj, PaddedConv2D):
                        continue
                    leaf_kind = leaf_kind[:-1]
                name = f"{prefix}.{sub}" if sub else prefix
                for attr, suffix, transform in LEAVES[leaf_kind]:
                    var = obj
                    for part in attr.split("."):
                        var = getattr(var, part)
                    rows.append(Row(f"{name}.{suffix}", var, transform))
        return rows


# ---------------------------------------------------------------- builders


def _activation(name: str):
    return quick_gelu if name == "quick_gelu" else ops.gelu


def build_text_encoder(a: TextArch, max_text_length: int, tag: Tags) -> keras.Model:
    if max_text_length != a.max_positions:
        raise UsageError(f"max_text_length {max_text_length} differs from the text encoder's "
                         f"{a.max_positions} positions; use {a.max_positions}")
    tokens = keras.layers.Input(shape=(max_text_length,), dtype="int32", name="tokens")
    positions = keras.layers.Input(shape=(max_text_length,), dtype="int32", name="positions")
    x = tag(CLIPEmbedding(a.vocab_size, a.width, max_text_length), "embeddings", "clip_embedding")(
        [tokens, positions])
    for i in range(a.layers):
        x = tag(CLIPEncoderLayer(a.width, a.heads, activation=_activation(a.activation)),
                f"encoder.layers.{i}", "clip_layer")(x)
    x = tag(keras.layers.LayerNormalization(epsilon=1e-5), "final_layer_norm", "norm")(x)
    return keras.Model([tokens, positions], x, name="text_encoder")


def build_diffusion(a: UNetArch, img_height: int, img_width: int, max_text_length: int,
                    tag: Tags) -> keras.Model:
    context = keras.layers.Input((max_text_length, a.context_dim), name="context")
    t_embed_input = keras.layers.Input((a.timestep_dim,), name="timestep_embedding")
    latent = keras.layers.Input((img_height // 8, img_width // 8, a.in_channels), name="latent")
    st_kind = "transformer_linear" if a.linear_projection else "transformer_conv"

    def transformer(level: int, prefix: str):
        heads = a.heads[level]
        return tag(SpatialTransformer(heads, a.widths[level] // heads, fully_connected=a.linear_projection),
                   prefix, st_kind)

    inputs = [latent, t_embed_input, context]
    t_emb = t_embed_input
    if a.time_cond_proj_dim:  # LCM: diffusers' TimestepEmbedding adds cond_proj(w embedding) before linear_1
        guidance = keras.layers.Input((a.time_cond_proj_dim,), name="guidance_embedding")
        inputs.append(guidance)
        w_emb = tag(keras.layers.Dense(a.timestep_dim, use_bias=False), "time_embedding.cond_proj",
                    "dense_nobias")(guidance)
        t_emb = keras.layers.Add()([t_embed_input, w_emb])
    t_emb = tag(keras.layers.Dense(a.time_embed_dim), "time_embedding.linear_1", "dense")(t_emb)
    t_emb = keras.layers.Activation("swish")(t_emb)
    t_emb = tag(keras.layers.Dense(a.time_embed_dim), "time_embedding.linear_2", "dense")(t_emb)

    levels = len(a.widths)
    outputs = []
    x = tag(PaddedConv2D(a.widths[0], kernel_size=3, padding=1), "conv_in", "conv")(latent)
    outputs.append(x)
    for i, width in enumerate(a.widths):
        for j in range(a.layers_per_block):
            x = tag(ResBlock(width), f"down_blocks.{i}.resnets.{j}", "unet_resnet")([x, t_emb])
            if a.attention[i]:
                x = transformer(i, f"down_blocks.{i}.attentions.{j}")([x, context])
            outputs.append(x)
        if i < levels - 1:
            x = tag(PaddedConv2D(width, 3, strides=2, padding=1), f"down_blocks.{i}.downsamplers.0.conv",
                    "conv")(x)
            outputs.append(x)

    x = tag(ResBlock(a.widths[-1]), "mid_block.resnets.0", "unet_resnet")([x, t_emb])
    x = transformer(levels - 1, "mid_block.attentions.0")([x, context])
    x = tag(ResBlock(a.widths[-1]), "mid_block.resnets.1", "unet_resnet")([x, t_emb])

    for i in range(levels):
        level = levels - 1 - i
        width = a.widths[level]
        for j in range(a.layers_per_block + 1):
            x = keras.layers.Concatenate()([x, outputs.pop()])
            x = tag(ResBlock(width), f"up_blocks.{i}.resnets.{j}", "unet_resnet")([x, t_emb])
            if a.attention[level]:
                x = transformer(level, f"up_blocks.{i}.attentions.{j}")([x, context])
        if i < levels - 1:
            up = Upsample(width)
            tag(up.conv, f"up_blocks.{i}.upsamplers.0.conv", "conv")
            x = up(x)
    assert not outputs

    x = tag(keras.layers.GroupNormalization(epsilon=1e-5), "conv_norm_out", "norm")(x)
    x = keras.layers.Activation("swish")(x)
    output = tag(PaddedConv2D(a.out_channels, kernel_size=3, padding=1), "conv_out", "conv")(x)
    return keras.Model(inputs, output, name="diffusion_model")


def build_decoder(a: VaeArch, img_height: int, img_width: int, tag: Tags) -> keras.Model:
    top = a.widths[-1]
    layers = [
        keras.layers.Input((img_height // 8, img_width // 8, a.latent_channels)),
        keras.layers.Rescaling(1.0 / 0.18215),
        tag(PaddedConv2D(a.latent_channels, 1), "post_quant_conv", "conv"),
        tag(PaddedConv2D(top, 3, padding=1), "decoder.conv_in", "conv"),
        tag(ResnetBlock(top), "decoder.mid_block.resnets.0", "vae_resnet"),
        tag(AttentionBlock(top), "decoder.mid_block.attentions.0", "vae_attention"),
        tag(ResnetBlock(top), "decoder.mid_block.resnets.1", "vae_resnet"),
    ]
    levels = len(a.widths)
    for i, width in enumerate(reversed(a.widths)):
        for j in range(a.layers_per_block + 1):
            layers.append(tag(ResnetBlock(width), f"decoder.up_blocks.{i}.resnets.{j}", "vae_resnet"))
        if i < levels - 1:
            layers.append(keras.layers.UpSampling2D(2))
            layers.append(tag(PaddedConv2D(width, 3, padding=1), f"decoder.up_blocks.{i}.upsamplers.0.conv",
                              "conv"))
    layers += [
        tag(keras.layers.GroupNormalization(epsilon=1e-5), "decoder.conv_norm_out", "norm"),
        keras.layers.Activation("swish"),
        tag(PaddedConv2D(3, 3, padding=1), "decoder.conv_out", "conv"),
    ]
    return keras.Sequential(layers, name="decoder")


def build_image_encoder(a: VaeArch, img_height: int, img_width: int, tag: Tags) -> keras.Model:
    if a.latent_channels != 4:
        raise WeightsError(f"VAE with {a.latent_channels} latent channels; keras-cv's ImageEncoder keeps 4")
    layers = [
        keras.layers.Input((img_height, img_width, 3)),
        tag(PaddedConv2D(a.widths[0], 3, padding=1), "encoder.conv_in", "conv"),
    ]
    levels = len(a.widths)
    for i, width in enumerate(a.widths):
        for j in range(a.layers_per_block):
            layers.append(tag(ResnetBlock(width), f"encoder.down_blocks.{i}.resnets.{j}", "vae_resnet"))
        if i < levels - 1:
            layers.append(tag(PaddedConv2D(width, 3, padding=((0, 1), (0, 1)), strides=2),
                              f"encoder.down_blocks.{i}.downsamplers.0.conv", "conv"))
    top = a.widths[-1]
    layers += [
        tag(ResnetBlock(top), "encoder.mid_block.resnets.0", "vae_resnet"),
        tag(AttentionBlock(top), "encoder.mid_block.attentions.0", "vae_attention"),
        tag(ResnetBlock(top), "encoder.mid_block.resnets.1", "vae_resnet"),
        tag(keras.layers.GroupNormalization(epsilon=1e-5), "encoder.conv_norm_out", "norm"),
        keras.layers.Activation("swish"),
        tag(PaddedConv2D(2 * a.latent_channels, 3, padding=1), "encoder.conv_out", "conv"),
        tag(PaddedConv2D(2 * a.latent_channels, 1), "quant_conv", "conv"),
        keras.layers.Lambda(take_mean_latent),
    ]
    return keras.Sequential(layers, name="image_encoder")


COMPONENT_GROUP = {"text_encoder": "text_encoder", "diffusion": "unet", "decoder": "vae",
                   "image_encoder": "vae"}
# which canonical tensors of the group a component consumes
COMPONENT_PREFIXES = {
    "text_encoder": ("",),
    "diffusion": ("",),
    "decoder": ("decoder.", "post_quant_conv."),
    "image_encoder": ("encoder.", "quant_conv."),
}


def build(arch: Architecture, component: str, img_height: int, img_width: int,
          max_text_length: int = 77) -> tuple[keras.Model, list[Row]]:
    """A component with freshly initialised weights, and its table."""
    if component not in COMPONENT_GROUP:
        raise UsageError(f"unknown component {component!r}; use one of {', '.join(COMPONENT_GROUP)}")
    if img_height % 64 or img_width % 64:
        raise UsageError(f"img_height and img_width must be multiples of 64 (got {img_height}x{img_width})")
    tag = Tags()
    if component == "text_encoder":
        model = build_text_encoder(arch.text, max_text_length, tag)
    elif component == "diffusion":
        model = build_diffusion(arch.unet, img_height, img_width, max_text_length, tag)
    elif component == "decoder":
        model = build_decoder(arch.vae, img_height, img_width, tag)
    else:
        model = build_image_encoder(arch.vae, img_height, img_width, tag)
    return model, tag.table()
