"""The key/value caches of GAU and Transformer++ (the ``"cache"`` layout of :mod:`flashcore.decode`),
used by their cores with explicit state (:func:`flashcore.layers.gau_core`,
:func:`flashcore.lm.transformer_core`):

    reads(pos, t, capacity, xp)          -> (positions (t,), slots (L,), allowed (t, L) bool)
    write(buf, axis, pos, new, slots, xp) -> buf with the t rows of ``new`` in slots pos .. pos + t - 1
    nan_when_full(out, positions, capacity, xp) -> out, NaN in the rows that found no slot

A cache holds ``capacity`` = L slots, slot l the key / value of position l; ``pos`` (an integer
array of shape (), may be traced) is the position of the piece's first row. Array operations
only (no Python branch on values): a piece runs eagerly and under ``jax.jit`` / ``tf.function``.
"""

from __future__ import annotations

import numpy as np

from ._xp import const

__all__ = ["write", "reads", "nan_when_full"]


def _slots(n: int, pos, xp):
    """0 .. n - 1 as an ``xp`` array of ``pos``'s integer dtype and device, (n,)."""
    return const(xp, np.arange(n), like=pos, dtype=pos.dtype)


def write(buf, axis: int, pos, new, slots, xp):
    """``buf`` with ``new``'s rows along ``axis`` (t of them) written into slots pos .. pos + t - 1
    of that axis; slots past the capacity are dropped. buf: (..., L, ...); new: buf's shape with t
    in place of L; slots: (L,), :func:`reads`'. Copies, never arithmetic: a NaN row reaches its
    own slot only."""
    cap, t = buf.shape[axis], new.shape[axis]
    shape = [1] * buf.ndim
    shape[axis] = cap
    if t == 1:  # one slot; the row broadcasts along the slot axis
        inside, rows = slots == pos, new
    else:
        offset = slots - pos  # (L,): the row of new for each slot
        inside = (offset >= 0) & (offset < t)
        row = xp.where(offset < 0, xp.zeros_like(offset), offset)
        row = xp.where(row > t - 1, xp.zeros_like(row) + (t - 1), row)
        rows = xp.take(new, row, axis=axis)  # (..., L, ...)
    return xp.where(xp.reshape(inside, tuple(shape)), rows, buf)


def reads(pos, t: int, capacity: int, xp):
    """What the t queries of a piece at ``pos`` read from a cache of ``capacity`` slots, causally:
    (positions (t,) = pos + arange(t), slots (L,) = arange(L), allowed (t, L) bool: slot <= the
    query's position, its own key included)."""
    positions = xp.reshape(pos, (1,)) if t == 1 else _slots(t, pos, xp) + pos
    slots = _slots(capacity, pos, xp)
    return positions, slots, slots[None, :] <= positions[:, None]


def nan_when_full(out, positions, capacity: int, xp):
    """out (b, t, ...) with NaN in the rows whose position had no slot (>= ``capacity``): never a
    silent wrong answer from a full cache. positions: (t,) ints."""
    fits = xp.reshape(positions < capacity, (1, positions.shape[0]) + (1,) * (out.ndim - 2))
    return xp.where(fits, out, xp.full_like(out, float("nan")))
