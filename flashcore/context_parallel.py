"""Context-parallel FLASH: one sequence split along t over ``world`` devices.

    y_shard = flash_shard(params, x_shard, config=cfg, rank=r, world=w, all_gather=gather)

Device r holds positions r * t .. (r + 1) * t - 1 of a (b, w * t, d) sequence, with t a multiple
of C. A shard is one call of the FLASH core with explicit state
(:func:`flashcore.layers.flash_core`) whose initial state is the gathered prefix of the states
before it. Everything a chunk needs from other devices is each shard's summary
(:func:`flashcore.layers.summary`): S_r = the sum of its chunk states M_h = K_h^T V_h / C,
(b, s, e), independent of t (plus (b,) chunk counts for ``linear_norm='mean'``). Each device
all-gathers the summaries and folds them into its initial state

    causal:      S_q over q < r   (an exclusive prefix over devices)
    non-causal:  the same, plus S_q over q > r as the state from the right

With packed ``segment_ids`` a summary holds only the keys of the segment open at the shard's
end (and, non-causal, at its start) and that segment's id; folding continues a state only
within its segment, and a chunk reads it only where its first (last) segment is that one.
The token shift needs one more row: the previous shard's last input row (b, d), gathered the
same way. Collectives per layer: one all-gather of (b, s, e) (+ (b,) for 'mean', + (b, 1, 1)
key counts for ``linear_norm='length'``; with segments + the (b,) segment ids, and non-causal
the same again for the start), one of a (b,) NaN / Inf flag and, with token shift, one of
(b, d + 1) (+ (b,) segment ids); none grows with t.

``all_gather`` is the backend's collective, a (...) -> (world, ...) callable that autograd /
``jax.grad`` can differentiate (its backward sums the gradients of every device and keeps this
device's slice); ``rank`` is an int or an integer array of shape () (``lax.axis_index`` under
``shard_map``). The outputs equal the matching slice of :func:`flashcore.flash` on the whole
sequence; the gradient of each parameter is the sum of the devices' gradients.

Supported: causal and non-causal, token shift, RoPE, every attention and bias option,
``linear_norm`` sum / mean / length (with ``length_mode='real'``), key-padding masks, packed
segment ids. Not supported (NotImplementedError): ``length_mode='array'`` with ``length``.
NaN / Inf in x reaches exactly what it reaches in :func:`flashcore.flash` (a (b,) flag per shard
is gathered too; see :mod:`flashcore.nonfinite`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import nonfinite
from ._xp import device_of, namespace
from .checks import check_mask, check_segments, check_x
from .config import FlashConfig
from .layers import flash_core, layer_input

__all__ = ["flash_shard", "check_shard", "summary_bytes", "CommStats"]


@dataclass
class CommStats:
    """Bytes one device passed through a backend's collectives: ``sent`` (its own tensors) and
    ``received`` (the other devices' parts); ``calls``: (op, shape, bytes sent) per collective,
    in order. The backends count into it (``flashcore.torch.context_parallel`` forward and
    backward; ``flashcore.jax.context_parallel`` the all-gathers of a forward, when traced)."""

    sent: int = 0
    received: int = 0
    calls: list = field(default_factory=list)

    def record(self, op: str, shape: tuple[int, ...], nbytes: int, world: int) -> None:
        """Count one collective ``op`` on this device's part (``shape``, ``nbytes`` bytes) among
        ``world`` devices."""
        self.sent += nbytes
        self.received += nbytes * (world - 1)
        self.calls.append((op, tuple(shape), nbytes))


def check_shard(config: FlashConfig, t: int, *, segment_ids=None) -> None:
    """Raise a clear error unless ``flash_shard`` supports this config and shard length t
    (``segment_ids``: packed sequences, supported; taken for callers that pass them)."""
    if not isinstance(config, FlashConfig) or config.kind != "flash":
        raise ValueError("context parallelism needs a FlashConfig(kind='flash')")
    if t % config.chunk_size:
        raise ValueError(
            f"context parallelism needs a shard length that is a multiple of chunk_size: "
            f"got {t} positions per device, chunk_size={config.chunk_size}"
        )
    if config.linear_norm == "length" and config.length_mode == "array":
        raise NotImplementedError(
            "context parallel FLASH does not support linear_norm='length' with "
            "length_mode='array'; use length_mode='real'"
        )


def summary_bytes(config: FlashConfig, batch: int, itemsize: int = 4) -> int:
    """Bytes of one device's state summary: b x s x e x itemsize (the count(s) not included)."""
    return batch * config.qk_dim * config.expanded_dim * itemsize


def _rank_weights(rank, world: int, keep: Callable, dtype, xp) -> list:
    """[1.0 or 0.0 per device q] for keep(q, rank): Python floats for an int rank, else arrays."""
    if isinstance(rank, (int, np.integer)):
        return [1.0 if keep(q, int(rank)) else 0.0 for q in range(world)]
    return [xp.astype(keep(q, rank), dtype) for q in range(world)]


def _weighted_sum(gathered, weights: list, xp):
    """sum_q weights[q] * gathered[q]. gathered: (world, ...) -> (...); exact for 0/1 weights.

    Every part enters, even with weight 0, so that every device's autograd graph holds every
    collective: their backward passes (collectives too) then run in the same order everywhere.
    """
    out = weights[0] * gathered[0, ...]
    for q in range(1, len(weights)):
        out = out + weights[q] * gathered[q, ...]
    return out


def _pick(cond, a, b, xp):
    """a where ``cond`` (a Python bool, or a bool array of shape () when the rank is traced),
    else b. With a Python bool, floating arrays are blended with 0/1 weights rather than picked,
    so that every device's autograd graph holds every collective (see :func:`_weighted_sum`)."""
    if not isinstance(cond, (bool, np.bool_)):
        return xp.where(cond, a, b)
    if xp.isdtype(a.dtype, "real floating"):
        w = 1.0 if cond else 0.0
        return a * w + b * (1.0 - w)
    return a if cond else b


def _fold(parts: list, take: list, xp, after: bool = False):
    """The carried state of this shard from the gathered summary parts of every shard (in order
    of rank): the parts with ``take[q]`` (the earlier shards; ``after``: the later ones, folded
    from the right), each continuing the one before it only within its segment.

    A part: lin (b, s, e), count (b,), keys (b, 1, 1) or None, seg (b,) or None, bad (b,) bool.
    Folding part q onto the state so far: q's keys, plus the state's where q's segment at the
    end facing this shard is the state's (a segment is one contiguous run, so then all of q is
    in it). Without segments that is a plain sum.
    """
    order = range(len(parts) - 1, -1, -1) if after else range(len(parts))
    acc = None
    for q in order:
        part = parts[q]
        if acc is None:
            acc = {k: None if v is None else xp.zeros_like(v) for k, v in part.items()}
            acc["seg"] = part["seg"]
        cont = None if part["seg"] is None else part["seg"] == acc["seg"]  # (b,)
        new = {"seg": part["seg"]}
        for k in ("lin", "count", "keys"):
            new[k] = None if part[k] is None else part[k] + _within(cont, acc[k], xp)
        new["bad"] = part["bad"] | (acc["bad"] if cont is None else cont & acc["bad"])
        acc = {k: (None if v is None else _pick(take[q], v, acc[k], xp)) for k, v in new.items()}
    return acc


def _within(cont, a, xp):
    """a (b, ...), zero in the batch rows where ``cont`` (b,) bool is False (None: kept)."""
    if cont is None:
        return a
    keep = xp.reshape(cont, (cont.shape[0],) + (1,) * (a.ndim - 1))
    return xp.where(keep, a, xp.zeros_like(a))


def _gather_parts(own: dict, all_gather, world: int, config: FlashConfig, xp) -> list:
    """Every shard's summary part ``own`` (lin, count, keys, seg, bad), one all-gather per
    array the config reads (count: 'mean' only) -> [part of shard q for q < world]."""
    if config.linear_norm != "mean":
        own = own | {"count": None}
    names = [k for k, v in own.items() if v is not None]
    got = {}
    for k in names:
        a = own[k]
        if k == "bad":  # a bool travels as the array's float dtype
            got[k] = all_gather(xp.astype(a, own["lin"].dtype)) > 0.5
        else:
            got[k] = all_gather(a)  # (world, ...)
    return [{k: (got[k][q, ...] if k in got else None) for k in own} for q in range(world)]


def _halo(params, x, mask, segment_ids, rank, world: int, all_gather, config, xp):
    """The row before this shard for the token shift: layer_input of the previous shard's last
    input row (b, d), zero on device 0, where that row is padding, or (segments) where it
    belongs to another segment than this shard's first position."""
    b = x.shape[0]
    last = x[:, -1, :]
    last = xp.where(nonfinite.nonfinite_rows(x[:, -1:, :], xp), xp.zeros_like(last), last)
    real = (
        xp.ones((b, 1), dtype=x.dtype, device=device_of(x))
        if mask is None
        else xp.astype(mask[:, -1:], x.dtype)
    )
    rows = all_gather(xp.concat([last, real], axis=-1))  # (world, b, d + 1)
    picked = _weighted_sum(
        rows, _rank_weights(rank, world, lambda q, r: q == r - 1, x.dtype, xp), xp
    )
    keep = picked[:, -1] > 0.5  # (b,)
    if segment_ids is not None:
        ids = all_gather(segment_ids[:, -1])  # (world, b)
        prev_id = _weighted_sum(
            ids, _rank_weights(rank, world, lambda q, r: q == r - 1, ids.dtype, xp), xp
        )
        keep = keep & (prev_id == segment_ids[:, 0])
    prev = layer_input(params, picked[:, :-1], config, xp)
    return xp.where(keep[:, None], prev, xp.zeros_like(prev))


def flash_shard(
    params: dict,
    x,
    *,
    config: FlashConfig,
    rank,
    world: int,
    all_gather: Callable,
    mask=None,
    segment_ids=None,
    xp=None,
):
    """FLASH on one shard of a sequence split over ``world`` devices. x: (b, t, d) -> (b, t, d).

    x: this device's positions rank * t .. (rank + 1) * t - 1; mask, segment_ids: (b, t) or
    None, the same slice of the whole mask and segment ids. ``all_gather``: (...) ->
    (world, ...), differentiable. One call of :func:`flashcore.layers.flash_core` whose
    initial state is the gathered prefix of the shards' states (module docstring).
    """
    xp = namespace(x, xp=xp)
    b, t = check_x(x, config.dim)
    check_shard(config, t, segment_ids=segment_ids)
    check_mask(mask, b, t)
    check_segments(segment_ids, b, t, xp)
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ValueError(f"world must be a positive int, got {world!r}")
    if isinstance(rank, (int, np.integer)) and not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    static = isinstance(rank, (int, np.integer))
    earlier = [q < rank if static else rank > q for q in range(world)]
    later = [q > rank if static else rank < q for q in range(world)]

    def gather(own: dict) -> dict:  # this shard's summary -> its carried state
        tails = _gather_parts(own["tail"], all_gather, world, config, xp)
        carried = _fold(tails, earlier, xp)
        if not config.causal:
            heads = (
                tails
                if segment_ids is None
                else _gather_parts(own["head"], all_gather, world, config, xp)
            )
            carried["after"] = _fold(heads, later, xp, after=True)
        return carried

    state = {"pos": int(rank) * t if static else rank * t, "gather": gather}
    if config.token_shift:
        state["prev"] = _halo(params, x, mask, segment_ids, rank, world, all_gather, config, xp)
    out, _ = flash_core(params, x, state, config=config, mask=mask, segment_ids=segment_ids, xp=xp)
    return out
