"""The namespace the JAX backend hands the spec: ``jax.numpy`` plus ``jax.nn.silu`` and
``jax.scipy.special.erf`` (see :func:`flashcore._xp.extended`). Use :data:`xp`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flashcore._xp import extended

__all__ = ["xp"]


def _concrete(a) -> np.ndarray | None:
    """A NumPy copy of ``a``, or None for a tracer (inside jit / grad: the values are unknown)."""
    return None if isinstance(a, jax.core.Tracer) else np.asarray(a)


xp = extended(
    jnp,
    "flashcore.jax.xp",
    silu=jax.nn.silu,
    erf=jax.scipy.special.erf,
    concrete=_concrete,
)
