"""Data parallelism for the torch engine: torchrun's environment -> one process group.

torchrun (``python -m torch.distributed.run``) starts one process per worker and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. :func:`join` turns that into
a process group (``nccl`` on CUDA, ``gloo`` on the CPU); :func:`rows` gives a rank its contiguous
slice of a global batch; :func:`all_sum` adds a few Python floats over the ranks.

    workers = join()                        # Workers(rank=0, world=1, ...) without torchrun
    x_mine = x[rows(len(x), workers)]       # (b / world, t)
    total, count = all_sum([s, n], workers)
    leave(workers)
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from flashcore.runtime import ParallelError, launched_processes

__all__ = ["Workers", "single", "join", "rows", "all_sum", "leave"]


@dataclass(frozen=True)
class Workers:
    """This process's place among the data-parallel workers."""

    rank: int
    world: int
    device: torch.device
    backend: str = ""  # "gloo" / "nccl"; "" when world == 1
    owns_group: bool = False  # whether :func:`leave` destroys the process group


def single(device: str | None = None) -> Workers:
    """One worker, no process group: ``device``, else CUDA when available, else the CPU."""
    return Workers(0, 1, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))


def join(device: str | None = None) -> Workers:
    """Join the process group torchrun describes in the environment (a no-op without one).

    ``device``: None picks ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU.
    """
    world = launched_processes()
    if world == 1:
        return single(device)
    if not dist.is_available():
        raise ParallelError(f"WORLD_SIZE={world} but this torch has no torch.distributed")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    dev = torch.device("cuda", local) if cuda else torch.device(device or "cpu")
    if cuda:
        torch.cuda.set_device(dev)
    backend = "nccl" if cuda else "gloo"
    owns = not dist.is_initialized()
    if owns:
        if backend == "gloo" and not dist.is_gloo_available():
            raise ParallelError("torch.distributed has no gloo backend here (needed on the CPU)")
        dist.init_process_group(backend)  # env://: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    if dist.get_world_size() != world:
        raise ParallelError(
            f"the process group has {dist.get_world_size()} ranks but WORLD_SIZE={world}"
        )
    return Workers(dist.get_rank(), world, dev, dist.get_backend(), owns)


def rows(batch: int, workers: Workers) -> slice:
    """This rank's contiguous rows of a global batch of ``batch`` rows (``numpy.array_split``'s
    split: the first ``batch % world`` ranks get one row more; a rank may get none)."""
    size, extra = divmod(batch, workers.world)
    start = workers.rank * size + min(workers.rank, extra)
    return slice(start, start + size + (workers.rank < extra))


def all_sum(values: list[float], workers: Workers) -> list[float]:
    """The sums of ``values`` over all ranks (float64; every rank must call it)."""
    if workers.world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=workers.device)  # (n,)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def leave(workers: Workers) -> None:
    """Destroy the process group if :func:`join` created it, after every rank has arrived.

    Without the barrier a rank that finished first (one that writes no checkpoint) tears its gloo
    connections down while the others still use theirs, and gloo can abort the process at exit
    ("terminate called without an active exception"). The barrier waits at most a minute (gloo)
    so that a rank leaving after an error does not hang the others' exit forever.
    """
    if not (workers.owns_group and dist.is_initialized()):
        return
    try:
        if workers.backend == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
        else:
            dist.barrier()
    except RuntimeError:
        pass  # a rank failed or left: destroy anyway, torchrun reports the failure
    dist.destroy_process_group()
