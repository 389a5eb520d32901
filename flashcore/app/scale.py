"""``flashcore train``'s options past data parallelism: ``--shard [N]`` (sharded parameters and
AdamW state) and ``--context-parallel N`` (each sequence split along t), their checks and what
they ask of the engine. docs/scale-out.md has the commands.

    scale.add_arguments(parser)
    scale.check(args)                              # ParallelError before anything is written
    engine = Engine(..., **scale.engine_options(args))

How a run is laid out over processes or devices is not part of the run: ``--resume`` takes the
command's own values (a run trained sharded may resume unsharded, on any number of workers).
"""

from __future__ import annotations

import argparse

from ..runtime import ParallelError
from .cli_args import nonneg_int, positive

__all__ = ["LAYOUT_ARGS", "add_arguments", "check", "engine_options"]

#: the arguments that say how a run is laid out, not what it is
LAYOUT_ARGS = ("shard", "context_parallel")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The ``--shard`` and ``--context-parallel`` options."""
    ap.add_argument(
        "--shard", type=nonneg_int, nargs="?", const=0, default=None, metavar="N",
        help="shard the parameters and AdamW state over N workers (default: all). torch, under "
        "torchrun: FSDP2 on every block (N < processes: replicated groups of N); jax: a "
        "(data, fsdp) mesh with N devices on fsdp",
    )  # fmt: skip
    ap.add_argument(
        "--context-parallel", type=positive(int), default=1, metavar="N",
        help="split every sequence along t over N workers (FLASH only; torch: N of torchrun's "
        "processes per group, jax: N devices), data parallel over the rest",
    )  # fmt: skip


def check(args: argparse.Namespace) -> None:
    """ParallelError naming the problem when ``--shard`` / ``--context-parallel`` cannot apply
    to this run (the backend, the architecture, the context, the objective, dropout)."""
    n = getattr(args, "context_parallel", 1)
    shard = getattr(args, "shard", None)
    if shard is None and n == 1:
        return
    flag = f"--context-parallel {n}" if n > 1 else "--shard"
    if args.backend == "tf":
        raise ParallelError(f"{flag}: the tf backend trains on one device; use torch or jax")
    if shard is not None and n > 1:
        raise ParallelError(
            "--shard and --context-parallel cannot be combined (context-parallel FLASH reads "
            "each block's whole parameters); pick one"
        )
    if n == 1:
        return
    if args.arch != "flash":
        raise ParallelError(
            f"{flag} needs --arch flash (context parallelism exchanges FLASH's chunk states; "
            f"{args.arch} attends over the whole sequence)"
        )
    if getattr(args, "objective", "clm") != "clm":
        raise ParallelError(f"{flag} trains a causal LM only (--objective clm)")
    if args.dropout:
        raise ParallelError(f"{flag} applies no dropout; use --dropout 0")
    if getattr(args, "grad_accum", 1) > 1 or getattr(args, "checkpoint_activations", False):
        raise ParallelError(
            f"{flag} takes whole steps of its own: it does not combine with --grad-accum or "
            "--checkpoint-activations yet (context parallelism already splits the activations)"
        )
    if args.context % (n * args.chunk):
        raise ParallelError(
            f"{flag}: --context {args.context} must be a multiple of {n} x --chunk {args.chunk} "
            f"= {n * args.chunk} (each worker holds whole chunks)"
        )


def engine_options(args: argparse.Namespace) -> dict:
    """The engine's keyword arguments for the layout (none when neither option is on, so that
    an engine without them, tf's, is called as before)."""
    out: dict = {}
    if getattr(args, "shard", None) is not None:
        out["shard"] = args.shard
    if getattr(args, "context_parallel", 1) > 1:
        out["context_parallel"] = args.context_parallel
    return out
