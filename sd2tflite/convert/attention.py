"""Attention in query blocks, for the exported graph only.

keras-cv's CrossAttention computes the whole score matrix at once: at 512x512 the 64x64-level
self-attention holds 8 heads x 4096 x 4096 floats (0.5 GB) for the scores and as much again for
the softmax, and LiteRT's activation arena must fit them. Softmax is per row, so computing the
rows in blocks of queries gives the same numbers (bit for bit on the tiny UNet) while only one
block's scores are alive at a time. `query_blocks()` swaps that computation in while a model is
traced for export; the Keras model, its weights and every other use of it are unchanged.

Keras and keras-cv are imported when used (plan.py reads QUERY_BLOCK for its build keys).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

# Rows of the score matrix computed at once: 8 heads x 1024 x 4096 floats = 128 MiB at 512x512.
# Part of every file's build key: another value is another graph.
QUERY_BLOCK = 1024


def _blocked_call(self, inputs, context=None):
    """CrossAttention.call with the scores computed QUERY_BLOCK query rows at a time."""
    import keras
    from keras_cv.src.backend import ops
    from keras_cv.src.models.stable_diffusion.diffusion_model import td_dot

    if context is None:
        context = inputs
    length = inputs.shape[1]
    q, k, v = self.to_q(inputs), self.to_k(context), self.to_v(context)
    q = ops.transpose(ops.reshape(q, (-1, length, self.num_heads, self.head_size)), (0, 2, 1, 3))
    k = ops.transpose(ops.reshape(k, (-1, context.shape[1], self.num_heads, self.head_size)), (0, 2, 3, 1))
    v = ops.transpose(ops.reshape(v, (-1, context.shape[1], self.num_heads, self.head_size)), (0, 2, 1, 3))
    blocks = []
    for start in range(0, length, QUERY_BLOCK):
        block_q = q[:, :, start:start + QUERY_BLOCK, :]
        if blocks:
            # A data dependency of exactly zero on the previous block: the converter would
            # otherwise schedule every block's scores first, and all of them would be alive at once.
            block_q = block_q + ops.min(blocks[-1]) * 0.0
        scores = td_dot(block_q, k) * self.scale
        blocks.append(td_dot(keras.activations.softmax(scores), v))
    attn = blocks[0] if len(blocks) == 1 else ops.concatenate(blocks, axis=2)
    out = ops.reshape(ops.transpose(attn, (0, 2, 1, 3)), (-1, length, self.num_heads * self.head_size))
    return self.out_proj(out)


@contextlib.contextmanager
def query_blocks() -> Iterator[None]:
    """While active, every keras-cv CrossAttention computes its scores in query blocks."""
    from keras_cv.src.models.stable_diffusion.diffusion_model import CrossAttention

    original = CrossAttention.call
    CrossAttention.call = _blocked_call
    try:
        yield
    finally:
        CrossAttention.call = original
