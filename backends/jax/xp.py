"""The namespace the JAX backend hands the spec: ``jax.numpy`` with ``cumulative_sum`` as the
spec's pairwise prefix sum on CPU, carrying :data:`KERNELS`, JAX's one
:class:`flashcore.kernels.Kernels` (the backend contract): the fast cores of
:mod:`flashcore.jax.kernels` (FLASH's Pallas core, Transformer++ on
``jax.nn.dot_product_attention``) behind their guards, ``jax.nn.silu``, ``jax.scipy.special.erf``,
``jax.nn.log_softmax`` as ``log_softmax_last``, :func:`dense` and the tracer query. Use :data:`xp`.

Why: ``jnp.cumsum`` lowers to a reduce-window over the whole axis, which XLA's CPU backend runs
in O(n^2) adds, and its transpose is another. For FLASH's causal chunk states (b, g, s, e) that
is g^2 / 2 state-sized adds per layer, forward and backward: at 64K tokens (g = 256, s = 128,
e = 1024) 1.16 s against 0.32 s for :func:`flashcore._xp.pairwise_cumulative_sum` (fwd + bwd,
2 threads). GPU (a CUB kernel) and TPU keep ``jnp.cumulative_sum``.

``dense`` (h W + b, every projection of every block and the LM head) is ``h @ W`` with its own
forward-mode rule on CPU, written so that the transpose jax derives for the kernel's gradient is
one GEMM contracting the token axes of h and the cotangent as they lie. jax's own rule for
``dot_general`` emits the transposed product, and XLA's CPU backend then lays out the cotangent
(when it is a fusion, e.g. SiLU's backward) transposed, in a slow strided loop: fwd + bwd of
SiLU(x W), x (1, T, 512), W (512, 2176), 2 threads, 72 -> 36 us/token at T = 1K and
105 -> 50 us/token at 64K (a one-off script on the 2-core AMD EPYC VM; the FLASH pair with it in
``flashcore bench``: docs/benchmarks.md, "long contexts and huge pages"). A custom_jvp, not a
custom_vjp: forward mode (``jax.jvp``, ``jax.hessian``) keeps working.

``matmul`` and ``dense`` with a bfloat16 / float16 operand take the path
:func:`flashcore.dotpath.low_precision_dots` gives ``jax.default_backend()``: on CPU (XLA has no
fast bf16 dot there) the operands are upcast, the dot runs in float32 and the result is cast back
to the operands' dtype; elsewhere the native dot. :func:`dot_path` says which
(``FLASHCORE_LOW_PRECISION_DOTS`` overrides it)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from flashcore import dotpath
from flashcore._xp import is_low_precision, pairwise_cumulative_sum
from flashcore.dotpath import low_precision_dots
from flashcore.kernels import FastCore, Kernels, with_kernels

from . import kernels

__all__ = ["xp", "KERNELS", "dot_path", "float32_compute"]


def dot_path(dtype) -> str:
    """The path of a dot of ``dtype`` operands on the default backend: ``"float32"`` (upcast,
    float32 dot, cast back) or ``"native"``; always ``"native"`` for float32 / float64."""
    return low_precision_dots(jax.default_backend()) if is_low_precision(dtype) else "native"


def float32_compute(params: dict) -> tuple[dict, str | None]:
    """:func:`flashcore.dotpath.float32_compute` with :func:`dot_path` and jax's cast: (params in
    float32, the storage dtype's name) for bf16 / float16 params on the float32 path, else
    (params, None). How :mod:`flashcore.jax.functional` runs a low-precision model on CPU."""
    return dotpath.float32_compute(params, dot_path=dot_path, cast=lambda a, d: a.astype(d))


def _upcast(*arrays):
    """(arrays in float32, the dtype to cast the result to) when a low-precision operand takes
    the float32 path; (arrays, None) otherwise."""
    low = [a.dtype for a in arrays if a is not None and is_low_precision(a.dtype)]
    if not low or dot_path(low[0]) != "float32":
        return arrays, None
    out = jnp.result_type(*[a.dtype for a in arrays if a is not None])
    return tuple(None if a is None else a.astype(jnp.float32) for a in arrays), out


def matmul(x1, x2, /):
    """``jnp.matmul``, in float32 from low-precision operands where :func:`dot_path` says so."""
    (x1, x2), out = _upcast(jnp.asarray(x1), jnp.asarray(x2))
    y = jnp.matmul(x1, x2)
    return y if out is None else y.astype(out)


def _concrete(a) -> np.ndarray | None:
    """A NumPy copy of ``a``, or None for a tracer (inside jit / grad: the values are unknown)."""
    return None if isinstance(a, jax.core.Tracer) else np.asarray(a)


SMALL_CUMSUM = 4096  # elements; see cumulative_sum


def cumulative_sum(x, /, *, axis=None, dtype=None, include_initial=False):
    """``jnp.cumulative_sum`` with the same arguments, as
    :func:`flashcore._xp.pairwise_cumulative_sum` on CPU for arrays of more than
    ``SMALL_CUMSUM`` elements (O(n) adds in log2(n) levels; jnp's lowering took 56 ms against
    17 ms for (256, 32768) along axis 0 on a 2-core CPU). Smaller arrays, a sampler's (b, vocab)
    row among them, keep jnp's: the pairwise levels cost about 0.1 s more XLA compile time for a
    few microseconds of run time."""
    x = jnp.asarray(x)
    if axis is None and x.ndim > 1:
        raise ValueError("cumulative_sum: axis is required for arrays of rank > 1")
    if jax.default_backend() != "cpu" or x.ndim == 0 or x.size <= SMALL_CUMSUM:
        return jnp.cumulative_sum(x, axis=axis, dtype=dtype, include_initial=include_initial)
    if axis is None:
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


@jax.custom_jvp
def _matmul_kernel(h, kernel):
    """h @ kernel, h: (..., i), kernel: (i, o) -> (..., o), with :func:`_matmul_kernel_jvp`."""
    return jnp.matmul(h, kernel)


def _matmul_kernel_jvp(primals, tangents):
    h, kernel = primals
    dh, dkernel = tangents
    y = jnp.matmul(h, kernel)
    parts = []
    if not isinstance(dh, SymbolicZero):
        parts.append(jnp.matmul(dh, kernel))
    if not isinstance(dkernel, SymbolicZero):
        h2 = jnp.reshape(h, (-1, h.shape[-1]))  # (n, i)
        # (dW^T h^T)^T, not h dW: its transpose in dW is h^T @ cotangent (o, i) -> (i, o) as one
        # GEMM over the token axis, which XLA's CPU backend runs without a transposed copy.
        parts.append(jnp.reshape(jnp.matmul(dkernel.T, h2.T).T, y.shape))
    if not parts:
        return y, SymbolicZero.from_primal_value(y)
    dy = parts[0] if len(parts) == 1 else parts[0] + parts[1]
    return y, dy.astype(y.dtype)


_matmul_kernel.defjvp(_matmul_kernel_jvp, symbolic_zeros=True)


def dense(h, kernel, bias):
    """h W + b (:func:`flashcore.ops.dense`). h: (..., i); kernel: (i, o); bias: (o,) or None ->
    (..., o). On CPU through :func:`_matmul_kernel` (see the module doc); elsewhere, or for a
    kernel that is not 2-D, ``jnp.matmul``; in float32 from low-precision operands where
    :func:`dot_path` says so (the bias added before the one cast back)."""
    (h, kernel, bias), out = _upcast(h, kernel, bias)
    if jax.default_backend() == "cpu" and jnp.ndim(kernel) == 2 and jnp.ndim(h) >= 1:
        y = _matmul_kernel(h, kernel)
    else:
        y = jnp.matmul(h, kernel)
    y = y if bias is None else y + bias
    return y if out is None else y.astype(out)


#: JAX's side of the backend contract (:mod:`flashcore.kernels`).
KERNELS = Kernels(
    flash=FastCore(kernels.flash_core, kernels.flash_unsupported),
    softmax=FastCore(kernels.softmax_core, kernels.softmax_unsupported),
    silu=jax.nn.silu,
    erf=jax.scipy.special.erf,
    log_softmax_last=lambda z: jax.nn.log_softmax(z, axis=-1),
    concrete=_concrete,
    dense=dense,
)

xp = with_kernels(jnp, "flashcore.jax.xp", KERNELS)
xp.cumulative_sum = cumulative_sum  # the array API's own function, faster on XLA's CPU backend
xp.matmul = matmul  # the array API's own function, in float32 from bf16 on CPU (dot_path)
