"""Context-parallel FLASH with torch.distributed: one sequence split along t over the ranks.

    stats = CommStats()
    y = context_parallel_flash(layer, x_shard, group=None, mask=None, stats=stats)  # (b, t, d)
    loss(y).backward()                      # every rank, then all-reduce the parameter gradients
    stats.sent, stats.received              # bytes through the collectives so far

Rank r holds positions r * t .. (r + 1) * t - 1 (t a multiple of chunk_size); the math, and what
is exchanged (the (b, s, e) linear-state summary of each shard, independent of t), is in
:mod:`flashcore.context_parallel`. The only collective is an all-gather whose backward
all-reduces the incoming gradients and keeps this rank's slice, so gradients reach the shards
the states came from. Parameter gradients come out per rank: sum them over the ranks
(``dist.all_reduce``, or DistributedDataParallel) for the gradient of the whole sequence.
Works with gloo (CPU) and nccl.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from flashcore.context_parallel import CommStats, flash_shard

from .layers import FLASH, check_no_dropout
from .xp import xp

__all__ = ["CommStats", "all_gather", "context_parallel_flash"]


class _AllGather(torch.autograd.Function):
    """(...) -> (world, ...); backward: all-reduce (sum) the gradient, keep this rank's slice."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, group, stats: CommStats | None) -> torch.Tensor:
        ctx.group, ctx.stats = group, stats
        world = dist.get_world_size(group)
        a = a.contiguous()
        parts = [torch.empty_like(a) for _ in range(world)]
        dist.all_gather(parts, a, group=group)
        if stats is not None:
            stats.record("all_gather", a.shape, a.numel() * a.element_size(), world)
        return torch.stack(parts)  # (world, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()  # (world, ...): every rank's gradient for every part
        dist.all_reduce(grad, group=ctx.group)
        if ctx.stats is not None:  # a ring all-reduce moves about 2x the tensor; count 1x each way
            ctx.stats.record("all_reduce", grad.shape, grad.numel() * grad.element_size(), 2)
        return grad[dist.get_rank(ctx.group)], None, None


def all_gather(a: torch.Tensor, *, group=None, stats: CommStats | None = None) -> torch.Tensor:
    """Differentiable all-gather over ``group``: (...) -> (world, ...), counted in ``stats``."""
    return _AllGather.apply(a, group, stats)


def context_parallel_flash(
    layer: FLASH,
    x: torch.Tensor,
    *,
    group=None,
    mask: torch.Tensor | None = None,
    stats: CommStats | None = None,
    segment_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """``layer`` on this rank's shard of a sequence split over ``group``. x: (b, t, d) -> (b, t, d).

    Every rank of ``group`` must call it (collectives), with the same b and t. mask: (b, t) bool,
    this rank's slice of the key-padding mask; segment_ids: (b, t) ints, this rank's slice of
    the packed segment ids (a segment may run over shard boundaries). The attention core is the spec's (no fused kernel).
    """
    if not isinstance(layer, FLASH):
        raise TypeError(f"context parallelism needs a flashcore.torch.FLASH layer, got {layer!r}")
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("context_parallel_flash needs an initialised torch.distributed group")
    check_no_dropout(layer, layer.config)
    return flash_shard(
        layer.canonical_params(),
        x,
        config=layer.config,
        rank=dist.get_rank(group),
        world=dist.get_world_size(group),
        all_gather=lambda a: all_gather(a, group=group, stats=stats),
        mask=mask,
        segment_ids=segment_ids,
        xp=xp,
    )
