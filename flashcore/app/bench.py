"""``flashcore bench``: forward+backward speed of FLASH in torch, jax and tf, against flash-pytorch
and the Transformer++ block, side by side in one run with one step definition (the models, the
step and the FLOP model: :mod:`flashcore.app.benchrun`).

For each sequence length T, dtype, backend and model, one child process
(:func:`flashcore.app.benchrun.run_child`) builds the step and times it; the fp32 and bf16
``torch.mm`` matmul peaks are measured in children at the start and at the end of the run, and the
better of the two is the reference. The report (ratios, targets, bench.md, bench.json, bench.png)
is :mod:`flashcore.app.benchreport`'s.

    flashcore bench                                       # torch, jax, tf; T in {1K, 4K, 16K, 64K}
    flashcore bench --backends torch jax --lengths 1K,4K --dtypes float32 --repeats 3
    flashcore bench --backend torch                       # one backend (with the peer)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

from . import benchreport, benchrun
from . import progress as progress_bars
from .cli import framework_backends
from .cli_args import parse_lengths

__all__ = ["main"]

# what each backend's children import, to skip a backend that is not installed
NEEDS = {"torch": ("torch",), "jax": ("jax", "flax"), "tf": ("tensorflow", "keras")}
PEER = "flash_pytorch"
# the longest T of the Transformer++ block: torch's attention is SDPA; jax's and tf's the spec's
# dense T x T scores (8 heads x T^2 floats, several times over in the backward pass)
TRANSFORMER_MAX_LEN = {"torch": 16384, "jax": 4096, "tf": 4096}


def _missing(modules) -> str | None:
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"{', '.join(absent)} not installed" if absent else None


def _parse(argv: list[str] | None) -> argparse.Namespace:
    backends = framework_backends()
    p = argparse.ArgumentParser(
        prog="flashcore bench",
        description="Forward+backward speed of two flashcore FLASH layers in every backend, "
        "against flash-pytorch and a Transformer++ block (batch 1, CPU), with one step definition.",
    )
    p.add_argument(
        "--backends",
        nargs="+",
        choices=backends,
        default=list(benchrun.BACKENDS),
        help="the backends to time (default: all three; one not installed is skipped)",
    )
    p.add_argument("--backend", choices=backends, help="one backend: the same as --backends B")
    p.add_argument(
        "--lengths",
        nargs="+",
        default=["1K,4K,16K,64K"],
        help="sequence lengths T: comma-separated, 1K = 1024 (or space-separated)",
    )
    p.add_argument("--dtypes", nargs="+", choices=benchrun.DTYPES, default=list(benchrun.DTYPES))
    p.add_argument(
        "--models",
        nargs="+",
        choices=list(benchrun.MODELS),
        default=list(benchrun.DEFAULT_MODELS),
        help="flashcore and transformer++ run in every backend, the others in torch only",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed steps (default: by length)")
    p.add_argument(
        "--warmup", type=int, default=1, help="untimed steps first (jax / tf: at least 1, compile)"
    )
    p.add_argument("--threads", type=int, default=None, help="threads (default: the frameworks')")
    p.add_argument(
        "--transformer-max-len",
        type=int,
        default=None,
        help="skip transformer++ above this T, in every backend (its attention is quadratic; "
        "default: " + ", ".join(f"{k} {v}" for k, v in TRANSFORMER_MAX_LEN.items()) + ")",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile every torch model")
    p.add_argument(
        "--system-malloc",
        action="store_true",
        help="leave glibc's malloc settings alone (default: no mmap / no trim, huge pages)",
    )
    p.add_argument("--out", type=Path, default=Path("bench"), help="output directory")
    p.add_argument("--timeout", type=float, default=3600.0, help="per measurement, seconds")
    p.add_argument("--matmul-size", type=int, default=4096, help="n of the n x n peak matmul")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-attention-cores",
        action="store_true",
        help="skip the GAU core vs SDPA rows (torch, T <= 16K)",
    )
    args = p.parse_args(argv)
    if args.backend:
        args.backends = [args.backend]
    args.backends = [b for b in backends if b in args.backends]  # the registry's order
    args.lengths = [t for text in args.lengths for t in parse_lengths(p, text)]
    if not args.lengths or min(args.lengths) < 1:
        p.error(f"--lengths must be positive, got {args.lengths}")
    if (args.repeats is not None and args.repeats < 1) or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def _default_repeats(t: int) -> int:
    return 7 if t <= 4096 else 5 if t <= 16384 else 3


def _grid(args) -> list[dict]:
    """Every (T, dtype, backend, model) row to measure, in table order, with "skipped" set for
    those that will not run (and why)."""
    rows = []
    for t in args.lengths:
        for dt in args.dtypes:
            for backend in args.backends:
                for model in args.models:
                    if backend not in benchrun.MODELS[model]:
                        continue
                    row = {"backend": backend, "model": model, "dtype": dt, "t": t}
                    why = _missing(NEEDS[backend])
                    if why is None and model == "flash-pytorch":
                        why = _missing([PEER])
                    limit = args.transformer_max_len or TRANSFORMER_MAX_LEN[backend]
                    if why is None and model == "transformer++" and t > limit:
                        why = f"T > {limit} (quadratic attention; --transformer-max-len)"
                    if why:
                        row["skipped"] = why
                    rows.append(row)
    return rows


def _attention_rows(t: int, dtype: str, res: dict) -> list[dict]:
    """The GAU-core-vs-SDPA rows of one attention child's result (causal, then not)."""
    if "error" in res:
        return [{"t": t, "dtype": dtype, "error": res["error"]}]
    rows = []
    for mode in ("causal", "full"):
        r, causal = res[mode], mode == "causal"
        gau, sdpa = (benchrun.attention_flops(c, t, causal) for c in ("gau", "sdpa"))
        rows.append({
            "t": t, "dtype": dtype, "causal": causal, **r,
            "gau_gflops_cpu": gau / r["gau_s"] / 1e9,
            "sdpa_gflops_cpu": sdpa / r["sdpa_s"] / 1e9,
            "rate_ratio": (gau / r["gau_s"]) / (sdpa / r["sdpa_s"]),
            "rate_ratio_fwd": (gau / r["gau_fwd_s"]) / (sdpa / r["sdpa_fwd_s"]),
            # the FLASH-Quad pair (2 GAU layers) against the Transformer++ block (1 SDPA)
            "flop_ratio": 2 * gau / sdpa,
            "time_ratio": 2 * r["gau_s"] / r["sdpa_s"],
        })  # fmt: skip
    return rows


def _attention_markdown(rows: list[dict]) -> str:
    """The report's section on GAU's quadratic core against SDPA (empty without rows)."""
    if not rows:
        return ""
    lines = [
        "",
        "## FLASH-Quad's attention core against SDPA (torch, GFLOP/s by CPU time)",
        "",
        "GAU's fused relu^2 core (`gau_core_torch`, s = 128, e = 1024, a (T, T) bias) and SDPA "
        "(8 heads x 64), one forward + backward each; FLOPs: `benchrun.attention_flops` (3x the "
        "forward, the causal lower triangle only). Pair / block: two GAU layers (a FLASH-Quad "
        "pair) against one Transformer++ block, in attention FLOPs and in CPU time.",
        "",
        "| T | dtype | causal | GAU GFLOP/s | SDPA GFLOP/s | rate GAU/SDPA (fwd+bwd) | "
        "rate (fwd) | FLOPs pair/block | time pair/block |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['t']} | {r['dtype']} | | {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['t']} | {r['dtype']} | {'yes' if r['causal'] else 'no'} | "
            f"{r['gau_gflops_cpu']:.0f} | {r['sdpa_gflops_cpu']:.0f} | {r['rate_ratio']:.2f}x | "
            f"{r['rate_ratio_fwd']:.2f}x | {r['flop_ratio']:.2f} | {r['time_ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, *, progress=None) -> int:
    """Run the benchmark; returns a process exit code (0 even when targets are missed).

    ``progress``: an object with ``iterate(items, desc=, quiet=)`` and ``note(text, file=)``
    (default :mod:`flashcore.app.progress`, a tqdm bar over the measurements on a terminal)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    progress = progress or progress_bars
    flash_params = 2 * benchrun.flash_layer_params()
    ffn = benchrun.matched_ffn_dim(flash_params)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    command = " ".join(["flashcore bench", *argv])
    print(f"{command}\nflashcore benchmark, {started}; backends {args.backends}, "
          f"lengths {args.lengths}, dtypes {args.dtypes}")  # fmt: skip

    def env(backend: str) -> dict:
        return benchrun.child_env(
            system_malloc=args.system_malloc, backend=backend, threads=args.threads
        )

    def peaks(tag: str) -> dict:
        out = {}
        for dt in args.dtypes:
            job = {"kind": "matmul", "dtype": dt, "threads": args.threads, "n": args.matmul_size}
            if _missing(NEEDS["torch"]):
                r = {"error": "torch not installed"}
            else:
                r = benchrun.run_child(job, env("torch"), args.timeout)
            out[dt] = {k: r.get(k, float("nan")) for k in ("gflops", "gflops_cpu")}
            wall, cpu = (benchreport.fmt(out[dt][k], ".0f") for k in ("gflops", "gflops_cpu"))
            print(f"  matmul peak ({tag}) {dt}: {wall} GFLOP/s wall, {cpu} by CPU time")
        return out

    peak_start = peaks("start")
    framework_peaks = {}  # jax / tf: the evidence whether their CPU build has native bf16 matmuls
    for b in args.backends:
        if b == "torch" or _missing(NEEDS[b]):
            continue
        framework_peaks[b] = {}
        for dt in args.dtypes:
            job = {"kind": "matmul", "backend": b, "dtype": dt, "n": args.matmul_size}
            r = benchrun.run_child(job, env(b), args.timeout)
            framework_peaks[b][dt] = {k: r.get(k, float("nan")) for k in ("gflops", "gflops_cpu")}
            wall = benchreport.fmt(framework_peaks[b][dt]["gflops"], ".0f")
            print(f"  {b} matmul {dt}: {wall} GFLOP/s wall")
    rows = _grid(args)
    for row in progress.iterate(rows, desc="bench", quiet=args.quiet):
        if "skipped" not in row:
            t = row["t"]
            job = {
                "kind": "step",
                **row,
                "threads": args.threads,
                "repeats": args.repeats or _default_repeats(t),
                "warmup": args.warmup,
                "ffn_dim": ffn,
                "compile": args.compile and row["backend"] == "torch",
            }
            res = benchrun.run_child(job, env(row["backend"]), args.timeout)
            row.update(res)
            if "wall_s" in res:
                row["us_per_token"] = res["wall_s"] * 1e6 / t
                row["cpu_us_per_token"] = res["cpu_s"] * 1e6 / t
                flop = benchrun.flops_per_token(row["model"], t, ffn) * t
                row["gflops"] = flop / res["wall_s"] / 1e9
                row["gflops_cpu"] = flop / res["cpu_s"] / 1e9
        progress.note("  " + benchreport.row_text(row), file=sys.stdout)
    attention = []
    if "torch" in args.backends and not args.no_attention_cores and not _missing(NEEDS["torch"]):
        for t in [t for t in args.lengths if t <= TRANSFORMER_MAX_LEN["torch"]]:
            for dt in args.dtypes:
                job = {"kind": "attention", "t": t, "dtype": dt, "threads": args.threads}
                job["repeats"] = args.repeats or _default_repeats(t)
                res = benchrun.run_child(job, env("torch"), args.timeout)
                attention += _attention_rows(t, dt, res)
    peak_end = peaks("end")
    peak = {
        dt: {k: max(peak_start[dt][k], peak_end[dt][k]) for k in ("gflops", "gflops_cpu")}
        for dt in args.dtypes
    }
    benchreport.add_peak_fractions(rows, peak)
    benchreport.add_ratios(rows)
    targets = benchreport.targets(rows)
    meta = {
        "started": started,
        "command": command,
        "backends": args.backends,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "malloc_env": {} if args.system_malloc else benchrun.malloc_env(dict(os.environ)),
        "matmul_peak_gflops": {"start": peak_start, "end": peak_end, "used": peak},
        "matmul_size": args.matmul_size,
        "framework_matmul_gflops": framework_peaks,
        "params": {"flash_pair": flash_params, "transformer++_ffn_dim": ffn},
        "step": benchrun.doc_paragraph("The step, "),
        "bfloat16": benchrun.doc_paragraph("bfloat16, as "),
        "flops_model": benchrun.doc_paragraph("FLOPs: "),
    }
    meta["attention_cores"] = attention
    md = benchreport.markdown(rows, targets, meta) + _attention_markdown(attention)
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
