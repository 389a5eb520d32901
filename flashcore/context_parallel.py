"""Context-parallel FLASH: one sequence split along t over ``world`` devices.

    y_shard = flash_shard(params, x_shard, config=cfg, rank=r, world=w, all_gather=gather)

Device r holds positions r * t .. (r + 1) * t - 1 of a (b, w * t, d) sequence, with t a multiple
of C. Everything a chunk needs from other devices is the linear-attention state summary of each
shard: S_r = sum of its chunk states M_h = K_h^T V_h / C, (b, s, e), independent of t (plus
(b,) chunk counts for ``linear_norm='mean'``). Each device all-gathers the summaries and adds

    causal:      sum of S_q over q < r   (an exclusive prefix over devices)
    non-causal:  sum of S_q over q != r  (its own shard already counts in its local sum)

to every chunk's state. The token shift needs one more row: the previous shard's last input row
(b, d), gathered the same way. Collectives per layer: one all-gather of (b, s, e) (+ (b,) for
'mean', + a (b, 1) count state for ``linear_norm='length'``), one of a (b,) NaN / Inf flag and,
with token shift, one of (b, d + 1); none grows with t.

``all_gather`` is the backend's collective, a (...) -> (world, ...) callable that autograd /
``jax.grad`` can differentiate (its backward sums the gradients of every device and keeps this
device's slice); ``rank`` is an int or an integer array of shape () (``lax.axis_index`` under
``shard_map``). The outputs equal the matching slice of :func:`flashcore.flash` on the whole
sequence; the gradient of each parameter is the sum of the devices' gradients.

Supported: causal and non-causal, token shift, RoPE, every attention and bias option,
``linear_norm`` sum / mean / length (with ``length_mode='real'``), key-padding masks. Not
supported (NotImplementedError): ``segment_ids``, ``length_mode='array'`` with ``length``.
NaN / Inf in x reaches exactly what it reaches in :func:`flashcore.flash` (a (b,) flag per shard
is gathered too; see :mod:`flashcore.nonfinite`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ._xp import device_of, namespace
from .checks import check_mask, check_x
from .config import FlashConfig
from .layers import flash_checked

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
    """Raise a clear error unless ``flash_shard`` supports this config and shard length t."""
    if not isinstance(config, FlashConfig) or config.kind != "flash":
        raise ValueError("context parallelism needs a FlashConfig(kind='flash')")
    if t % config.chunk_size:
        raise ValueError(
            f"context parallelism needs a shard length that is a multiple of chunk_size: "
            f"got {t} positions per device, chunk_size={config.chunk_size}"
        )
    if segment_ids is not None:
        raise NotImplementedError("context parallel FLASH does not support segment_ids yet")
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


def _halo(x, mask, rank, world: int, all_gather, xp):
    """The row before this shard and whether the token shift may read it.

    x: (b, t, d) -> prev (b, d), prev_keep (b,) bool (False on device 0 and where the previous
    device's last position is padding).
    """
    b = x.shape[0]
    real = (
        xp.ones((b, 1), dtype=x.dtype, device=device_of(x))
        if mask is None
        else xp.astype(mask[:, -1:], x.dtype)
    )
    rows = all_gather(xp.concat([x[:, -1, :], real], axis=-1))  # (world, b, d + 1)
    picked = _weighted_sum(
        rows, _rank_weights(rank, world, lambda q, r: q == r - 1, x.dtype, xp), xp
    )
    return picked[:, :-1], picked[:, -1] > 0.5  # (b, d), (b,)


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

    x: this device's positions rank * t .. (rank + 1) * t - 1; mask: (b, t) bool or None, the
    same slice of the whole mask. ``all_gather``: (...) -> (world, ...), differentiable. See the
    module docstring.
    """
    xp = namespace(x, xp=xp)
    b, t = check_x(x, config.dim)
    check_shard(config, t, segment_ids=segment_ids)
    check_mask(mask, b, t)
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ValueError(f"world must be a positive int, got {world!r}")
    if isinstance(rank, (int, np.integer)) and not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    before = (lambda q, r: q < r) if config.causal else (lambda q, r: q != r)

    def from_others(a):  # (...) -> the sum of the same over the devices this one reads
        gathered = all_gather(a)  # (world, ...)
        return _weighted_sum(gathered, _rank_weights(rank, world, before, a.dtype, xp), xp)

    def exchange(state, count):  # (b, s, e), (b,) or None -> the other devices' part
        return from_others(state), (None if count is None else from_others(count))

    def others_bad(mine):  # (b,) bool -> (b,) bool: NaN / Inf in a device this one reads
        return from_others(xp.astype(mine, x.dtype)) > 0.5

    return flash_checked(
        params,
        x,
        config=config,
        mask=mask,
        segment_ids=None,
        xp=xp,
        position_offset=int(rank) * t if isinstance(rank, (int, np.integer)) else rank * t,
        halo=lambda x0: _halo(x0, mask, rank, world, all_gather, xp),
        exchange=exchange,
        others_bad=others_bad,
    )
