"""The Transformer++ attention core in TensorFlow's own ops, behind a guard.

:func:`softmax_core` has the signature of :func:`flashcore.lm.attention_core_softmax` and is what
the ``softmax`` fast core of :data:`flashcore.tf.xp.KERNELS` (the backend contract): per head
S = Q K^T / sqrt(hd) (one batched ``tf.linalg.matmul`` in the input dtype), ``tf.nn.softmax`` of S
in float32 (float64 for float64 input) after ``tf.where`` of the mask, and P V, the graph XLA
fuses under ``tf.function(jit_compile=True)``. It is the computation of
``keras.ops.dot_product_attention`` on the TensorFlow backend (which has no flash kernel), kept
in the spec's (b, n, t, hd) layout: Keras' op takes (b, t, n, hd), and its einsums over that
layout run about 2x slower under XLA on CPU (fwd + bwd, T = 1024, 8 heads of 64, not causal,
this machine: Keras' op 227-237 ms, this graph 119 ms in one block, the spec's core 141 ms). The guard :func:`can_use_fused_attention` sends to the spec's core what this core
does not compute: a dropout keep-mask of the probabilities (``attn_keep``).

A padding mask or segment_ids become a boolean mask with every query's own key allowed
(:func:`flashcore.lm.fused_softmax_allowed`), so that no row is empty (a softmax over nothing
but masked entries is the mean of every value where the spec gives zeros); the block zeroes padded
rows afterwards. Past :data:`QUERY_BLOCK` positions it runs one block of query rows at a time, a
causal block against only the keys up to its last row (about half the work of the full causal
T x T when there are many blocks). The gradient keeps each block's probabilities, (b, n, T, T) in
all as in the spec, and XLA may keep several blocks' scores alive at once.
"""

from __future__ import annotations

import math

import tensorflow as tf

from flashcore.kernels import Call
from flashcore.lm import attention_core_softmax, fused_softmax_allowed

__all__ = [
    "can_use_fused_attention",
    "softmax_core",
    "softmax_core_path",
    "softmax_unsupported",
    "QUERY_BLOCK",
]

QUERY_BLOCK = 512
"""Query rows per block in :func:`softmax_core` (fwd + bwd at T = 1024, causal, 8 heads of 64,
under XLA on this CPU: 105 ms in one block of 1024, 77 ms in blocks of 512, 136 ms the spec's)."""

FUSED_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def can_use_fused_attention(q, config, mask=None, segment_ids=None, attn_keep=None) -> bool:
    """Whether :func:`softmax_core` runs its own graph for these inputs (else the spec's core): no
    dropout keep-mask ``attn_keep``, q (b, n, t, hd) float16, bfloat16, float32 or float64.
    Masks, segments, ``tf.function`` and XLA are all fine."""
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

    This module's graph when :func:`can_use_fused_attention` (and k, v share q's dtype), else
    the spec's core. ``block``: query rows per block (None: :data:`QUERY_BLOCK`).
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
            xp=xp,
        )
    return _fused(q, k, v, config, mask, segment_ids, block, xp)


def softmax_unsupported(config, call: Call) -> str | None:
    """The guard of :func:`softmax_core` in :data:`flashcore.tf.xp.KERNELS`: None when
    :func:`can_use_fused_attention` passes, else why not."""
    if can_use_fused_attention(call.x, config, call.mask, call.segment_ids, call.attn_keep):
        return None
    return "the blocked TF softmax core takes no attn_keep"


def _fused(q, k, v, config, mask, segment_ids, block, xp):
    """The graph of :func:`softmax_core` (its arguments, checked by the guard); ``xp``: the TF
    namespace (:data:`flashcore.tf.xp.xp`) the masks are built in."""
    if xp is None:
        raise TypeError("softmax_core needs xp= (the TF namespace, flashcore.tf.xp.xp)")
    t = q.shape[2]
    block = QUERY_BLOCK if block is None else int(block)
    if block < 1:
        raise ValueError(f"block must be a positive number of query rows, got {block}")
    causal = bool(config.causal)
    wide = tf.float64 if q.dtype == tf.float64 else tf.float32
    scale = tf.constant(1.0 / math.sqrt(q.shape[-1]), wide)
    pieces = []
    for start in range(0, t, block):
        stop = min(start + block, t)
        keys = stop if causal else t  # a causal block sees no key past its last row
        allowed = fused_softmax_allowed(
            config,
            tf.range(start, stop),
            tf.range(keys),
            None if mask is None else mask[:, :keys],
            None if segment_ids is None else segment_ids[:, :keys],
            None if segment_ids is None else segment_ids[:, start:stop],
            xp=xp,
        )  # (b or 1, 1, r, keys) or None
        s = tf.linalg.matmul(
            q[:, :, start:stop], k[:, :, :keys], transpose_b=True
        )  # (b, n, r, keys)
        s = tf.cast(s, wide) * scale
        if allowed is not None:
            s = tf.where(allowed, s, tf.constant(-1e30, wide))
        p = tf.cast(tf.nn.softmax(s, axis=-1), v.dtype)
        pieces.append(tf.linalg.matmul(p, v[:, :, :keys]))  # (b, n, r, hd)
    return pieces[0] if len(pieces) == 1 else tf.concat(pieces, axis=2)
