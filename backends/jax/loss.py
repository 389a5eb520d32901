"""The JAX chunk loop of the LM loss (:data:`flashcore.loss.LossCore`): a fused linear
cross-entropy as a ``jax.custom_vjp`` over ``lax.scan``.

The tokens are padded to whole chunks (weight 0) and scanned chunk by chunk. Undifferentiated,
the scan sums :func:`flashcore.loss.chunk_nll_sum` (the head and the cross-entropy, the spec's).
Differentiated, the forward scan takes each chunk's value and gradient (``jax.value_and_grad``)
with respect to the chunk's hidden states and the head's weights at once, carrying the head's
gradient and stacking the hidden states' one; the chunk's logits never leave the scan body. The
backward scales the two by the incoming cotangent.

    loss = flashcore.lm_loss(params, x, y, config=cfg, xp=xp, loss_core=chunked_loss)
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

__all__ = ["chunked_loss"]


def _chunks(h, targets, w, chunk: int):
    """(n, d), (n,), (n,) -> (c, k, d), (c, k), (c, k), padded with weight 0: c = ceil(n /
    chunk) chunks of k = ceil(n / c) <= chunk tokens (the least padding)."""
    n, d = h.shape
    c = max(1, -(-n // chunk))
    chunk = -(-n // c)
    pad = c * chunk - n
    h = jnp.pad(h, ((0, pad), (0, 0))).reshape(-1, chunk, d)
    targets = jnp.pad(targets, (0, pad)).reshape(-1, chunk)
    w = jnp.pad(w, (0, pad)).reshape(-1, chunk)
    return h, targets, w


@partial(jax.custom_vjp, nondiff_argnums=(0, 5))
def _loss(fn, weights, h, targets, w, chunk):
    hs, ts, ws = _chunks(h, targets, w, chunk)

    def body(total, xs):
        return total + fn(weights, *xs), None

    zero = jnp.zeros((), w.dtype)
    total, _ = jax.lax.scan(body, zero, (hs, ts, ws))
    return total


def _loss_fwd(fn, weights, h, targets, w, chunk):
    n = h.shape[0]
    hs, ts, ws = _chunks(h, targets, w, chunk)
    value_and_grad = jax.value_and_grad(fn, argnums=(0, 1))

    def body(carry, xs):
        total, grad_w = carry
        hc, tc, wc = xs
        part, (gw, gh) = value_and_grad(weights, hc, tc, wc)
        grad_w = jax.tree_util.tree_map(jnp.add, grad_w, gw)
        return (total + part, grad_w), gh

    zeros = jax.tree_util.tree_map(jnp.zeros_like, weights)
    (total, grad_w), grad_h = jax.lax.scan(body, (jnp.zeros((), w.dtype), zeros), (hs, ts, ws))
    grad_h = grad_h.reshape(-1, h.shape[1])[:n]
    return total, (grad_w, grad_h, targets, w)


def _loss_bwd(fn, chunk, res, g):
    grad_w, grad_h, targets, w = res
    scale = lambda a: (a * g.astype(a.dtype)).astype(a.dtype)  # noqa: E731
    return (
        jax.tree_util.tree_map(scale, grad_w),
        scale(grad_h),
        None,
        jnp.zeros_like(w),
    )


_loss.defvjp(_loss_fwd, _loss_bwd)


def chunked_loss(fn, weights: dict, h: jax.Array, targets, w, chunk: int) -> jax.Array:
    """sum over chunks of ``fn(weights, h_c, targets_c, w_c)``, its gradient taken chunk by chunk
    (see the module doc). h: (n, d); targets: (n,) ints; w: (n,) float; weights: {name: array} of
    the head -> (), differentiable with respect to h and weights."""
    return _loss(fn, weights, h, targets, w, chunk)
