"""``flashcore bench --backend jax|tf``: the options and the table (one row per sequence length and
dtype) around a backend's step builder, ``flashcore.<backend>.bench.bench_one`` / ``describe``."""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
from collections.abc import Callable, Iterable

from . import progress

__all__ = ["parse_length", "parse_lengths", "parse_args", "print_table", "main"]

TABLE_BACKENDS = ("jax", "tf")  # the backends whose bench module is a step builder for this table


def parse_length(text: str) -> int:
    """'4K' -> 4096, '1M' -> 1048576, '1000' -> 1000."""
    text = text.strip().upper()
    scale = {"K": 1024, "M": 1024**2}.get(text[-1:], 1)
    return int(text[:-1] if scale > 1 else text) * scale


def parse_lengths(ap: argparse.ArgumentParser, text: str) -> list[int]:
    """'1K,4K,1000' -> [1024, 4096, 1000]; anything else is ``ap``'s usage error."""
    try:
        return [parse_length(s) for s in text.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--lengths must be integers or nK, got {text!r}")


def parse_args(prog: str, description: str, argv: list[str] | None):
    """The benchmark options -> (args, lengths, dtypes); a bad value exits with a usage error."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--lengths", default="1K,4K,16K,64K", help="comma-separated T (1K = 1024)")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated dtypes")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per (T, dtype)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--qk", type=int, default=128)
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    lengths = parse_lengths(ap, args.lengths)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in ("float32", "bfloat16")]
    if bad or args.repeats < 1:
        ap.error(f"--dtypes takes float32 / bfloat16 (got {bad}); --repeats must be >= 1")
    return args, lengths, dtypes


def print_table(
    bench_one: Callable[..., tuple[float, list[float]]],
    lengths: Iterable[int],
    dtypes: Iterable[str],
    *,
    repeats: int,
    dim: int,
    chunk: int,
    qk: int,
    batch: int,
    quiet: bool = False,
) -> None:
    """Run ``bench_one(t, dtype, ...) -> (compile seconds, step seconds)`` for every length and
    dtype and print median ms per step, µs per token, min ms and compile seconds."""
    header = (
        f"{'T':>7} {'dtype':>9} {'median ms':>11} {'us/token':>9} {'min ms':>9} {'compile s':>10}"
    )
    print(header)
    print("-" * len(header))
    jobs = [(t, dtype) for t in lengths for dtype in dtypes]
    for t, dtype in progress.iterate(jobs, desc="bench", quiet=quiet):
        compile_s, times = bench_one(
            t, dtype, repeats=repeats, dim=dim, chunk=chunk, qk=qk, batch=batch
        )
        med = statistics.median(times)
        progress.note(
            f"{t:>7} {dtype:>9} {med * 1e3:>11.1f} {med * 1e6 / (t * batch):>9.2f} "
            f"{min(times) * 1e3:>9.1f} {compile_s:>10.1f}",
            file=sys.stdout,
        )


def main(backend: str, argv: list[str] | None = None) -> int:
    """Parse the options, print ``describe(...)`` and the table for ``backend``; the exit code."""
    mod = importlib.import_module(f"flashcore.{backend}.bench")
    args, lengths, dtypes = parse_args(
        f"flashcore bench --backend {backend}", mod.__doc__.split("\n")[0], argv
    )
    sizes = dict(batch=args.batch, dim=args.dim, chunk=args.chunk, qk=args.qk)
    print(mod.describe(repeats=args.repeats, **sizes))
    print_table(mod.bench_one, lengths, dtypes, repeats=args.repeats, quiet=args.quiet, **sizes)
    return 0
