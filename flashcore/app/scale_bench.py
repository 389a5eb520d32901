"""What ``flashcore train --shard`` and ``--context-parallel`` save and cost, measured on the engines.

    torchrun --standalone --nproc_per_node=2 -m flashcore.app.scale_bench shard
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m flashcore.app.scale_bench shard --backend jax
    torchrun --standalone --nproc_per_node=2 -m flashcore.app.scale_bench context --lengths 1K,4K,16K

``shard``: one training step of an LM (``--dim``, ``--layers``) with its parameters and AdamW
state sharded over every worker; prints the bytes one worker holds (the shards it owns, read off
the tensors: DTensor local shards in torch, the first device's shards in jax) against the whole.

``context`` (torch, under torchrun): for each context length T, one training step of a FLASH LM
with every sequence split over the processes (after one warm-up step); prints the bytes one rank
sent per step through the collectives, counted by :class:`flashcore.context_parallel.CommStats`
(the FLASH layers' all-gathers and their backward all-reduces, and the gradient all-reduce),
next to the same computed from the all-gather shapes: per layer, forward the (b, s, e) state
summary, a (b,) NaN flag and the token shift's (b, d + 1) row when it is on; backward the
gradients of every rank's summary (world of them); plus one float32 per parameter.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import flashcore as fc

from .cli_args import parse_lengths, positive

__all__ = ["main", "exchange_bytes"]


def _config(args, context: int) -> fc.LMConfig:
    block = fc.FlashConfig(
        dim=args.dim, qk_dim=args.qk_dim, chunk_size=args.chunk, causal=True, max_len=context
    )
    return fc.LMConfig(block=block, vocab_size=256, num_layers=args.layers)


def exchange_bytes(config: fc.LMConfig, rows: int, world: int, itemsize: int = 4) -> int:
    """Bytes one rank sends per training step through context-parallel FLASH's collectives,
    from the all-gather shapes (``linear_norm='sum'``): per layer, forward the (b, s, e) state
    summary, the (b,) NaN flag and, with token shift, the (b, d + 1) halo row; backward an
    all-reduce of the gradients of world summaries (and halo rows; the flag has none)."""
    block = config.block
    if block.linear_norm != "sum":
        raise ValueError("exchange_bytes counts linear_norm='sum' only")
    grad = rows * block.qk_dim * block.expanded_dim + (
        rows * (block.dim + 1) if block.token_shift else 0
    )
    forward = grad + rows  # the NaN flag
    return config.num_layers * (forward + world * grad) * itemsize


def _batch(rng, rows: int, t: int):
    x = rng.integers(0, 256, (rows, t + 1))
    return x[:, :-1], x[:, 1:]


def _shard(args) -> None:
    cfg = _config(args, args.context)
    rng = np.random.default_rng(0)
    if args.backend == "torch":
        from flashcore.torch import shard
        from flashcore.torch.engine import Engine

        engine = Engine(cfg, fc.init(cfg, seed=0), data_parallel=True, shard=0)
        x, y = _batch(rng, engine.workers * args.batch, args.context)
        engine.train_step(x, y, 1e-3)
        held = shard.local_bytes(engine.model, engine.optimizer)
        mine = (held["params"], held["optimizer"])
        whole = (held["params_whole"], held["optimizer_whole"])
    else:
        from flashcore.jax import engine as jax_engine
        from flashcore.jax.shard import local_bytes

        engine = jax_engine.Engine(cfg, fc.init(cfg, seed=0), data_parallel=True, shard=0)
        x, y = _batch(rng, engine.workers * args.batch, args.context)
        engine.train_step(x, y, 1e-3)
        adam = jax_engine._find_adam(engine.opt_state)
        mine = (local_bytes(engine.state), local_bytes((adam.mu, adam.nu)))
        params = sum(v.nbytes for v in engine.params().values())
        whole = (params, 2 * params)
    if engine.is_main:
        print(
            "| backend | workers | parameters | per worker | AdamW moments | per worker | ratio |\n"
            "|---|---|---|---|---|---|---|\n"
            f"| {args.backend} | {engine.workers} | {whole[0]} | {mine[0]} | {whole[1]} | "
            f"{mine[1]} | {sum(mine) / sum(whole):.3f} |"
        )
    engine.close()


def _context(args, lengths: list[int]) -> None:
    from flashcore.context_parallel import CommStats
    from flashcore.torch.engine import Engine

    cfg = _config(args, max(lengths))  # one engine (one process group) for every T
    engine = Engine(cfg, fc.init(cfg, seed=0), data_parallel=True, context_parallel=args.world)
    world, rng, rows = engine.dp.world, np.random.default_rng(0), []
    for t in lengths:
        x, y = _batch(rng, engine.workers * args.batch, t)
        engine.train_step(x, y, 1e-3)  # warm-up
        times = []
        for _ in range(args.repeats):
            engine.context.stats = stats = CommStats()
            start = time.perf_counter()
            engine.train_step(x, y, 1e-3)
            times.append(time.perf_counter() - start)
        grads = sum(n for op, shape, n in stats.calls if op == "all_reduce" and len(shape) == 1)
        layers = stats.sent - grads
        rows.append(
            f"| {t} | {t // args.world} | {layers} | {exchange_bytes(cfg, args.batch, world)} | "
            f"{grads} | {statistics.median(times) * 1e3:.0f} |"
        )
    main_rank = engine.is_main
    engine.close()
    if main_rank:
        print(
            "| T | T per rank | FLASH exchange sent per rank per step | from the shapes | "
            "gradient all-reduce | step ms (median) |\n|---|---|---|---|---|---|"
        )
        print("\n".join(rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m flashcore.app.scale_bench", description=__doc__.split("\n")[0]
    )
    ap.add_argument("what", choices=["shard", "context"])
    ap.add_argument("--backend", choices=["torch", "jax"], default="torch", help="shard only")
    ap.add_argument("--dim", type=positive(int), default=128)
    ap.add_argument("--layers", type=positive(int), default=4)
    ap.add_argument("--qk-dim", type=positive(int), default=128)
    ap.add_argument("--chunk", type=positive(int), default=256)
    ap.add_argument("--batch", type=positive(int), default=1, help="rows per data worker")
    ap.add_argument("--context", type=positive(int), default=512, help="shard: T")
    ap.add_argument("--lengths", default="1K,4K,16K", help="context: comma-separated T")
    ap.add_argument("--world", type=positive(int), default=2, help="context: ranks per sequence")
    ap.add_argument("--repeats", type=positive(int), default=1, help="context: timed steps")
    args = ap.parse_args(argv)
    if args.what == "shard":
        _shard(args)
    else:
        lengths = parse_lengths(ap, args.lengths)
        bad = [t for t in lengths if t % (args.world * args.chunk)]
        if bad:
            ap.error(f"every T must be a multiple of --world x --chunk: {bad}")
        _context(args, lengths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
