"""The Transformer++ attention core on ``keras.ops.dot_product_attention``, behind a guard.

:func:`softmax_core` has the signature of :func:`flashcore.lm.attention_core_softmax` and is what
the TF Transformer++ block and LM pass as ``transformer_block(..., core=softmax_core)``. It runs
Keras' fused attention op (``flash_attention=False``: the TensorFlow backend has no flash kernel;
its op is one einsum for the logits, a softmax in at least float32 and one einsum for the output,
which XLA compiles under ``tf.function(jit_compile=True)`` as any other op) behind the guard
:func:`can_use_fused_attention`, which sends to the spec's core what that op does not compute the
same way: a dropout keep-mask of the probabilities (``attn_keep``: it has no dropout). float16,
bfloat16, float32 and float64 all run there (float64 keeps its logits and softmax in float64).

A padding mask or segment_ids become its boolean ``mask`` with every query's own key allowed
(:func:`flashcore.lm.fused_softmax_allowed`): the op averages every value on a row with no allowed
key where the spec gives zeros, and the block zeroes padded rows afterwards. Past
:data:`QUERY_BLOCK` positions it runs one call per block of query rows, a causal block against
only the keys up to its last row (about half the work of the full causal T x T when there are
many blocks). The gradient keeps each block's probabilities, (b, n, T, T) in all as in the spec,
and XLA may keep several blocks' scores alive at once.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from flashcore.lm import attention_core_softmax, fused_softmax_allowed

from .xp import xp as tf_xp

__all__ = ["can_use_fused_attention", "softmax_core", "softmax_core_path", "QUERY_BLOCK"]

QUERY_BLOCK = 1024
"""Query rows per ``keras.ops.dot_product_attention`` call in :func:`softmax_core`."""

FUSED_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def can_use_fused_attention(q, config, mask=None, segment_ids=None, attn_keep=None) -> bool:
    """Whether :func:`softmax_core` runs ``keras.ops.dot_product_attention`` for these inputs
    (else the spec's core): no dropout keep-mask ``attn_keep``, q (b, n, t, hd) float16,
    bfloat16, float32 or float64. Masks, segments, ``tf.function`` and XLA are all fine."""
    return attn_keep is None and getattr(q, "dtype", None) in FUSED_DTYPES


def softmax_core_path(q, config, mask=None, segment_ids=None, attn_keep=None) -> str:
    """'fused' or 'spec': which core :func:`softmax_core` takes."""
    return "fused" if can_use_fused_attention(q, config, mask, segment_ids, attn_keep) else "spec"


def softmax_core(
    q,
    k,
    v,
    *,
    config,
    mask=None,
    segment_ids=None,
    attn_keep=None,
    xp=None,
    block: int | None = None,
):
    """q, k, v: (b, n, t, hd) -> (b, n, t, hd); see :func:`flashcore.lm.attention_core_softmax`.

    ``keras.ops.dot_product_attention`` when :func:`can_use_fused_attention` (and k, v share q's
    dtype), else the spec's core. ``block``: query rows per call (None: :data:`QUERY_BLOCK`).
    """
    same = k.dtype == q.dtype and v.dtype == q.dtype
    if not (same and can_use_fused_attention(q, config, mask, segment_ids, attn_keep)):
        return attention_core_softmax(
            q,
            k,
            v,
            config=config,
            mask=mask,
            segment_ids=segment_ids,
            attn_keep=attn_keep,
            xp=xp or tf_xp,
        )
    t = q.shape[2]
    block = QUERY_BLOCK if block is None else int(block)
    if block < 1:
        raise ValueError(f"block must be a positive number of query rows, got {block}")
    causal = bool(config.causal)
    qt, kt, vt = (tf.transpose(a, (0, 2, 1, 3)) for a in (q, k, v))  # (b, t, n, hd)
    scale = np.float64(1.0 / math.sqrt(q.shape[-1]))  # (a Python float is cast via float32)
    pieces = []
    for start in range(0, t, block):
        stop = min(start + block, t)
        keys = stop if causal else t  # a causal block sees no key past its last row
        qb, kb, vb = qt[:, start:stop], kt[:, :keys], vt[:, :keys]
        if mask is None and segment_ids is None and (not causal or start == 0):
            allowed, is_causal = None, causal  # (the first block: the top-left triangle)
        else:
            allowed = fused_softmax_allowed(
                config,
                tf.range(start, stop),
                tf.range(keys),
                None if mask is None else mask[:, :keys],
                None if segment_ids is None else segment_ids[:, :keys],
                None if segment_ids is None else segment_ids[:, start:stop],
                xp=tf_xp,
            )  # (b or 1, 1, r, keys)
            is_causal = False
        pieces.append(
            keras.ops.dot_product_attention(
                qb, kb, vb, mask=allowed, scale=scale, is_causal=is_causal, flash_attention=False
            )
        )  # (b, r, n, hd)
    out = pieces[0] if len(pieces) == 1 else tf.concat(pieces, axis=1)
    return tf.transpose(out, (0, 2, 1, 3))
