"""FLASH's causal linear branch as a scan on XLA's CPU backend: :func:`prefix_state_attend`, the
JAX namespace's version of :func:`flashcore.ops.prefix_state_attend`, behind a guard.

    out_g = lq_g S_g,   S_0 = 0,   S_{g+1} = S_g + lk_g^T v_g * inv_c      (b, s, e) per step

The spec's formula (:func:`flashcore.ops.prefix_state_attend_plain`, the oracle) materialises
every chunk's state, (b, g, s, e): at 64K tokens (g = 256, s = 128, e = 1024) 128 MB per layer in
float32, written, prefix-summed in log2(g) passes and read again, and as much for the backward.
The scan keeps one running state (512 KB per batch row, in cache) and saves nothing but its
inputs; its backward (``jax.custom_vjp``) is two more scans: one in chunk order that rebuilds
S_g for dlq_g = dout_g S_g^T, and one in reverse order that carries R_g = sum_{h>g} lq_h^T dout_h
for dlk_g = v_g R_g^T * inv_c and dv_g = lk_g R_g * inv_c. That is one more pass of chunk-state
products than the spec's backward (7 against 6 (c, s) x (s, e) products per chunk) for no
(b, g, s, e) array at all. fwd + bwd on a 2-core AMD EPYC VM, float32, us/token: 13.3 against
16.5-19.9 at 64K, 13.8 against 16.7 at 16K, about equal at 4K, 13.2 against 10.2 at 1K; so the
guard takes it from :data:`MIN_CHUNKS` chunks on. bfloat16 / float16 inputs are multiplied and
summed in float32 inside the scans (XLA's CPU backend has no native bf16 GEMM; bf16 operands in
the loop made it 3x slower at 64K) and the results cast back: more accurate than the spec's
bf16 formula, and inside its tolerance.

It is a ``jax.custom_vjp``: ``jit``, ``grad``, ``vmap`` work; forward-mode autodiff (``jax.jvp``,
``jacfwd``) through it does not, as through the Pallas kernel; pass
``flashcore.layers.attention_core_flash`` with the plain namespace (``core=`` of
:func:`flashcore.jax.functional.apply`) or set :data:`MIN_CHUNKS` to None for forward mode.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from flashcore.ops import prefix_state_attend_plain

__all__ = ["prefix_state_attend", "can_use_scan", "scan_prefix_state_attend", "MIN_CHUNKS"]

MIN_CHUNKS: int | None = 32
"""The fewest chunks g for which the guard takes the scan (None: never)."""


def can_use_scan(lq, lk, v) -> bool:
    """True when :func:`prefix_state_attend` runs the scan: jax's CPU backend, floating inputs of
    one dtype, and at least :data:`MIN_CHUNKS` chunks (below that the spec's few states are cheap
    and its batched matmuls faster). lq, lk: (b, g, c, s); v: (b, g, c, e)."""
    if MIN_CHUNKS is None or jax.default_backend() != "cpu":
        return False
    if lq.ndim != 4 or lk.shape != lq.shape or v.shape[:3] != lq.shape[:3]:
        return False
    if not (lq.dtype == lk.dtype == v.dtype and jnp.issubdtype(v.dtype, jnp.floating)):
        return False
    return lq.shape[1] >= MIN_CHUNKS


def prefix_state_attend(lq, lk, v, inv_c: float):
    """out_g = lq_g sum_{h<g} lk_h^T v_h * inv_c: :func:`scan_prefix_state_attend` when
    :func:`can_use_scan`, else the spec's formula in ``jax.numpy``.

    lq, lk: (b, g, c, s); v: (b, g, c, e) -> (b, g, c, e) in v's dtype."""
    if can_use_scan(lq, lk, v):
        return scan_prefix_state_attend(lq, lk, v, inv_c)
    from .xp import xp  # the namespace whose prefix_state_attend this is (import cycle)

    return prefix_state_attend_plain(lq, lk, v, inv_c, xp)


def scan_prefix_state_attend(lq, lk, v, inv_c: float):
    """The scan itself, no guard (any backend; tests run it against the spec's formula).
    Shapes as :func:`prefix_state_attend`; lq, lk and v share one floating dtype."""
    if not (lq.dtype == lk.dtype == v.dtype):
        raise TypeError(f"lq, lk, v must share a dtype, got {lq.dtype}, {lk.dtype}, {v.dtype}")
    return _scan(lq, lk, v, float(inv_c))


def _acc(dtype):
    """The dtype the scans multiply and sum in: float32 for bfloat16 / float16, else dtype."""
    return jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype


def _steps(*arrays, acc):
    """(b, g, ...) -> (g, b, ...) in ``acc``: the scans' per-chunk inputs."""
    return tuple(jnp.moveaxis(a.astype(acc), 1, 0) for a in arrays)


def _state_update(k, w, acc):
    """k: (b, c, s), w: (b, c, e) -> k^T w: (b, s, e)."""
    return jnp.einsum("bcs,bce->bse", k, w, preferred_element_type=acc)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _scan(lq, lk, v, inv_c):
    return _scan_fwd(lq, lk, v, inv_c)[0]


def _scan_fwd(lq, lk, v, inv_c):
    b, _, _, s = lq.shape
    acc = _acc(v.dtype)

    def step(state, xs):  # state (b, s, e): S_g
        q, k, w = xs  # (b, c, s), (b, c, s), (b, c, e)
        out = jnp.einsum("bcs,bse->bce", q, state, preferred_element_type=acc)
        return state + _state_update(k, w, acc) * inv_c, out

    state0 = jnp.zeros((b, s, v.shape[-1]), acc)
    _, out = lax.scan(step, state0, _steps(lq, lk, v, acc=acc))  # (g, b, c, e)
    return jnp.moveaxis(out, 0, 1).astype(v.dtype), (lq, lk, v)


def _scan_bwd(inv_c, residuals, dout):
    lq, lk, v = residuals
    b, _, _, s = lq.shape
    acc = _acc(v.dtype)
    q_, k_, w_, d_ = _steps(lq, lk, v, dout, acc=acc)  # (g, b, c, .)
    zeros = jnp.zeros((b, s, v.shape[-1]), acc)

    def forward(state, xs):  # rebuilds S_g: dlq_g = dout_g S_g^T
        k, w, d = xs
        dq = jnp.einsum("bce,bse->bcs", d, state, preferred_element_type=acc)
        return state + _state_update(k, w, acc) * inv_c, dq

    def backward(rest, xs):  # rest (b, s, e): R_g = sum_{h>g} lq_h^T dout_h
        q, k, w, d = xs
        scaled = rest * inv_c
        dk = jnp.einsum("bce,bse->bcs", w, scaled, preferred_element_type=acc)
        dw = jnp.einsum("bcs,bse->bce", k, scaled, preferred_element_type=acc)
        return rest + _state_update(q, d, acc), (dk, dw)

    _, dq = lax.scan(forward, zeros, (k_, w_, d_))
    _, (dk, dw) = lax.scan(backward, zeros, (q_, k_, w_, d_), reverse=True)
    back = lambda a, like: jnp.moveaxis(a, 0, 1).astype(like.dtype)  # noqa: E731
    return back(dq, lq), back(dk, lk), back(dw, v)


_scan.defvjp(_scan_fwd, _scan_bwd)
