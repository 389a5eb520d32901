"""``x64(on)``: ``jax.enable_x64(on)`` after ``jax.clear_caches()``.

Inside the enable_x64 context JAX can reuse a jit compiled earlier in the process with the flag
in its other state, and then computes in float32 where float64 was asked for (seen: the jitted
decode step of ``flashcore generate`` reused by a float64 prefill test run after it in one
worker). Clearing the caches first makes each float64 test independent of what ran before."""

from __future__ import annotations

import jax


def x64(on: bool = True):
    """A context manager: JAX's 64-bit mode ``on`` (or off), with empty jit caches."""
    jax.clear_caches()
    return jax.enable_x64(on)
