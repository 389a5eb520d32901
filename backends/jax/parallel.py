"""Data parallelism with ``jax.sharding``: one mesh axis over devices, the batch split along it,
parameters replicated. A jitted step over sharded inputs is the same program as on one device;
XLA inserts the cross-device reductions (the mean loss and the parameter gradients).

    mesh = data_mesh()                          # all devices on axis "data"
    params = replicate(params, mesh)
    tokens, targets = shard_batch((tokens, targets), mesh)   # (b, t): b split over devices
    loss, grads = jax.jit(jax.value_and_grad(lm_loss))(params, tokens, targets)
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["data_mesh", "shard_batch", "replicate"]


def data_mesh(devices=None, axis: str = "data") -> Mesh:
    """A 1-D mesh over ``devices`` (default: all of them) named ``axis``."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (axis,))


def shard_batch(tree, mesh: Mesh, axis: str = "data"):
    """Place every array of ``tree`` with its leading (batch) axis split over ``axis``.

    The batch size must be divisible by the number of devices on that axis.
    """
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    return jax.tree.map(lambda a: jax.device_put(a, sharding), tree)


def replicate(tree, mesh: Mesh):
    """Place every array of ``tree`` whole on every device of ``mesh``."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda a: jax.device_put(a, sharding), tree)
