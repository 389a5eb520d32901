"""Context-parallel FLASH: bytes communicated per layer and forward time, against T.

    python -m flashcore.app.context_parallel_bench [--lengths 1K,4K,16K,64K] [--world 2]

Starts ``--world`` CPU processes (gloo, one thread each); each holds T / world positions of every
sequence and runs one FLASH layer forward with :func:`context_parallel_flash`. The bytes are
counted by :class:`CommStats` on what passes through the collectives (not computed from a
formula) and printed next to the formula: one (b, s, e) float32 summary per rank, gathered from
every rank (b x s x e x 4 x world), plus the token shift's (b, d + 1) halo row when it is on.
Time: the median over ``--repeats`` forwards of the slowest rank, after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import flashcore as fc
from flashcore.context_parallel import summary_bytes
from flashcore.torch.context_parallel import CommStats, context_parallel_flash
from flashcore.torch.layers import FLASH

from .cli_args import parse_lengths

__all__ = ["main"]


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[int]]:
    ap = argparse.ArgumentParser(
        prog="python -m flashcore.app.context_parallel_bench", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--lengths", default="1K,4K,16K,64K", help="comma-separated T (1K = 1024)")
    ap.add_argument("--world", type=int, default=2, help="processes (ranks)")
    ap.add_argument("--repeats", type=int, default=3, help="timed forwards per T")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--qk", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--non-causal", action="store_true", help="a non-causal layer")
    ap.add_argument("--token-shift", action="store_true", help="turn the token shift on")
    args = ap.parse_args(argv)
    lengths = parse_lengths(ap, args.lengths)
    if args.world < 1 or args.repeats < 1 or args.batch < 1:
        ap.error("--world, --repeats and --batch must be >= 1")
    bad = [t for t in lengths if t % (args.world * args.chunk)]
    if bad:
        ap.error(f"every T must be a multiple of world x chunk = {args.world * args.chunk}: {bad}")
    return args, lengths


def _config(args: argparse.Namespace) -> fc.FlashConfig:
    return fc.FlashConfig(
        dim=args.dim,
        qk_dim=args.qk,
        chunk_size=args.chunk,
        causal=not args.non_causal,
        token_shift=args.token_shift,
    )


def _rank(rank: int, args: argparse.Namespace, lengths: list[int], out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=args.world
    )
    try:
        torch.set_num_threads(1)
        layer = FLASH(_config(args), seed=0).eval()
        rows = []
        for t_all in lengths:
            t = t_all // args.world
            g = torch.Generator().manual_seed(rank)
            x = torch.randn(args.batch, t, args.dim, generator=g)
            stats = CommStats()
            times = []
            with torch.no_grad():
                for i in range(args.repeats + 1):
                    dist.barrier()
                    start = time.perf_counter()
                    one = CommStats()
                    context_parallel_flash(layer, x, stats=one)
                    elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
                    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the slowest rank
                    if i:
                        times.append(float(elapsed))
                    stats = one
            rows.append(
                {
                    "T": t_all,
                    "sent": stats.sent,
                    "gathered": stats.sent + stats.received,
                    "calls": [list(c) for c in stats.calls],
                    "ms": statistics.median(times) * 1e3,
                }
            )
        if rank == 0:
            (Path(out_dir) / "rows.json").write_text(json.dumps(rows))
        dist.barrier()  # tear gloo down together (see flashcore.torch.parallel.leave)
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one row per T; returns the exit code."""
    args, lengths = _parse(argv)
    config = _config(args)
    b, w = args.batch, args.world
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_rank, args=(args, lengths, out_dir), nprocs=w, join=True)
        rows = json.loads((Path(out_dir) / "rows.json").read_text())
    formula = summary_bytes(config, b) * w + (b * (args.dim + 1) * 4 * w if args.token_shift else 0)
    print(
        f"FLASH d={args.dim} e={config.expanded_dim} s={args.qk} C={args.chunk} b={b} "
        f"{'causal' if config.causal else 'non-causal'}"
        f"{', token shift' if args.token_shift else ''}; {w} gloo processes, 1 thread each; "
        f"forward only, bytes per rank per layer"
    )
    print(
        "formula: b x s x e x 4 x world"
        + (" + b x (d + 1) x 4 x world (halo)" if args.token_shift else "")
        + f" = {formula} bytes gathered per rank"
    )
    header = (
        f"| {'T':>6} | {'T/rank':>6} | {'sent (measured)':>15} | {'gathered (measured)':>19} "
        f"| {'formula':>8} | {'forward ms (median)':>19} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        print(
            f"| {r['T']:>6} | {r['T'] // w:>6} | {r['sent']:>15} | {r['gathered']:>19} "
            f"| {formula:>8} | {r['ms']:>19.1f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
