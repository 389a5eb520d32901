"""Context-parallel FLASH with ``jax.shard_map``: one sequence split along t over a mesh axis.

    mesh = context_mesh()                                     # every device on axis "context"
    y = apply(params, x, config=cfg, mesh=mesh)               # (b, T, d) -> (b, T, d), sharded on t
    g = jax.grad(lambda p: apply(p, x, config=cfg, mesh=mesh).sum())(params)

Device r of the axis holds positions r * T / w .. (r + 1) * T / w - 1 (a multiple of chunk_size);
the math, and what is exchanged (each shard's (b, s, e) linear-state summary, independent of T),
is in :mod:`flashcore.context_parallel`. The collective is ``lax.all_gather`` over the axis, which
``jax.grad`` differentiates (its transpose sums the gradients over the devices), so the parameter
gradients come out whole. Works under ``jax.jit``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from flashcore.config import FlashConfig
from flashcore.context_parallel import CommStats, check_shard, flash_shard

from .xp import xp

__all__ = ["CommStats", "context_mesh", "apply"]


def context_mesh(devices=None, axis: str = "context") -> Mesh:
    """A 1-D mesh over ``devices`` (default: all) with the one axis ``axis``."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (axis,))


def apply(
    params: dict[str, jax.Array],
    x: jax.Array,
    *,
    config: FlashConfig,
    mesh: Mesh,
    axis: str = "context",
    mask: jax.Array | None = None,
    stats: CommStats | None = None,
    segment_ids: jax.Array | None = None,
) -> jax.Array:
    """A FLASH layer on a sequence split along t over ``mesh``'s ``axis``. x: (b, T, d) -> (b, T, d).

    params: canonical (replicated); mask: (b, T) bool or None; segment_ids: (b, T) ints or
    None (packed sequences; a segment may run over shard boundaries). T must be a multiple of the axis
    size times chunk_size. The output is sharded along t like x.
    """
    world = mesh.shape[axis]
    t_all = x.shape[1]
    if t_all % world:
        raise ValueError(f"sequence length {t_all} does not split over {world} devices")
    check_shard(config, t_all // world)
    seq = PartitionSpec(None, axis)

    def gather(a):
        if stats is not None:  # counted when traced: a jitted function counts on its first call
            nbytes = int(np.prod(a.shape)) * jnp.dtype(a.dtype).itemsize
            stats.record("all_gather", a.shape, nbytes, world)
        return lax.all_gather(a, axis)

    extra = {k: a for k, a in (("mask", mask), ("segment_ids", segment_ids)) if a is not None}

    def body(p, x_mine, *mine):
        return flash_shard(
            p,
            x_mine,
            config=config,
            rank=lax.axis_index(axis),
            world=world,
            all_gather=gather,
            xp=xp,
            **dict(zip(extra, mine, strict=True)),
        )

    args = (params, x, *extra.values())
    specs = (PartitionSpec(), seq, *(seq for _ in extra))
    return jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=seq)(*args)
