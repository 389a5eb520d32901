"""Past data parallelism, for the torch engine: sharded parameters and AdamW state (FSDP2) and
context-parallel training, on the process group torchrun describes (:mod:`.parallel`).

    layout = plan(workers, shard=0, context=1)        # every rank one FSDP shard, no context split
    loss_module = fully_shard_lm(_Loss(lm), lm, layout, device)   # each block, then the root
    weights = canonical_numpy(lm)                     # gathered: every rank must call it

    layout = plan(workers, shard=None, context=2)     # world = data x context
    cp = ContextParallel(layout, device)
    loss = cp.train_step(engine, x, y, lr)            # x, y: the global (b, T) batch, every rank

Sharding (``shard``): ``torch.distributed.fsdp.fully_shard`` (FSDP2) on every block, then on the
module that computes the loss (the embedding, the norms and the head). The parameters and AdamW's
moments are DTensors split along their first axis over a shard group of ``shard`` ranks (0: the
whole world), so each rank holds about 1/shard of them; groups of fewer ranks than the world are
HSDP (replicated across groups, a 2-D mesh). Each rank trains on its rows of the global batch;
FSDP all-gathers a block's parameters before its forward and backward and reduce-scatters (and
averages) the gradients, so the clipping norm and the AdamW step are those of one process.
Checkpoints gather the full tensors (:func:`full`) on every rank; rank 0 writes them.

Context parallelism (``context``): the ranks form a (data, context) mesh, context the faster
axis. Each rank takes its data rows and its 1/context of every sequence along t; every FLASH
block runs as :func:`flashcore.torch.context_parallel.context_parallel_flash` over the context
group (only the chunk-state summaries cross ranks), the embedding, norms and loss locally. The
loss a rank minimises is its mean weighted by its share of the counted positions, so that the
sum over the ranks is the mean of the whole batch; after backward the parameter gradients are
summed over the world (one all-reduce), and every rank applies the same AdamW step.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from flashcore.context_parallel import CommStats
from flashcore.lm import lm_loss
from flashcore.runtime import ParallelError, check_split, counted_positions, loss_mask_rows

from . import parallel
from .context_parallel import context_parallel_flash
from .loss import chunked_loss
from .xp import xp

__all__ = [
    "Layout",
    "plan",
    "fully_shard_lm",
    "full",
    "like",
    "canonical_numpy",
    "local_bytes",
    "ContextParallel",
]


@dataclass(frozen=True)
class Layout:
    """How the ``world`` ranks share the work: ``data`` ways over each batch's rows, ``context``
    ways along t (world = data x context), and FSDP shard groups of ``shard`` ranks (0: the
    parameters are whole on every rank)."""

    world: int
    data: int
    context: int
    shard: int
    data_rank: int
    context_rank: int


def plan(workers: parallel.Workers, *, shard: int | None, context: int) -> Layout:
    """The layout of ``workers`` for ``--shard`` (None: off; 0: over every rank) and
    ``--context-parallel`` ``context``; ParallelError when the ranks cannot be arranged so."""
    world = workers.world
    if shard is not None and context > 1:
        raise ParallelError(
            "--shard and --context-parallel cannot be combined (context-parallel FLASH reads each "
            "block's whole parameters); pick one"
        )
    if context < 1 or world % context:
        raise ParallelError(
            f"--context-parallel {context} must divide the {world} processes torchrun started "
            f"(start them with torchrun --nproc_per_node={context} or a multiple)"
        )
    groups = 0
    if shard is not None:
        groups = shard or world
        if world % groups:
            raise ParallelError(
                f"--shard {shard} must divide the {world} processes torchrun started"
            )
    data = world // context
    return Layout(world, data, context, groups, workers.rank // context, workers.rank % context)


def _mesh(device: torch.device, shape: tuple[int, ...], names: tuple[str, ...]):
    return init_device_mesh(device.type, shape, mesh_dim_names=names)


def fully_shard_lm(loss_module: torch.nn.Module, lm, layout: Layout, device: torch.device):
    """FSDP2 on each block of ``lm`` and then on ``loss_module`` (whose forward computes the loss
    and which holds ``lm``): one shard group of ``layout.shard`` ranks, or HSDP with groups of
    ``layout.shard`` replicated across ``world / shard`` groups. Returns ``loss_module``."""
    replicas = layout.world // layout.shard
    if replicas == 1:
        mesh = _mesh(device, (layout.shard,), ("shard",))
    else:
        mesh = _mesh(device, (replicas, layout.shard), ("replicate", "shard"))
    # The blocks return views (a reshape of the spec's last op); nothing downstream writes into
    # them in place (the spec is out-of-place throughout), which is what FSDP2's warning is about.
    warnings.filterwarnings(
        "ignore", r"FSDP2-wrapped module \(FSDP\w+\) returned a view tensor", UserWarning
    )
    for block in lm.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(loss_module, mesh=mesh)
    return loss_module


def full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (a collective: every rank of its mesh must call it); a plain
    tensor unchanged."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def like(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The whole tensor ``t`` placed as parameter ``p`` is (this rank's shard of it when ``p`` is
    a DTensor; every rank must call it then); ``t`` unchanged otherwise."""
    if isinstance(p, DTensor):
        return distribute_tensor(t, p.device_mesh, p.placements)
    return t


def canonical_numpy(lm) -> dict[str, np.ndarray]:
    """``lm``'s canonical weights as float32 NumPy, gathered from the shards (every rank must
    call it)."""
    out = {}
    for name, value in lm.canonical_params().items():
        whole = full(value.detach())
        out[name] = whole.float().cpu().contiguous().numpy().copy()
    return out


def local_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this rank holds of the parameters and of AdamW's state (its shards), and of the
    whole model: {"params", "optimizer", "params_whole", "optimizer_whole"}."""

    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if isinstance(t, DTensor) else t

    out = dict.fromkeys(("params", "optimizer", "params_whole", "optimizer_whole"), 0)
    for p in model.parameters():
        out["params"] += local(p).numel() * p.element_size()
        out["params_whole"] += p.numel() * p.element_size()
        for value in optimizer.state.get(p, {}).values():
            if torch.is_tensor(value) and value.dim() > 0:  # the moments (not the step count)
                out["optimizer"] += local(value).numel() * value.element_size()
                out["optimizer_whole"] += value.numel() * value.element_size()
    return out


def sharded_eval_loss(engine, inputs, targets, loss_mask=None) -> tuple[float, int]:
    """The engine's ``eval_loss`` under FSDP: every rank runs a forward (a rank with no rows of
    an uneven last batch runs one row and counts nothing), as FSDP's all-gathers need."""
    mine = parallel.rows(len(targets), engine.dp)
    x, y = np.asarray(inputs)[mine], np.asarray(targets)[mine]
    m = loss_mask_rows(loss_mask, mine)
    n = counted_positions(y, m)
    if not len(y):  # run the first row for the collectives, count nothing
        x, y = np.asarray(inputs)[:1], np.asarray(targets)[:1]
        m = loss_mask_rows(loss_mask, slice(0, 1))
    engine.model.eval()
    with torch.no_grad(), engine._autocast():
        mask = None if m is None else torch.as_tensor(m, device=engine.device)
        loss = engine._loss(engine._tensor(x), engine._tensor(y), loss_mask=mask)
    # FSDP keeps the root's parameters whole after a forward without backward: shard them again,
    # so that the module's parameters are the optimizer's (sharded) ones
    engine._loss.reshard()
    total = float(loss) * n if n else 0.0
    total, count = parallel.all_sum([total, n], engine.dp)
    return total, int(count)


class _ContextBlock:
    """Block i of the LM for :func:`flashcore.lm_hidden`'s ``blocks``: the FLASH module on this
    rank's part of the sequence, through :func:`context_parallel_flash` over ``group``."""

    def __init__(self, layer, group, stats: CommStats | None):
        self.layer, self.group, self.stats = layer, group, stats

    def __call__(self, x: torch.Tensor, mask=None, segment_ids=None) -> torch.Tensor:
        """x: (b, t / context, d) -> (b, t / context, d)."""
        if segment_ids is not None:
            raise NotImplementedError(
                "context-parallel training does not support packed segment ids (segment_ids)"
            )
        return context_parallel_flash(self.layer, x, group=self.group, mask=mask, stats=self.stats)


class ContextParallel:
    """Context-parallel training steps for the torch engine (see the module docstring).

    ``stats``: a :class:`CommStats` that counts the bytes of the FLASH exchanges (forward and
    backward) and of the gradient all-reduce, or None."""

    def __init__(self, layout: Layout, device: torch.device, stats: CommStats | None = None):
        self.layout, self.stats = layout, stats
        mesh = _mesh(device, (layout.data, layout.context), ("data", "context"))
        self.group = mesh.get_group("context")
        self.data = parallel.Workers(layout.data_rank, layout.data, device)

    def _mine(self, inputs, targets, loss_mask):
        """This rank's (rows, positions) of the global (b, T) arrays -> x, y, mask (NumPy)."""
        rows = parallel.rows(len(inputs), self.data)
        t = np.asarray(inputs).shape[1] // self.layout.context
        cols = slice(self.layout.context_rank * t, (self.layout.context_rank + 1) * t)
        m = loss_mask_rows(loss_mask, rows)
        return (
            np.asarray(inputs)[rows, cols],
            np.asarray(targets)[rows, cols],
            None if m is None else m[:, cols],
        )

    def _check(self, inputs, *, even_rows: bool) -> None:
        b, t = np.asarray(inputs).shape
        if even_rows:
            check_split(b, self.layout.data, f"{self.layout.data} data-parallel groups")
        if t % self.layout.context:
            raise ParallelError(
                f"a sequence of {t} positions cannot be split over {self.layout.context} "
                "context-parallel ranks"
            )

    def local_loss(self, lm, x: torch.Tensor, y: torch.Tensor, mask=None) -> torch.Tensor:
        """The mean loss of this rank's part: (b', t') tokens and targets -> ()."""
        blocks = [_ContextBlock(layer, self.group, self.stats) for layer in lm.layers]
        return lm_loss(
            lm.canonical_params(), x, y, config=lm.config, xp=xp, loss_mask=mask,
            blocks=blocks, loss_core=chunked_loss,
        )  # fmt: skip

    def _sum_grads(self, lm) -> None:
        """Every parameter's gradient summed over the world (one flat all-reduce)."""
        params = [p for p in lm.parameters() if p.grad is not None]
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        if self.stats is not None:
            self.stats.record("all_reduce", flat.shape, flat.numel() * flat.element_size(), 2)
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

    def train_step(self, engine, inputs, targets, lr: float, loss_mask=None) -> float:
        """One AdamW step of ``engine`` on the global (b, T) batch -> the mean loss of the batch."""
        self._check(inputs, even_rows=True)
        x, y, m = self._mine(inputs, targets, loss_mask)
        share = counted_positions(y, m) / counted_positions(targets, loss_mask)
        engine.model.train()
        with engine._autocast():
            mask = None if m is None else torch.as_tensor(m, device=engine.device)
            part = self.local_loss(engine.model, engine._tensor(x), engine._tensor(y), mask)
            loss = part * share  # the ranks' losses sum to the whole batch's mean
        engine.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._sum_grads(engine.model)
        if engine.optim_config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(engine.model.parameters(), engine.optim_config.grad_clip)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        engine.optimizer.step()
        (total,) = parallel.all_sum([float(loss.detach())], engine.dp)
        return total

    @torch.no_grad()
    def eval_loss(self, engine, inputs, targets, loss_mask=None) -> tuple[float, int]:
        """(sum of the losses, positions counted) of the global batch, as ``Engine.eval_loss``."""
        self._check(inputs, even_rows=False)  # an uneven last batch: a group may get no rows
        x, y, m = self._mine(inputs, targets, loss_mask)
        n = counted_positions(y, m)
        total = 0.0
        if len(y):  # every rank of a context group has the same rows: all run, or none
            engine.model.eval()
            with engine._autocast():
                mask = None if m is None else torch.as_tensor(m, device=engine.device)
                part = self.local_loss(engine.model, engine._tensor(x), engine._tensor(y), mask)
            total = float(part) * n if n else 0.0
        total, count = parallel.all_sum([total, n], engine.dp)
        return total, int(count)
