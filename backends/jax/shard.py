"""Past data parallelism, for the jax engine: sharded parameters and AdamW state on a
(data, fsdp) mesh, and context-parallel training on a (data, context) mesh.

    layout = Layout.make(shard=2, context=1)        # 2 devices per fsdp group, data over the rest
    params = layout.place(params)                   # each array split along fsdp where it divides
    x = layout.batch(tokens)                        # (b, T): b over every device
    loss = layout.context_loss(config)(params, x, y)   # context > 1: T split over "context"

Sharding (``shard`` = N): the devices form a (data, N) mesh. Each parameter, and each of AdamW's
moments (the same shapes), is split along the ``fsdp`` axis on its first dimension that N divides
(replicated when none does), so a device holds about 1/N of them; the batch is split over all the
devices. jit's sharding propagation inserts the all-gathers of the parameters and the
reduce-scatters of the gradients; the step is the same program as on one device.

Context parallelism (``context`` = N): the devices form a (data, N) mesh; each device takes its
rows and its 1/N of every sequence along t. The loss runs under ``jax.shard_map``: the embedding,
norms and head locally, every FLASH block as :func:`flashcore.context_parallel.flash_shard` over
the ``context`` axis (``lax.all_gather`` of the chunk-state summaries only, what
:func:`flashcore.jax.context_parallel.apply` runs for one layer), and the mean over the devices
(``lax.pmean``); the parameters enter replicated, so ``jax.grad`` sums their gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flashcore.config import LMConfig
from flashcore.context_parallel import flash_shard
from flashcore.lm import lm_loss
from flashcore.params import subtree
from flashcore.runtime import ParallelError

from .xp import xp

__all__ = ["Layout", "param_spec", "local_bytes"]


def param_spec(shape: tuple[int, ...], ways: int, axis: str = "fsdp") -> PartitionSpec:
    """``axis`` on the first dimension of ``shape`` that ``ways`` divides; replicated if none."""
    for i, n in enumerate(shape):
        if n >= ways and n % ways == 0:
            return PartitionSpec(*([None] * i), axis)
    return PartitionSpec()


def local_bytes(tree) -> int:
    """Bytes of ``tree``'s arrays on one device (the first device's shards)."""
    total = 0
    for a in jax.tree.leaves(tree):
        if isinstance(a, jax.Array):
            total += a.addressable_shards[0].data.nbytes
    return total


@dataclass(frozen=True)
class Layout:
    """A 2-D mesh over this process's devices: (``data``, ``fsdp``) for sharding or (``data``,
    ``context``) for context parallelism; ``ways`` devices on the second axis."""

    mesh: Mesh
    axis: str  # "fsdp" or "context"
    ways: int

    @classmethod
    def make(cls, *, shard: int | None, context: int, devices=None) -> Layout:
        """The layout for ``--shard`` (None: off; 0: every device) or ``--context-parallel``;
        ParallelError when the devices cannot be arranged so."""
        devices = jax.devices() if devices is None else list(devices)
        count = len(devices)
        if shard is not None and context > 1:
            raise ParallelError("--shard and --context-parallel cannot be combined; pick one")
        axis, ways = ("context", context) if context > 1 else ("fsdp", shard or count)
        flag = f"--context-parallel {context}" if context > 1 else f"--shard {shard}"
        if count % ways:
            raise ParallelError(
                f"{flag}: {ways} must divide the {count} {devices[0].platform} devices jax sees "
                "(on the CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N)"
            )
        grid = np.asarray(devices).reshape(count // ways, ways)
        return cls(Mesh(grid, ("data", axis)), axis, ways)

    @property
    def data(self) -> int:
        """Ways each batch's rows are split."""
        return self.mesh.shape["data"] * (self.ways if self.axis == "fsdp" else 1)

    def note(self) -> str:
        kind = "parameters sharded over" if self.axis == "fsdp" else "sequences split over"
        return f"{self.mesh.shape['data']} x {self.ways} devices ({kind} {self.ways})"

    def sharding(self, a) -> NamedSharding:
        """Where an array of parameters or optimizer state lives: split along fsdp, or whole."""
        if self.axis == "fsdp" and np.ndim(a):
            return NamedSharding(self.mesh, param_spec(np.shape(a), self.ways))
        return NamedSharding(self.mesh, PartitionSpec())

    def shardings(self, tree):
        """:meth:`sharding` of every array of ``tree``."""
        return jax.tree.map(self.sharding, tree)

    def place(self, tree):
        """``tree``'s arrays placed as :meth:`sharding` says."""
        return jax.tree.map(lambda a: jax.device_put(a, self.sharding(a)), tree)

    def batch_spec(self, rows: int) -> PartitionSpec:
        """How a (rows, T) batch is split: rows over the data devices when they divide evenly
        (else whole, as the last held-out batch may be), T over ``context``."""
        split = rows % self.data == 0
        if self.axis == "fsdp":
            return PartitionSpec(("data", "fsdp") if split else None)
        return PartitionSpec("data" if split else None, "context")

    def batch(self, a: np.ndarray):
        """A (b, T) array placed per :meth:`batch_spec`."""
        return jax.device_put(a, NamedSharding(self.mesh, self.batch_spec(len(a))))

    def check_length(self, t: int) -> None:
        if self.axis == "context" and t % self.ways:
            raise ParallelError(
                f"a sequence of {t} positions cannot be split over {self.ways} context devices"
            )

    def context_loss(self, config: LMConfig, rows: int):
        """The mean LM loss with every sequence split along t: (params, x, y) -> (), for batches
        of ``rows`` rows (x, y: (rows, T) ints placed per :meth:`batch_spec`)."""
        spec = self.batch_spec(rows)
        world = self.ways
        axes = ("data", "context") if spec[0] == "data" else ("context",)  # rows split, or whole

        def gather(a):
            return lax.all_gather(a, "context")

        def block(p, rank):
            def run(x, mask=None, segment_ids=None):  # (b, T / N, d) -> (b, T / N, d)
                if segment_ids is not None:
                    raise NotImplementedError(
                        "context-parallel training does not support packed segment ids"
                    )
                return flash_shard(
                    p, x, config=config.block, rank=rank, world=world, all_gather=gather,
                    mask=mask, xp=xp,
                )  # fmt: skip

            return run

        def body(p, x, y):
            rank = lax.axis_index("context")
            blocks = [block(subtree(p, f"layers.{i}."), rank) for i in range(config.num_layers)]
            loss = lm_loss(p, x, y, config=config, xp=xp, blocks=blocks)
            return lax.pmean(loss, axes)  # equal shares: the whole batch's mean

        return jax.shard_map(
            body, mesh=self.mesh, in_specs=(PartitionSpec(), spec, spec), out_specs=PartitionSpec()
        )
