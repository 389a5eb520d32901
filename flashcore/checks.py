"""Input validation shared by the spec and every backend, so that bad input gets the same error
everywhere. Shape and dtype checks are static; value checks (segment layout, token range) run only
on concrete arrays, never on traced ones (jit, torch.compile), where they would break the graph.
"""

from __future__ import annotations

import numpy as np

from . import kernels
from ._xp import dtype_name

__all__ = ["check_x", "check_mask", "check_segments", "check_tokens", "concrete", "is_floating"]

_FLOATS = ("float16", "bfloat16", "float32", "float64")
_INTS = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def is_floating(dtype) -> bool:
    """True for the real floating dtypes flashcore computes in (float16, bfloat16, float32,
    float64), whatever the namespace; False for bool, integer and complex ones."""
    return dtype_name(dtype) in _FLOATS


def concrete(a, xp=None) -> np.ndarray | None:
    """A NumPy copy of ``a`` if its values are known now (eager), else None (traced).

    The backend's ``Kernels.concrete(a)`` where it has one (a backend that knows its tracer, e.g.
    torch.compile's); otherwise a host copy, None when the library refuses one (a jit tracer, a
    symbolic TF tensor)."""
    if a is None:
        return None
    hook = kernels.of(xp).concrete
    if hook is not None:
        return hook(a)
    try:
        if hasattr(a, "__dlpack__") and not isinstance(a, np.ndarray):
            try:
                return np.from_dlpack(a)
            except Exception:
                pass
        return np.asarray(a)
    except Exception:
        return None


def check_x(x, dim: int, name: str = "x") -> tuple[int, int]:
    """x must be (b, t, dim) floating with t >= 1. Returns (b, t)."""
    shape = tuple(x.shape)
    if len(shape) != 3:
        raise ValueError(
            f"{name} must have shape (batch, time, {dim}), got rank {len(shape)}: {shape}"
        )
    if shape[2] != dim:
        raise ValueError(f"{name} has feature size {shape[2]}, but the config says dim={dim}")
    if shape[1] == 0:
        raise ValueError(f"{name} has T = 0 positions; at least one is needed")
    if dtype_name(x.dtype) not in _FLOATS:
        raise TypeError(
            f"{name} must be floating point ({', '.join(_FLOATS)}), got {dtype_name(x.dtype)}"
        )
    return shape[0], shape[1]


def check_mask(mask, b: int, t: int) -> None:
    """mask: (b, t) bool, True at real positions."""
    if mask is None:
        return
    if tuple(mask.shape) != (b, t):
        raise ValueError(f"mask must have shape (batch, time) = {(b, t)}, got {tuple(mask.shape)}")
    if dtype_name(mask.dtype) != "bool":
        raise TypeError(f"mask must be bool (True = real position), got {dtype_name(mask.dtype)}")


def check_segments(segment_ids, b: int, t: int, xp=None) -> None:
    """segment_ids: (b, t) integers, each id one contiguous run (packed sequences)."""
    if segment_ids is None:
        return
    if tuple(segment_ids.shape) != (b, t):
        raise ValueError(
            f"segment_ids must have shape (batch, time) = {(b, t)}, got {tuple(segment_ids.shape)}"
        )
    if dtype_name(segment_ids.dtype) not in _INTS:
        raise TypeError(f"segment_ids must be integers, got {dtype_name(segment_ids.dtype)}")
    seg = concrete(segment_ids, xp)
    if seg is None:
        return
    starts = np.concatenate([np.ones((b, 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1)
    for row in range(b):
        ids = seg[row][starts[row]]
        if len(np.unique(ids)) != len(ids):
            raise ValueError(
                f"segment_ids row {row} reuses an id after another segment; each segment must be "
                f"one contiguous run of positions (packed sequences), got {seg[row].tolist()[:64]}"
            )


def check_tokens(tokens, vocab_size: int, xp=None) -> tuple[int, int]:
    """tokens: (b, t) integers in [0, vocab_size). Returns (b, t)."""
    shape = tuple(tokens.shape)
    if len(shape) != 2:
        raise ValueError(f"tokens must have shape (batch, time), got rank {len(shape)}: {shape}")
    if shape[1] == 0:
        raise ValueError("tokens has T = 0 positions; at least one is needed")
    if dtype_name(tokens.dtype) not in _INTS:
        raise TypeError(f"tokens must be integers, got {dtype_name(tokens.dtype)}")
    values = concrete(tokens, xp)
    if values is not None and values.size and (values.min() < 0 or values.max() >= vocab_size):
        raise ValueError(
            f"token ids must be in [0, {vocab_size}), got min {values.min()} max {values.max()}"
        )
    return shape
