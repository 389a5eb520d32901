"""``flashcore bench --backend torch``: forward+backward speed of FLASH against its baselines, side
by side in one run (what is measured, the models and the FLOP model: :mod:`flashcore.torch.bench`).

For each sequence length T, dtype and model, one child process (:mod:`flashcore.app.benchrun`)
builds the model and times its steps; the fp32 and bf16 matmul peaks are measured in children at
the start and at the end of the run, and the better of the two is the reference. The report
(ratios, targets, bench.md, bench.json, bench.png) is :mod:`flashcore.app.benchreport`'s.

    flashcore bench --backend torch                       # T in {1K, 4K, 16K, 64K}, both dtypes
    flashcore bench --backend torch --lengths 1K,4K --dtypes float32 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from flashcore.torch import bench

from . import benchreport, benchrun, benchtable
from . import progress as progress_bars

__all__ = ["main"]


def _measure(job: dict, env: dict, timeout: float) -> dict:
    """One measurement of :func:`flashcore.torch.bench.child` in its own process."""
    return benchrun.run_child("flashcore.torch.bench", job, env, timeout, mark=bench.RESULT_MARK)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="flashcore bench --backend torch",
        description="Forward+backward speed of two flashcore FLASH layers against flash-pytorch "
        "and a Transformer++ layer (batch 1, CPU).",
    )
    p.add_argument(
        "--lengths",
        nargs="+",
        default=["1K,4K,16K,64K"],
        help="sequence lengths T, as in jax / tf: comma-separated, 1K = 1024 (or space-separated)",
    )
    p.add_argument("--dtypes", nargs="+", choices=bench.DTYPES, default=list(bench.DTYPES))
    p.add_argument("--models", nargs="+", choices=bench.MODELS, default=list(bench.DEFAULT_MODELS))
    p.add_argument("--repeats", type=int, default=None, help="timed steps (default: by length)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--transformer-max-len",
        type=int,
        default=16384,
        help="skip transformer++ above this T (its attention is quadratic)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument(
        "--system-malloc",
        action="store_true",
        help="leave glibc's malloc settings alone (default: no mmap / no trim for big tensors)",
    )
    p.add_argument("--out", type=Path, default=Path("bench-torch"), help="output directory")
    p.add_argument("--timeout", type=float, default=3600.0, help="per measurement, seconds")
    p.add_argument("--matmul-size", type=int, default=4096, help="n of the n x n peak matmul")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    args.lengths = [t for text in args.lengths for t in benchtable.parse_lengths(p, text)]
    if not args.lengths or min(args.lengths) < 1:
        p.error(f"--lengths must be positive, got {args.lengths}")
    return args


def _default_repeats(t: int) -> int:
    return 7 if t <= 4096 else 5 if t <= 16384 else 3


def main(argv: list[str] | None = None, *, progress=None) -> int:
    """Run the benchmark; returns a process exit code (0 even when targets are missed).

    ``progress``: an object with ``iterate(items, desc=, quiet=)`` and ``note(text, file=)``
    (default :mod:`flashcore.app.progress`, a tqdm bar over the measurements on a terminal)."""
    args = _parse(argv)
    progress = progress or progress_bars
    env = benchrun.child_env(system_malloc=args.system_malloc)
    flash_params = 2 * bench.flash_layer_params()
    ffn = bench.matched_ffn_dim(flash_params)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"flashcore torch benchmark, {started}; lengths {args.lengths}, dtypes {args.dtypes}")

    def peaks(tag: str) -> dict:
        out = {}
        for dt in args.dtypes:
            job = {"kind": "matmul", "dtype": dt, "threads": args.threads, "n": args.matmul_size}
            r = _measure(job, env, args.timeout)
            out[dt] = {k: r.get(k, float("nan")) for k in ("gflops", "gflops_cpu")}
            wall, cpu = (benchreport.fmt(out[dt][k], ".0f") for k in ("gflops", "gflops_cpu"))
            print(f"  matmul peak ({tag}) {dt}: {wall} GFLOP/s wall, {cpu} by CPU time")
        return out

    peak_start = peaks("start")
    rows: list[dict] = []
    grid = [(t, dt, m) for t in args.lengths for dt in args.dtypes for m in args.models]
    for t, dt, model in progress.iterate(grid, desc="bench torch", quiet=args.quiet):
        row = {"model": model, "dtype": dt, "t": t}
        if model == "transformer++" and t > args.transformer_max_len:
            row["skipped"] = f"T > --transformer-max-len {args.transformer_max_len}"
            rows.append(row)
            continue
        job = {
            "kind": "step",
            "model": model,
            "dtype": dt,
            "t": t,
            "threads": args.threads,
            "repeats": args.repeats or _default_repeats(t),
            "warmup": args.warmup,
            "ffn_dim": ffn,
            "compile": args.compile,
        }
        res = _measure(job, env, args.timeout)
        row.update(res)
        if "wall_s" in res:
            row["us_per_token"] = res["wall_s"] * 1e6 / t
            row["cpu_us_per_token"] = res["cpu_s"] * 1e6 / t
            flop = bench.flops_per_token(model, t, ffn) * t
            row["gflops"] = flop / res["wall_s"] / 1e9
            row["gflops_cpu"] = flop / res["cpu_s"] / 1e9
        rows.append(row)
        progress.note("  " + benchreport.row_text(row), file=sys.stdout)
    peak_end = peaks("end")
    peak = {
        dt: {k: max(peak_start[dt][k], peak_end[dt][k]) for k in ("gflops", "gflops_cpu")}
        for dt in args.dtypes
    }
    for row in rows:
        if "gflops" in row:
            row["peak_fraction"] = row["gflops"] / peak[row["dtype"]]["gflops"]
            row["peak_fraction_cpu"] = row["gflops_cpu"] / peak[row["dtype"]]["gflops_cpu"]
    benchreport.add_ratios(rows)
    targets = benchreport.targets(rows, args.lengths, args.dtypes)
    meta = {
        "started": started,
        "command": "flashcore bench --backend torch " + " ".join(argv or sys.argv[1:]),
        "machine": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "malloc_env": {} if args.system_malloc else benchrun.MALLOC_ENV,
        "matmul_peak_gflops": {"start": peak_start, "end": peak_end, "used": peak},
        "matmul_size": args.matmul_size,
        "params": {"flash_pair": flash_params, "transformer++_ffn_dim": ffn},
        "flops_model": bench.__doc__.split("FLOPs:")[1].split("\n\n")[0].strip(),
    }
    md = benchreport.markdown(rows, targets, meta)
    print()
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.md").write_text(md)
    (args.out / "bench.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "targets": targets}, indent=2)
    )
    png = benchreport.plot(rows, args.out / "bench.png")
    print(f"wrote {args.out / 'bench.md'}, {args.out / 'bench.json'}" + (f", {png}" if png else ""))
    return 0
