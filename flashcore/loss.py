"""The LM's cross-entropy, plain and chunked (a fused linear cross-entropy), as array-API code.

    cross_entropy(logits, targets, mask=None)                              -> ()   (b, t, v) given
    linear_cross_entropy(params, h, targets, mask=None, config=LMConfig)   -> ()   from (b, t, d)

Both are the mean over the counted tokens of ``nll = logsumexp(z) - z[target]``, z = the logits of
one token. :func:`cross_entropy` takes logits that already exist. :func:`linear_cross_entropy`
takes the final hidden states and runs the LM head (:func:`flashcore.loss.head`, tied or untied, with
its bias) and the cross-entropy over chunks of ``chunk`` tokens, so that the (tokens, v) logits
only ever exist one chunk at a time: :func:`chunk_nll_sum` is the math of one chunk, written once
here; how the chunks are looped and differentiated is the backend's ``core`` (a
:data:`LossCore`): each backend runs :func:`chunk_nll_sum` and its gradient with respect to the
chunk's hidden states and the head's weights one chunk at a time in the forward pass, keeps only
those gradients ((tokens, d) and the head's (d, v)), and scales them by the incoming cotangent in
the backward pass. Without a core (NumPy, array-api-strict, or any namespace under plain
autodiff) the chunks are summed in a Python loop: the same values, without the memory saving
under autodiff.

The target logit is gathered with ``take`` on the flattened chunk (no one-hot, no (tokens, v)
comparison). Logits in bfloat16 / float16 are upcast to float32 before the softmax.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import kernels
from ._xp import const, dtype_name, is_low_precision, namespace
from .checks import check_mask, check_tokens
from .config import LMConfig

__all__ = [
    "CHUNK_ELEMENTS",
    "LossCore",
    "log_softmax",
    "token_nll",
    "cross_entropy",
    "counted",
    "head",
    "head_weights",
    "chunk_nll_sum",
    "chunk_tokens",
    "chunked_sum",
    "linear_cross_entropy",
]

# The logits of one chunk hold at most this many entries (256 MiB in float32): 512 tokens at
# v = 128K, 2048 at 32K, 256K tokens (every token of a batch) at v = 256. Larger chunks cost
# memory; much smaller ones re-read and re-write the head's (d, v) gradient once per chunk.
CHUNK_ELEMENTS = 2**26

# core(fn, weights, h, targets, w, chunk) -> () = sum over chunks of fn(weights, h_c, targets_c,
# w_c); h: (n, d); targets: (n,) ints; w: (n,) float weights (0 at tokens not counted); weights:
# {canonical name: array} of the head; differentiable with respect to h and weights.
LossCore = Callable[..., object]


def log_softmax(z, xp):
    """z - logsumexp(z) over the last axis, logsumexp shifted by the row's max. z: (..., v) ->
    (..., v). The backend's ``Kernels.log_softmax_last`` where it has one (a fused kernel: two
    passes over z forward and one backward, where the formula takes about ten), the formula
    otherwise."""
    fused = kernels.of(xp).log_softmax_last
    if fused is not None:
        return fused(z)
    m = xp.max(z, axis=-1, keepdims=True)  # (..., 1)
    shifted = z - m
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))


def token_nll(z, targets, xp):
    """Negative log-likelihood of each target: logsumexp(z) - z[target], in at least float32.
    z: (n, v) logits; targets: (n,) ints in [0, v) -> (n,)."""
    if is_low_precision(z.dtype):
        z = xp.astype(z, xp.float32)
    n, v = z.shape
    if n * v >= 2**31 and dtype_name(targets.dtype) != "int64":
        raise ValueError(
            f"{n} x {v} logits have more entries than {dtype_name(targets.dtype)} indices reach: "
            "give int64 targets, or fewer tokens at a time (linear_cross_entropy's chunk)"
        )
    rows = const(xp, np.arange(n, dtype=np.int64) * v, like=targets, dtype=targets.dtype)
    return -xp.take(xp.reshape(log_softmax(z, xp), (-1,)), rows + targets, axis=0)  # (n,)


def _weights(mask, targets, dtype, xp):
    """(n,) weights of the tokens, 1 where counted and 0 elsewhere. targets: (n,) ints; mask:
    (b, t) bool or None (every token)."""
    if mask is None:
        return xp.ones_like(targets, dtype=dtype)
    return xp.astype(xp.reshape(mask, (-1,)), dtype)


def _mean(total, w, xp):
    """total / (number of counted tokens), at least 1."""
    count = xp.sum(w)
    return total / xp.maximum(count, xp.ones_like(count))


def cross_entropy(logits, targets, mask=None, xp=None):
    """Mean cross-entropy in nats of logits that exist already. logits: (b, t, v); targets: (b, t)
    ints; mask: (b, t) bool or None (positions to count) -> (). Computed in at least float32."""
    xp = namespace(logits, xp=xp)
    v = logits.shape[-1]
    z = xp.reshape(logits, (-1, v))  # (n, v)
    t = xp.reshape(targets, (-1,))  # (n,)
    nll = token_nll(z, t, xp)  # (n,)
    w = _weights(mask, t, nll.dtype, xp)
    return _mean(xp.sum(nll * w), w, xp)


def counted(mask, loss_mask):
    """The positions a loss counts: the real ones (``mask``) among those of ``loss_mask``; each
    (b, t) bool or None (all)."""
    if loss_mask is None:
        return mask
    return loss_mask if mask is None else loss_mask & mask


def head(params: dict, h, config: LMConfig, xp):
    """Logits from final hidden states. h: (..., d) -> (..., v)."""
    if config.tie_embeddings:
        logits = xp.matmul(h, xp.permute_dims(params["embed.weight"], (1, 0)))
    else:
        logits = xp.matmul(h, params["head.kernel"])
    if config.head_bias:
        logits = logits + params["head.bias"]
    return logits


def head_weights(params: dict, config: LMConfig) -> dict:
    """The weights :func:`flashcore.loss.head` reads: ``embed.weight`` (v, d) when tied, else
    ``head.kernel`` (d, v); ``head.bias`` (v,) with a head bias."""
    names = ["embed.weight" if config.tie_embeddings else "head.kernel"]
    if config.head_bias:
        names.append("head.bias")
    return {k: params[k] for k in names}


def chunk_nll_sum(weights: dict, h, targets, w, *, config: LMConfig, xp):
    """sum_i w_i nll_i over one chunk: the head on h, then :func:`token_nll`.
    weights: :func:`head_weights`; h: (n, d); targets: (n,) ints; w: (n,) float -> ()."""
    return xp.sum(token_nll(head(weights, h, config, xp), targets, xp) * w)


def chunk_tokens(vocab_size: int, elements: int = CHUNK_ELEMENTS) -> int:
    """Tokens per chunk: as many as keep one chunk's logits within ``elements`` entries (>= 1)."""
    return max(1, elements // max(1, int(vocab_size)))


def chunked_sum(fn, weights: dict, h, targets, w, chunk: int, xp=None):
    """The spec's :data:`LossCore`: sum of ``fn(weights, h_c, targets_c, w_c)`` over the chunks
    of ``chunk`` rows, in a Python loop (h: (n, d) with n known)."""
    n = h.shape[0]
    cuts = [(i, min(i + chunk, n)) for i in range(0, n, chunk)]  # in bounds (array API slicing)
    parts = [fn(weights, h[i:j, ...], targets[i:j], w[i:j]) for i, j in cuts]
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def linear_cross_entropy(
    params: dict,
    h,
    targets,
    mask=None,
    *,
    config: LMConfig,
    xp=None,
    core: LossCore | None = None,
    chunk: int | None = None,
):
    """Mean cross-entropy in nats of ``head(h)``, one chunk of tokens at a time.

    h: (b, t, d) final hidden states (:func:`flashcore.lm.lm_hidden`); targets: (b, t) ints;
    mask: (b, t) bool or None (positions to count) -> (). Equal to
    ``cross_entropy(head(params, h), targets, mask)``. ``core``: the backend's chunk loop and
    gradient (None: :func:`chunked_sum`); ``chunk``: tokens per chunk (None:
    :func:`chunk_tokens` of the vocabulary size).
    """
    xp = namespace(h, xp=xp)
    b, t = check_tokens(targets, config.vocab_size, xp)
    check_mask(mask, b, t)
    d = h.shape[-1]
    h2 = xp.reshape(h, (-1, d))  # (n, d)
    t2 = xp.reshape(targets, (-1,))  # (n,)
    w = _weights(mask, t2, xp.float32 if is_low_precision(h.dtype) else h.dtype, xp)  # (n,)
    if tuple(h.shape[:-1]) != (b, t):
        raise ValueError(f"h {tuple(h.shape)} must be (batch, time, d) with targets' {(b, t)}")
    chunk = chunk_tokens(config.vocab_size) if chunk is None else int(chunk)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 token, got {chunk}")

    def fn(weights, hc, tc, wc):
        return chunk_nll_sum(weights, hc, tc, wc, config=config, xp=xp)

    weights = head_weights(params, config)
    if core is None:
        total = chunked_sum(fn, weights, h2, t2, w, chunk, xp=xp)
    else:
        total = core(fn, weights, h2, t2, w, chunk)
    return _mean(total, w, xp)
