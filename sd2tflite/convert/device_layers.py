"""Device-ready graphs: the exported graph in formulations LiteRT's GPU accelerator and the Qualcomm
NPU compiler take, with the same numbers.

What Keras and keras-cv emit, what the accelerators said about it (tiny sets, 128x128), and what is
traced instead while exporting:

- GroupNormalization reshapes to 5-D (batch, H, W, groups, channels per group) for its moments. The
  GPU accelerator takes no tensor of rank 5 ("isn't BHWC-convertible", "Tensor dimensions must be
  less than 5") and the Qualcomm compiler refuses the NEG it emits; at int16 TensorFlow emits a
  SQUARED_DIFFERENCE LiteRT has no kernel for. Here: per-channel means over H and W, averaged over
  each group's channels as (1, 1, groups, n) and copied back by concatenation, a two-pass variance
  (the centred values squared by a MUL), gamma on the (1, 1, 1, C) factor, beta per channel. Same
  maths; the two-pass variance is the textbook one.
- LayerNormalization: the same two-pass moments over the last axis (no NEG, no SQUARED_DIFFERENCE).
- UpSampling2D repeats through 5-D RESHAPE / TILE; here each pixel is copied along the channels
  and reshaped into the width, each row likewise into the height: the same pixels, in 4-D.
- keras-cv's PaddedConv2D with stride 2 keeps a PAD the NPU has no int16 kernel for; a 3x3 window
  at stride 2 never reads the bottom / right padding, so zeros are concatenated on top / left only.
- CLIP's token and position embeddings gather with (batch, 77) indices; the GPU gathers with 1-D
  indices only: the table is gathered as (1, vocabulary, width) on axis 1 with flattened indices.
- keras-cv's ResBlock indexes the timestep embedding with new axes and GEGLU slices one product in
  two on the channels: STRIDED_SLICEs the GPU refuses. Here a reshape, and two matmuls over the
  halves of the kernel.

`device_graph()` swaps these (and attention.py's export attention) in while a model is traced for
export; the Keras model, its variables and weight loading are unchanged, so `verify` compares the
files with the unmodified Keras model. REVISION is part of every file's build key.

Everything here imports Keras / TensorFlow when used: plan.py reads REVISION.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..core.precisions import GROUP_NORM_FLOAT_SCOPE

# The device graph's revision (these formulations, and fp16's float32 lookup tables in tflite.py):
# another value is another file.
REVISION = 7


def group_mean(values, groups: int):
    """(batch, 1, 1, C) per-channel values -> each channel's group mean, in 4-D: the channels as
    (groups, n), a MEAN over n, and the n copies concatenated back. No weight: dynamic-range
    quantization would turn a constant averaging matrix into an int8 kernel with int8-quantized
    statistics (the tiny UNet fell from 56 to 32 dB)."""
    import tensorflow as tf

    channels = values.shape[-1]
    n = channels // groups
    if n == 1:
        return values
    means = tf.reduce_mean(tf.reshape(values, (-1, 1, groups, n)), axis=3, keepdims=True)
    return tf.reshape(tf.concat([means] * n, axis=3), (-1, 1, 1, channels))


def group_norm_4d(layer, inputs):
    """keras.layers.GroupNormalization.call on a (batch, H, W, C) tensor, in 4-D only."""
    import tensorflow as tf

    x = tf.cast(inputs, tf.float32)
    # Per-channel mean over H, W, then the group's mean for every channel.
    mean = group_mean(tf.reduce_mean(x, axis=(1, 2), keepdims=True), layer.groups)
    centred = x - mean
    # The variance and the normalisation carry GROUP_NORM_FLOAT_SCOPE in their names: the int8
    # recipe keeps them float. In int8 the squares of the centred values share one range per tensor
    # and small groups' variances lose their levels. The mean and the centring stay int8, so the
    # float ops start from int8 values: their squares and sums are exact in float32 and LiteRT.js
    # (wasm) computes the same bits as x86 (a float mean made the browser page drift 88-229 levels
    # from generate's picture; this, none). beta's ADD stays int8 (inside, int8 adherence measured
    # 0.4375 against its 0.45 bar).
    with tf.name_scope(GROUP_NORM_FLOAT_SCOPE):
        variance = group_mean(tf.reduce_mean(centred * centred, axis=(1, 2), keepdims=True), layer.groups)
        inv = tf.math.rsqrt(variance + layer.epsilon)
        if layer.scale:  # gamma scales the (1, 1, 1, C) factor, not the whole tensor
            inv = inv * tf.cast(layer.gamma, tf.float32)
        y = centred * inv
    if layer.center:
        y = y + tf.cast(layer.beta, tf.float32)
    return tf.cast(y, layer.compute_dtype)


def _takes_4d_group_norm(layer, inputs) -> bool:
    shape = inputs.shape
    return (len(shape) == 4 and layer.axis in (-1, 3) and shape[-1] is not None
            and shape[-1] % layer.groups == 0 and all(d is not None for d in shape[1:]))


def layer_norm_last(layer, inputs):
    """keras.layers.LayerNormalization.call over the last axis, two-pass and without NEG or
    SQUARED_DIFFERENCE (TensorFlow's moments emit both; LiteRT has no int16 SQUARED_DIFFERENCE)."""
    import tensorflow as tf

    x = tf.cast(inputs, tf.float32)
    centred = x - tf.reduce_mean(x, axis=-1, keepdims=True)
    y = centred * tf.math.rsqrt(tf.reduce_mean(centred * centred, axis=-1, keepdims=True) + layer.epsilon)
    if layer.scale:
        y = y * tf.cast(layer.gamma, tf.float32)
    if layer.center:
        y = y + tf.cast(layer.beta, tf.float32)
    return tf.cast(y, layer.compute_dtype)


def _takes_layer_norm(layer, inputs) -> bool:
    rank = len(inputs.shape)
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    return not getattr(layer, "rms_scaling", False) and [a % rank for a in axes] == [rank - 1]


def upsample_nearest(layer, inputs):
    """keras.layers.UpSampling2D (nearest, channels_last) by copies and reshapes in 4-D: each pixel
    repeated along the channels and reshaped into the width, each row likewise into the height.
    (RESIZE_NEAREST_NEIGHBOR would do on the GPU, but the NPU has no int16 kernel for it.)"""
    import tensorflow as tf

    _, h, w, c = inputs.shape
    sh, sw = layer.size
    x = tf.reshape(tf.concat([inputs] * sw, axis=3), (-1, h, w * sw, c)) if sw > 1 else inputs
    return tf.reshape(tf.concat([x] * sh, axis=2), (-1, h * sh, w * sw, c)) if sh > 1 else x


def _takes_resize(layer, inputs) -> bool:
    return (layer.interpolation == "nearest" and layer.data_format == "channels_last" and len(inputs.shape) == 4
            and all(d is not None for d in inputs.shape[1:]))


def strided_padded_conv(layer, inputs):
    """keras-cv's PaddedConv2D with padding 1 and stride 2 on an even size (the UNet's downsampling):
    a 3x3 window at stride 2 never reaches the bottom / right padding, so only a row and a column of
    zeros go on top / left, by CONCATENATION (the converter leaves a PAD here, which the NPU has no
    int16 kernel for)."""
    import tensorflow as tf

    zeros_row = tf.zeros_like(inputs[:, :1])
    x = tf.concat([zeros_row, inputs], axis=1)
    x = tf.concat([tf.zeros_like(x[:, :, :1]), x], axis=2)
    return layer.conv2d(x)


def _takes_strided_padding(layer, inputs) -> bool:
    conv = layer.conv2d
    return (tuple(conv.strides) == (2, 2) and tuple(conv.kernel_size) == (3, 3) and conv.padding == "valid"
            and tuple(map(tuple, layer.padding2d.padding)) == ((1, 1), (1, 1)) and len(inputs.shape) == 4
            and inputs.shape[1] is not None and inputs.shape[2] is not None
            and inputs.shape[1] % 2 == 0 and inputs.shape[2] % 2 == 0)


def embedding_1d(layer, inputs):
    """keras-cv's CLIPEmbedding.call with 1-D gather indices."""
    import tensorflow as tf

    tokens, positions = inputs

    def lookup(embedding, ids):
        # (1, vocabulary, width) gathered on axis 1: the rows come out 3-D, as (1, tokens, width).
        # (A 2-D table gives a 2-D result the GPU lays out as a batch of rows and cannot reshape.)
        # A RESHAPE, not `[None]`: TensorFlow folds no op on a constant over 128 MiB, and the
        # converter folds a RESHAPE of a constant but keeps a STRIDED_SLICE. v1's 49,408 x 768
        # token table (145 MiB) then reached GATHER through a STRIDED_SLICE, and dynamic-range
        # quantization, which quantizes only a constant the GATHER reads directly, left it float32.
        table = tf.reshape(tf.convert_to_tensor(embedding.embeddings), (1, *embedding.embeddings.shape))
        rows = tf.gather(table, tf.reshape(ids, [-1]), axis=1)
        return tf.reshape(rows, [-1, ids.shape[1], rows.shape[-1]])

    return lookup(layer.token_embedding, tokens) + lookup(layer.position_embedding, positions)


def res_block(layer, inputs):
    """keras-cv's ResBlock.call with the timestep embedding reshaped to (batch, 1, 1, C) (keras-cv
    indexes it with new axes, a STRIDED_SLICE the GPU accelerator refuses)."""
    import tensorflow as tf

    inputs, embeddings = inputs
    x = inputs
    for sub in layer.entry_flow:
        x = sub(x)
    for sub in layer.embedding_flow:
        embeddings = sub(embeddings)
    x = x + tf.reshape(embeddings, (-1, 1, 1, embeddings.shape[-1]))
    for sub in layer.exit_flow:
        x = sub(x)
    return x + layer.residual_projection(inputs)


def geglu(layer, inputs):
    """keras-cv's GEGLU.call with the value and the gate as two matmuls over the halves of the
    dense layer's kernel (keras-cv slices one product in two: STRIDED_SLICE on the channels)."""
    import tensorflow as tf

    n = layer.output_dim
    kernel, bias = tf.convert_to_tensor(layer.dense.kernel), tf.convert_to_tensor(layer.dense.bias)

    def half(lo, hi):
        return tf.matmul(inputs, kernel[:, lo:hi]) + bias[lo:hi]

    x, gate = half(0, n), half(n, 2 * n)
    tanh_res = tf.tanh(gate * 0.7978845608 * (1 + 0.044715 * (gate**2)))
    return x * 0.5 * gate * (1 + tanh_res)


@contextlib.contextmanager
def device_graph() -> Iterator[None]:
    """While active, the layers above compute in their device formulations (module docstring), and
    attention is attention.py's export attention."""
    import keras
    from keras_cv.src.models.stable_diffusion.diffusion_model import GEGLU, ResBlock
    from keras_cv.src.models.stable_diffusion.text_encoder import CLIPEmbedding

    from .attention import export_attention

    group_norm, upsampling, clip_embedding = (keras.layers.GroupNormalization.call, keras.layers.UpSampling2D.call,
                                              CLIPEmbedding.call)
    layer_norm = keras.layers.LayerNormalization.call

    def layer_norm_call(self, inputs):
        return layer_norm_last(self, inputs) if _takes_layer_norm(self, inputs) else layer_norm(self, inputs)

    def group_norm_call(self, inputs):
        return group_norm_4d(self, inputs) if _takes_4d_group_norm(self, inputs) else group_norm(self, inputs)

    def upsampling_call(self, inputs):
        return upsample_nearest(self, inputs) if _takes_resize(self, inputs) else upsampling(self, inputs)

    def embedding_call(self, inputs):
        tokens, positions = inputs
        if len(tokens.shape) == 2 and tokens.shape[1] is not None and tuple(positions.shape) == tuple(tokens.shape):
            return embedding_1d(self, inputs)
        return clip_embedding(self, inputs)

    from keras_cv.src.models.stable_diffusion.padded_conv2d import PaddedConv2D

    padded_conv = PaddedConv2D.call

    def padded_conv_call(self, inputs):
        return strided_padded_conv(self, inputs) if _takes_strided_padding(self, inputs) else padded_conv(self, inputs)

    swapped = {ResBlock: res_block, GEGLU: geglu, PaddedConv2D: padded_conv_call}
    originals = {cls: cls.call for cls in swapped}
    for cls, call in swapped.items():
        cls.call = call
    keras.layers.GroupNormalization.call = group_norm_call
    keras.layers.LayerNormalization.call = layer_norm_call
    keras.layers.UpSampling2D.call = upsampling_call
    CLIPEmbedding.call = embedding_call
    try:
        with export_attention():
            yield
    finally:
        keras.layers.GroupNormalization.call = group_norm
        keras.layers.LayerNormalization.call = layer_norm
        keras.layers.UpSampling2D.call = upsampling
        CLIPEmbedding.call = clip_embedding
        for cls, call in originals.items():
            cls.call = call
