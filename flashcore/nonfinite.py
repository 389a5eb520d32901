"""NaN / Inf containment: a non-finite input reaches exactly the outputs that depend on it.

Arithmetic alone would leak it: a masked attention weight is an exact 0, but 0 x NaN is NaN, so a
NaN value at key j would reach every query of its chunk (GAU: its sequence), and through the 0/1
matrices of the linear branch every later chunk of every segment. Instead ``gau`` and ``flash``
wrap their math in two calls, :func:`contain` before and :func:`poison_reached` after:

1. flag the input rows x[b, t] that hold a NaN or Inf (:func:`nonfinite_rows`),
2. zero them (:func:`zero_rows`) before anything else, so that the projections and the attention
   core (the spec's or a fused kernel) only ever see finite numbers, and every output that does
   not depend on a flagged row is exactly what it would be for any finite value there, and
3. set to NaN the output row of every real position that depends on a flagged one
   (:func:`reach`, :func:`poison`): same batch row, same segment, and (causal) the flagged
   position and later ones; a padded position is nobody's dependency.

The dependency rule is the layers' masking rule and nothing else, so it holds for any core. The
cost is three elementwise passes over x (b, t, d) and O(log t) passes over (b, t) booleans (one
pass where the namespace can tell eagerly that no row is flagged, :func:`known_clear`); for
finite inputs no value and no gradient changes. Not covered: a non-finite value that arises
inside the layer from finite inputs (an overflow in the projections).
"""

from __future__ import annotations

import numpy as np

from . import kernels
from ._xp import const, device_of, is_low_precision

__all__ = [
    "contain",
    "poison_reached",
    "nonfinite_rows",
    "zero_rows",
    "reach",
    "poison",
    "known_clear",
]


def contain(x, xp):
    """Steps 1 and 2 around a layer's math: x (b, t, d) -> (x with its NaN / Inf rows zeroed,
    bad: (b, t) bool, the rows that held them)."""
    bad = nonfinite_rows(x, xp)
    return zero_rows(x, bad, xp), bad


def poison_reached(out, bad, mask, segment_ids, *, causal: bool, xp, reads=None):
    """Step 3 around a layer's math: out (b, t, d) with NaN in every row of a real position that
    depends on a row flagged in ``bad`` (:func:`reach`), or that reads a poisoned carried state
    (``reads``: (b, t) bool or None). NaN in the residual input would give the same rows: the
    whole output row of such a position is NaN, and padded positions stay 0."""
    reached = reach(bad, mask, segment_ids, causal=causal, xp=xp)
    if reads is not None:
        reached = reached | reads
    if mask is not None:
        reached = reached & mask
    return poison(out, reached, xp)


def nonfinite_rows(x, xp):
    """(b, t) bool: True where x (b, t, d), floating, holds a NaN or +-Inf in that row.

    One sum over the last axis (in float32 for float16 / bfloat16, which cannot overflow there),
    then ``isfinite`` on (b, t): a NaN or Inf anywhere in the row makes the sum non-finite. (A row
    of finite values whose sum overflows, ~1e38 in float32, also counts.)
    """
    acc = xp.float32 if is_low_precision(x.dtype) else x.dtype
    return ~xp.isfinite(xp.sum(x, axis=-1, dtype=acc))  # (b, t)


def known_clear(rows, xp) -> bool:
    """True when ``rows`` (bool) is known to hold no True without tracing or a device sync:
    the backend's ``Kernels.known_all_false(rows)`` where it has one (torch on the CPU, eagerly),
    else False. Lets :func:`zero_rows` and :func:`poison` skip their pass for finite inputs."""
    hook = kernels.of(xp).known_all_false
    return bool(hook is not None and hook(rows))


def zero_rows(a, rows, xp):
    """a: (b, t, .) with its rows where ``rows`` (b, t) is True set to 0."""
    if known_clear(rows, xp):
        return a
    zero = const(xp, np.zeros((1, 1, 1)), like=a)
    return xp.where(rows[..., None], zero, a)


def poison(a, rows, xp):
    """a: (b, t, .) with its rows where ``rows`` (b, t) is True set to NaN."""
    if known_clear(rows, xp):
        return a
    nan = const(xp, np.full((1, 1, 1), np.nan), like=a)
    return xp.where(rows[..., None], nan, a)


def reach(bad, mask, segment_ids, *, causal: bool, xp):
    """(b, t) bool: the positions whose output depends on a real position flagged in ``bad``.

    bad: (b, t) bool; mask: (b, t) bool (True = real) or None; segment_ids: (b, t) ints (each id
    one contiguous run) or None. Position i depends on j when both are in the same row and segment,
    j is real, and (causal) j <= i. Outputs at padded positions may be flagged too (the layers
    zero them afterwards).
    """
    if mask is not None:
        bad = bad & mask  # padding is never read
    b, t = bad.shape
    if segment_ids is None:  # one segment per row
        n = xp.astype(bad, xp.int32)
        if causal:
            return xp.cumulative_sum(n, axis=1) > 0  # (b, t)
        return xp.broadcast_to(xp.sum(n, axis=1, keepdims=True) > 0, (b, t))
    edge = xp.ones((b, 1), dtype=xp.bool, device=device_of(bad))
    change = segment_ids[:, 1:] != segment_ids[:, :-1]  # (b, t - 1): a new run starts at i + 1
    out = _segmented_or(bad, xp.concat([edge, change], axis=1), forward=True, xp=xp)
    if not causal:  # the prefix-or at a segment's last position, sent back over the segment
        out = _segmented_or(out, xp.concat([change, edge], axis=1), forward=False, xp=xp)
    return out


def _segmented_or(v, start, *, forward: bool, xp):
    """Inclusive running 'or' of v (b, t) bool within runs; ``start`` (b, t) bool marks each
    run's first position in the scan direction (backward: its last). Hillis-Steele doubling:
    ceil(log2 t) steps, each a few (b, t) boolean passes."""
    b, t = v.shape
    d = 1
    while d < t:
        pad = xp.zeros((b, d), dtype=xp.bool, device=device_of(v))
        if forward:
            v_far, s_far = (
                xp.concat([pad, v[:, :-d]], axis=1),
                xp.concat([pad, start[:, :-d]], axis=1),
            )
        else:
            v_far, s_far = (
                xp.concat([v[:, d:], pad], axis=1),
                xp.concat([start[:, d:], pad], axis=1),
            )
        v = v | (v_far & ~start)  # read d steps back only if no run starts in between
        start = start | s_far
        d *= 2
    return v
