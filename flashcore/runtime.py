"""What every backend engine shares: the :class:`Engine` protocol, AdamW's hyper-parameters and
the checks every engine makes (spec storey: backends import it, it imports no framework).

An engine is what a backend provides to ``flashcore train / eval / generate``.

An engine owns one language model and its AdamW state in its framework, and talks to the driver
in NumPy and canonical names only, so that checkpoints (and optimizer moments) move between
backends unchanged. Engines live in ``flashcore.<backend>.engine`` and are found by
:func:`flashcore.app.engine.load_engine`.

AdamW, the same in every engine: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
p -= lr (m / (1 - b1^k) / (sqrt(v / (1 - b2^k)) + eps) + wd p) with k the step count, decoupled
weight decay on every tensor of rank >= 2 only (kernels and embeddings; not norms, biases,
scale-offsets or biases tables), and global-norm gradient clipping before the update.

Data parallelism (``data_parallel=True``, what ``flashcore train`` asks for): every process draws
the same global batch and hands it whole to ``train_step`` / ``eval_loss``; the engine splits it
over its ``workers`` (torch: the processes torchrun started, one DistributedDataParallel replica
each; jax: the devices of this one process, through ``jax.sharding``) and returns the loss of the
whole batch. Only the process with ``is_main`` writes logs and checkpoints; ``close`` ends the
engine's part in any process group.

The torch and jax engines also take ``shard`` (None, or workers per shard group, 0: all) and
``context_parallel`` (workers per sequence, 1: off), ``flashcore train --shard`` /
``--context-parallel`` (:mod:`flashcore.app.scale`); ``workers`` then counts the data-parallel
groups, and ``params`` / ``optimizer_state`` gather the shards (every process must call them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .config import LMConfig

__all__ = [
    "OptimConfig",
    "Engine",
    "decays",
    "ParallelError",
    "launched_processes",
    "check_dtype",
    "check_split",
    "counted_positions",
    "loss_mask_rows",
    "single_process_only",
    "check_grad_accum",
    "micro_batches",
    "micro_weights",
]


@dataclass(frozen=True)
class OptimConfig:
    """AdamW hyper-parameters (the learning rate comes with each step)."""

    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # global norm; 0 disables


def decays(name: str, shape: tuple[int, ...]) -> bool:
    """Whether AdamW's weight decay applies to a canonical tensor: kernels and embeddings."""
    return len(shape) >= 2 and not name.endswith(("qk.gamma", "qk.beta"))


class ParallelError(ValueError):
    """A data-parallel set-up that cannot work (a batch the workers cannot share evenly, an engine
    started by a launcher it does not support)."""


def launched_processes() -> int:
    """How many processes a launcher (torchrun) started for this job: ``WORLD_SIZE``, else 1."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        n = int(text)
    except ValueError:
        raise ParallelError(f"WORLD_SIZE={text!r} in the environment is not a number") from None
    if n < 1:
        raise ParallelError(f"WORLD_SIZE={n} in the environment must be >= 1")
    return n


def check_dtype(dtype: str) -> None:
    """An engine's compute dtype must be float32 or bfloat16 (ValueError otherwise)."""
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")


def single_process_only(backend: str, advice: str) -> None:
    """ParallelError when torchrun started several processes for an engine that does not join a
    process group (``advice``: what to do instead)."""
    if launched_processes() > 1:
        raise ParallelError(
            f"the {backend} engine does not run under torchrun "
            f"(WORLD_SIZE={launched_processes()}): {advice}"
        )


def loss_mask_rows(loss_mask: np.ndarray | None, rows=slice(None)) -> np.ndarray | None:
    """An engine's (b, t) loss mask as bool NumPy, its ``rows`` only (a data-parallel worker's
    part of the global batch; default all): (rows, t) bool, or None (every position counts)."""
    return None if loss_mask is None else np.asarray(loss_mask, bool)[rows]


def counted_positions(targets: np.ndarray, loss_mask: np.ndarray | None) -> int:
    """How many positions a loss over (b, t) ``targets`` counts: all of them, or the True
    entries of the (b, t) ``loss_mask``."""
    return int(np.asarray(targets).size if loss_mask is None else np.asarray(loss_mask).sum())


def check_split(batch: int, workers: int, note: str) -> None:
    """ParallelError unless a global batch of ``batch`` rows splits evenly over ``workers``."""
    if batch % workers:
        raise ParallelError(f"a batch of {batch} rows cannot be split evenly over {note}")


# -- gradient accumulation -------------------------------------------------------------------


def check_grad_accum(grad_accum: int, rows: int, note: str = "") -> None:
    """ValueError unless ``grad_accum`` >= 1 divides a worker's ``rows`` (its share of the global
    batch; ``note``: whose share, for the message)."""
    if isinstance(grad_accum, bool) or not isinstance(grad_accum, int) or grad_accum < 1:
        raise ValueError(f"grad_accum must be an integer >= 1, got {grad_accum!r}")
    if rows % grad_accum:
        whose = f" ({note})" if note else ""
        raise ValueError(
            f"gradient accumulation over {grad_accum} micro-batches needs a batch of rows "
            f"divisible by {grad_accum}; each worker has {rows}{whose}"
        )


def micro_batches(rows: int, grad_accum: int) -> list[slice]:
    """The ``grad_accum`` consecutive micro-batches of a worker's ``rows`` rows (as slices)."""
    check_grad_accum(grad_accum, rows)
    m = rows // grad_accum
    return [slice(k * m, (k + 1) * m) for k in range(grad_accum)]


def micro_weights(targets: np.ndarray, loss_mask: np.ndarray | None, parts: list) -> np.ndarray:
    """How much each micro-batch's mean loss weighs in the mean over the whole batch: its counted
    positions over the batch's, (n,) float64 summing to 1 (to 0 when nothing is counted).

    targets: (b, t); loss_mask: (b, t) bool or None (every position counts); parts: the
    micro-batches' row selections. The sum of weight_k * mean_k is the batch's mean loss exactly,
    also when a masked LM counts different numbers of positions in each micro-batch."""
    counts = np.asarray(
        [counted_positions(np.asarray(targets)[rows], loss_mask_rows(loss_mask, rows))
         for rows in parts],
        np.float64,
    )  # fmt: skip
    return counts / max(float(counts.sum()), 1.0)


class Engine(Protocol):
    """One LM in one framework. All arrays in and out are NumPy; names are canonical."""

    config: LMConfig
    workers: int  # how many ways each batch is split (1: no data parallelism)
    workers_note: str  # e.g. "2 processes (torchrun, gloo)"; "" when workers == 1
    is_main: bool  # whether this process writes logs, progress and checkpoints
    grad_accum: int  # micro-batches per optimizer step (1: none)
    grad_norm: float  # the global gradient norm of the last train_step, before clipping

    def __init__(
        self,
        config: LMConfig,
        params: dict[str, np.ndarray],
        *,
        dtype: str = "float32",
        optim: OptimConfig | None = None,
        seed: int = 0,
        data_parallel: bool = False,
        grad_accum: int = 1,
        checkpoint_activations: bool = False,
    ) -> None:
        """``grad_accum``: each ``train_step`` runs every worker's rows in this many equal
        micro-batches (forward and backward one after the other, the gradients summed with
        :func:`micro_weights`), then clips the global norm and takes one AdamW step: the step of
        the whole batch at a fraction of the activation memory. ``checkpoint_activations``:
        recompute each block's activations in the backward pass instead of keeping them (the
        ``remat`` of :func:`flashcore.lm_hidden`); the gradients are the same."""

    def train_step(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        lr: float,
        loss_mask: np.ndarray | None = None,
    ) -> float:
        """One AdamW step on (b, t) int64 batches; returns the loss before the update (nats).

        loss_mask: (b, t) bool, the positions the loss counts (the masked-LM objective's chosen
        positions, :mod:`flashcore.mlm`); None counts every position (the causal LM).
        Data parallel: (b, t) is the global batch (the same in every process), b divisible by
        ``workers``; the loss is the mean over the whole batch."""

    def eval_loss(
        self, inputs: np.ndarray, targets: np.ndarray, loss_mask: np.ndarray | None = None
    ) -> tuple[float, int]:
        """(sum of per-token losses in nats, number of tokens counted) without updating anything;
        loss_mask as in :meth:`train_step` (the count is then its number of True entries).

        Data parallel: of the whole (b, t) batch, any b; every process must call it."""

    def close(self) -> None:
        """Leave any process group the engine joined (a no-op otherwise)."""

    def params(self) -> dict[str, np.ndarray]:
        """Canonical float32 weights."""

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """AdamW moments ``m.<name>``, ``v.<name>`` (canonical layout) and ``step`` (())."""

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`optimizer_state` returned (from any engine)."""

    def generate(
        self,
        prompt: np.ndarray,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
    ) -> np.ndarray:
        """Sample a continuation of ``prompt`` (b, t0) -> (b, t0 + max_new_tokens) int64
        (:func:`flashcore.sampling.sample`: temperature 0 greedy, top-k, top-p nucleus)."""
