"""Attention as exported: UNet attention in query blocks, CLIP's causal mask kept finite.

keras-cv's CrossAttention computes the whole score matrix at once: at 512x512 the 64x64-level
self-attention holds 8 heads x 4096 x 4096 floats (0.5 GB) for the scores and as much again for
the softmax, and LiteRT's activation arena must fit them. Softmax is per row, so computing the
rows in blocks of queries gives the same numbers while only one block's scores are alive at a
time. The scale multiplies the queries rather than the scores (same maths, rounding aside).

keras-cv's CLIPAttention adds a causal mask of -inf to the text encoder's scores. In float that
is exact; in int8 the scores share one range per tensor, and a range reaching -inf leaves no
levels for the real scores (the int8 text encoder of the trained tiny model drew at chance). The
exported graph instead sets each masked score to the mean of the row's kept scores minus
CAUSAL_MASK_MARGIN: softmax gives it exp(-margin) at most relative to the row's largest kept score
(the mean is at most the largest), zero in float32 terms, and the tensor's range grows by the margin
at most. (The mean, not the row's minimum: the Qualcomm NPU has no int16 REDUCE_MIN / REDUCE_MAX.)

`export_attention()` swaps both in while a model is traced for export; the Keras model, its
weights and every other use of it are unchanged.

Keras and keras-cv are imported when used (plan.py reads QUERY_BLOCK for its build keys).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

# Rows of the score matrix computed at once: 8 heads x 1024 x 4096 floats = 128 MiB at 512x512.
# Part of every file's build key: another value is another graph.
QUERY_BLOCK = 1024
# The UNet attention graph's revision, part of the UNet files' build key: 2 scales the queries
# instead of the scores and multiplies 4-D tensors (no integer op between the float attention
# operators of an int8 file; float results change at rounding level only).
UNET_ATTENTION_REVISION = 2
# How far below the mean of a row's kept scores a masked score goes: exp(-20) = 2e-9 of the largest
# kept score's weight, at float32's resolution even summed over 77 tokens. Part of the build key too.
CAUSAL_MASK_MARGIN = 20.0


def _blocked_call(self, inputs, context=None):
    """CrossAttention.call with the scores computed QUERY_BLOCK query rows at a time."""
    import keras
    from keras_cv.src.backend import ops

    if context is None:
        context = inputs
    length = inputs.shape[1]
    q, k, v = self.to_q(inputs) * self.scale, self.to_k(context), self.to_v(context)
    q = ops.transpose(ops.reshape(q, (-1, length, self.num_heads, self.head_size)), (0, 2, 1, 3))
    k = ops.transpose(ops.reshape(k, (-1, context.shape[1], self.num_heads, self.head_size)), (0, 2, 3, 1))
    v = ops.transpose(ops.reshape(v, (-1, context.shape[1], self.num_heads, self.head_size)), (0, 2, 1, 3))
    blocks = []
    for start in range(0, length, QUERY_BLOCK):
        # One block: no slice (a STRIDED_SLICE that copies its input splits the GPU accelerator's graph).
        block_q = q if length <= QUERY_BLOCK else q[:, :, start:start + QUERY_BLOCK, :]
        if blocks:
            # A data dependency of exactly zero on the previous block: the converter would
            # otherwise schedule every block's scores first, and all of them would be alive at once.
            block_q = block_q + ops.min(blocks[-1]) * 0.0
        # Score matmul, softmax, value matmul with nothing between them (4-D matmuls, no reshapes;
        # the scale is on the queries): int8 keeps those three float, and any integer operator
        # between them would make the quantizer convert every score to int8 and back.
        scores = ops.matmul(block_q, k)  # (batch, heads, block, context)
        blocks.append(ops.matmul(keras.activations.softmax(scores), v))
    attn = blocks[0] if len(blocks) == 1 else ops.concatenate(blocks, axis=2)
    out = ops.reshape(ops.transpose(attn, (0, 2, 1, 3)), (-1, length, self.num_heads * self.head_size))
    return self.out_proj(out)


def _finite_mask_attention(self, inputs):
    """CLIPAttention.call (causal, no mask given) with the mask as finite scores (module docstring)."""
    import numpy as np
    from keras_cv.src.backend import ops

    _, length, embed_dim = inputs.shape
    heads = lambda x: ops.transpose(ops.reshape(x, (-1, length, self.num_heads, self.head_dim)), (0, 2, 1, 3))  # noqa: E731
    q, k, v = heads(self.q_proj(inputs) * self.scale), heads(self.k_proj(inputs)), heads(self.v_proj(inputs))
    scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))  # (batch, heads, query, key)
    keep = np.tril(np.ones((1, 1, length, length), np.float32))  # a query sees itself and earlier tokens
    # The mean of the row's kept scores, as a MEAN of the scores weighted 1/count on the kept ones
    # (times the row length): the Qualcomm NPU has no int16 REDUCE_MIN or REDUCE_MAX.
    per_kept = keep / keep.sum(axis=-1, keepdims=True)
    floor = ops.mean(scores * per_kept, axis=-1, keepdims=True) * float(length) - CAUSAL_MASK_MARGIN
    # kept: the score; masked: the floor. Written so that the constant mask multiplies a full-size
    # tensor: Android's GPU delegate refuses a MUL broadcasting [.., 77, 1] against [.., 77, 77].
    scores = (scores - floor) * keep + floor
    out = ops.matmul(ops.softmax(scores, axis=-1), v)
    return self.out_proj(ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (-1, length, embed_dim)))


@contextlib.contextmanager
def export_attention() -> Iterator[None]:
    """While active, every keras-cv CrossAttention computes its scores in query blocks and every
    causal CLIPAttention masks with finite scores."""
    from keras_cv.src.models.stable_diffusion.diffusion_model import CrossAttention
    from keras_cv.src.models.stable_diffusion.text_encoder import CLIPAttention

    originals = CrossAttention.call, CLIPAttention.call

    def clip_call(self, inputs, attention_mask=None):
        if attention_mask is not None or not self.causal:  # keras-cv's encoders never pass a mask
            return originals[1](self, inputs, attention_mask)
        return _finite_mask_attention(self, inputs)

    CrossAttention.call, CLIPAttention.call = _blocked_call, clip_call
    try:
        yield
    finally:
        CrossAttention.call, CLIPAttention.call = originals
