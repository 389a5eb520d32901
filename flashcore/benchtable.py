"""The table the JAX and TF benchmarks print: one row per sequence length and dtype."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable

__all__ = ["parse_length", "print_table"]


def parse_length(text: str) -> int:
    """'4K' -> 4096, '1000' -> 1000."""
    text = text.strip().upper()
    return int(text[:-1]) * 1024 if text.endswith("K") else int(text)


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
) -> None:
    """Run ``bench_one(t, dtype, ...) -> (compile seconds, step seconds)`` for every length and
    dtype and print median ms per step, µs per token, min ms and compile seconds."""
    header = (
        f"{'T':>7} {'dtype':>9} {'median ms':>11} {'us/token':>9} {'min ms':>9} {'compile s':>10}"
    )
    print(header)
    print("-" * len(header))
    for t in lengths:
        for dtype in dtypes:
            compile_s, times = bench_one(
                t, dtype, repeats=repeats, dim=dim, chunk=chunk, qk=qk, batch=batch
            )
            med = statistics.median(times)
            print(
                f"{t:>7} {dtype:>9} {med * 1e3:>11.1f} {med * 1e6 / (t * batch):>9.2f} "
                f"{min(times) * 1e3:>9.1f} {compile_s:>10.1f}",
                flush=True,
            )
