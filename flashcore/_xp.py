"""The small array-API subset flashcore uses, and the two helpers the standard lacks.

Everything in the spec goes through an array-API namespace ``xp`` (array-api-compat's wrappers for
numpy / torch / jax, array-api-strict, or the flashcore TF shim). The calls used are exactly:

    asarray astype(copy=False) reshape permute_dims concat stack broadcast_to matmul take
    sum mean max cumulative_sum(include_initial=True) where maximum exp log sqrt isfinite isdtype
    zeros ones zeros_like ones_like full_like   dtypes bool int32 int64 float32 float64
    ==, !=, <, <=, >, &, |, ~, *, +, -, /, //, %, **, and basic slicing with a trailing ``...``

plus :func:`erf` below and :func:`flashcore.ops.silu` (not in the standard; dispatched to each
library's own, or ``xp.erf`` / ``xp.silu`` when the namespace has them). Static index
tables (causal masks, rotary angles, bias buckets) are computed on the host in NumPy float64 and
moved to the input's namespace and device with :func:`const`.
"""

from __future__ import annotations

import math
import sys

import numpy as np

__all__ = [
    "namespace",
    "const",
    "erf",
    "device_of",
    "is_low_precision",
    "dtype_name",
    "tracing",
]


def namespace(*arrays, xp=None):
    """The array-API namespace of ``arrays`` (or ``xp`` when given)."""
    if xp is not None:
        return xp
    import array_api_compat

    return array_api_compat.array_namespace(*[a for a in arrays if a is not None])


def device_of(x):
    import array_api_compat

    try:
        return array_api_compat.device(x)
    except Exception:  # the TF shim and other namespaces without a device notion
        return None


def const(xp, value: np.ndarray, like=None, dtype=None):
    """A host NumPy constant as an ``xp`` array on ``like``'s device, cast to ``dtype``.

    ``dtype`` defaults to ``like.dtype`` for floating constants and is kept for ints and bools.
    """
    dev = device_of(like) if like is not None else None
    out = xp.asarray(value, device=dev) if dev is not None else xp.asarray(value)
    if dtype is None and like is not None and xp.isdtype(out.dtype, "real floating"):
        dtype = like.dtype
    if dtype is not None:
        out = xp.astype(out, dtype)
    return out


def dtype_name(dtype) -> str:
    """'float32', 'bfloat16', ... for a dtype of any namespace."""
    name = getattr(dtype, "name", None) or str(dtype)
    return name.rsplit(".", 1)[-1]


def is_low_precision(dtype) -> bool:
    """True for float16 and bfloat16, where the attention core accumulates in float32."""
    return dtype_name(dtype) in ("float16", "bfloat16")


_np_erf = np.vectorize(math.erf, otypes=[np.float64])


def erf(xp, x):
    """The error function, elementwise, with each library's own implementation (full precision)."""
    name = getattr(xp, "__name__", "")
    if "torch" in name:
        import torch

        return torch.special.erf(x)
    if "jax" in name:
        import jax

        return jax.scipy.special.erf(x)
    if hasattr(xp, "erf"):  # the TF shim
        return xp.erf(x)
    if "numpy" in name:
        return np.asarray(_np_erf(x), dtype=x.dtype)
    # array-api-strict and other pure namespaces: round-trip through NumPy (no autodiff there).
    host = np.from_dlpack(x) if hasattr(x, "__dlpack__") else np.asarray(x)
    return xp.astype(const(xp, _np_erf(host), like=x), x.dtype)


def tracing() -> bool:
    """True while torch.compile traces: checks on host tables must not run then (Dynamo would
    trace the NumPy code). Never imports torch."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.compiler.is_compiling()
