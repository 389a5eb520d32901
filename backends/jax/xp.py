"""The namespace the JAX backend hands the spec: ``jax.numpy`` plus ``jax.nn.silu`` and
``jax.scipy.special.erf`` (see :func:`flashcore._xp.extended`), with ``cumulative_sum`` as the
spec's pairwise prefix sum on CPU. Use :data:`xp`.

Why: ``jnp.cumsum`` lowers to a reduce-window over the whole axis, which XLA's CPU backend runs
in O(n^2) adds, and its transpose is another. For FLASH's causal chunk states (b, g, s, e) that
is g^2 / 2 state-sized adds per layer, forward and backward: at 64K tokens (g = 256, s = 128,
e = 1024) 1.16 s against 0.32 s for :func:`flashcore._xp.pairwise_cumulative_sum` (fwd + bwd,
2 threads). GPU (a CUB kernel) and TPU keep ``jnp.cumulative_sum``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flashcore._xp import extended, pairwise_cumulative_sum

__all__ = ["xp"]


def _concrete(a) -> np.ndarray | None:
    """A NumPy copy of ``a``, or None for a tracer (inside jit / grad: the values are unknown)."""
    return None if isinstance(a, jax.core.Tracer) else np.asarray(a)


def cumulative_sum(x, /, *, axis=None, dtype=None, include_initial=False):
    """``jnp.cumulative_sum`` with the same arguments, as
    :func:`flashcore._xp.pairwise_cumulative_sum` on CPU (O(n) adds in log2(n) levels; jnp's
    reduce-window lowering is O(n^2) there)."""
    x = jnp.asarray(x)
    if jax.default_backend() != "cpu" or x.ndim == 0:
        return jnp.cumulative_sum(x, axis=axis, dtype=dtype, include_initial=include_initial)
    if axis is None:
        if x.ndim > 1:
            raise ValueError("cumulative_sum: axis is required for arrays of rank > 1")
        axis = 0
    axis = axis % x.ndim
    if dtype is not None:
        x = x.astype(dtype)
    elif x.dtype == jnp.bool_ or jnp.issubdtype(x.dtype, jnp.integer):
        x = x.astype(jnp.cumsum(jnp.zeros((1,), x.dtype)).dtype)  # jnp's promotion
    out = pairwise_cumulative_sum(jnp, x, axis)
    if include_initial:
        zero_shape = list(x.shape)
        zero_shape[axis] = 1
        out = jnp.concatenate([jnp.zeros(zero_shape, out.dtype), out], axis=axis)
    return out


xp = extended(
    jnp,
    "flashcore.jax.xp",
    silu=jax.nn.silu,
    erf=jax.scipy.special.erf,
    concrete=_concrete,
    cumulative_sum=cumulative_sum,
)
