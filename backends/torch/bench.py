"""``flashcore bench --backend torch``: forward+backward speed of FLASH against its baselines.

Measured side by side in one run, at batch 1, for each sequence length T and dtype (float32, and
bfloat16 autocast):

- ``flashcore``: two ``flashcore.torch.FLASH`` layers (dim 512, chunk 256, qk 128, e = 1024,
  causal); their attention core goes through ``flashcore.torch.kernels.attention_core``;
- ``flashcore-speccore`` (optional): the same layers with the spec's own core (no fast path);
- ``flash-pytorch``: two ``flash_pytorch.FLASH(dim=512, group_size=256, query_key_dim=128,
  causal=True)`` layers (version 0.1.9, the peer implementation);
- ``transformer++``: one ``flashcore.torch.TransformerBlock`` (RMSNorm, RoPE, causal attention
  on ``scaled_dot_product_attention``, SwiGLU: the block ``flashcore train --arch transformer``
  trains) with the FFN width chosen from the parameter spec so that it has the parameter count
  of the FLASH pair.

Every (model, dtype, T) runs in its own child process (so that peak memory is that run's own
high-water mark, and one model's allocations do not slow the next); the fp32 and bf16 matmul
peaks (``torch.mm`` of 4096 x 4096) are measured in children at the start and at the end of the
run, and the better of the two is the reference. A step is forward + backward of
``sum(y * cotangent)`` w.r.t. the input and every parameter; the time is the median of
``--repeats`` steps after ``--warmup`` steps, as wall time (and process CPU time, which is less
sensitive to other processes on the machine).

FLOPs: 3x the forward matmul FLOPs (backward = 2x forward). FLASH layer, per token:
2 (d (2e + s) + e d) + 2 (C s + C e + 2 s e) (dense C x C chunks, as both FLASH implementations
compute them); Transformer++: 2 (4 d^2 + 3 d f) + 2 T d (causal attention, half of T x T).

    flashcore bench --backend torch                       # T in {1K, 4K, 16K, 64K}, both dtypes
    flashcore bench --backend torch --lengths 1024 4096 --dtypes float32 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["main", "flops_per_token"]

DIM, CHUNK, QK, EXPANSION, HEADS = 512, 256, 128, 2, 8
MODELS = ("flashcore", "flashcore-speccore", "flash-pytorch", "transformer++")
DEFAULT_MODELS = ("flashcore", "flash-pytorch", "transformer++")
DTYPES = ("float32", "bfloat16")

# Large CPU allocations are mmap'd and page-faulted on every step by default; keeping freed
# memory in the heap (no mmap, no trim) saves that for every model alike.
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


# -- models -------------------------------------------------------------------------------------


def _flash_config():
    import flashcore as fc

    return fc.FlashConfig(
        dim=DIM, expansion=EXPANSION, qk_dim=QK, chunk_size=CHUNK, causal=True, max_len=CHUNK
    )


def _param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _flashcore_pair(spec_core: bool):
    from torch import nn

    from flashcore.torch import FLASH

    config = _flash_config()
    layers = [FLASH(config, seed=i) for i in range(2)]
    if spec_core:
        from flashcore.layers import attention_core_flash

        class _SpecCore(nn.Module):  # the same parameters; the spec's core instead of the kernels
            def __init__(self, layer):
                super().__init__()
                self.layer = layer

            def forward(self, x):
                import flashcore as fc

                from .xp import xp

                return fc.flash(
                    self.layer.canonical_params(),
                    x,
                    config=self.layer.config,
                    xp=xp,
                    core=attention_core_flash,
                )

        layers = [_SpecCore(m) for m in layers]
    return nn.Sequential(*layers)


def _flash_pytorch_pair():
    from flash_pytorch import FLASH
    from torch import nn

    make = lambda: FLASH(dim=DIM, group_size=CHUNK, query_key_dim=QK, causal=True)  # noqa: E731
    return nn.Sequential(make(), make())


def _spec_params(config) -> int:
    """The parameter count of a block config, from its canonical parameter spec."""
    import numpy as np

    import flashcore as fc

    return sum(int(np.prod(p.shape)) for p in fc.param_spec(config).values())


def _transformer_config(ffn_dim: int):
    import flashcore as fc

    return fc.TransformerConfig(dim=DIM, heads=HEADS, ffn_dim=ffn_dim, causal=True)


def matched_ffn_dim(target_params: int) -> int:
    """The SwiGLU width f (a multiple of 8) whose Transformer++ block has about ``target_params``
    parameters (counted from the parameter spec; the count grows linearly in f)."""
    p8, p16 = _spec_params(_transformer_config(8)), _spec_params(_transformer_config(16))
    slope = (p16 - p8) / 8
    return max(8, int(round((8 + (target_params - p8) / slope) / 8)) * 8)


def _transformer_block(ffn_dim: int):
    """flashcore.torch's Transformer++ block (its attention on torch's SDPA), seeded."""
    from flashcore.torch import TransformerBlock

    return TransformerBlock(_transformer_config(ffn_dim), seed=0)


def flops_per_token(model: str, t: int, ffn_dim: int | None = None) -> float:
    """Forward+backward FLOPs per token (3x the forward matmul FLOPs)."""
    d, e, s, c = DIM, EXPANSION * DIM, QK, CHUNK
    if model.startswith("flash"):
        layer = 2 * (d * (2 * e + s) + e * d) + 2 * (c * s + c * e + 2 * s * e)
        return 3.0 * 2 * layer
    f = ffn_dim or matched_ffn_dim(2 * _flash_layer_params())
    return 3.0 * (2 * (4 * d * d + 3 * d * f) + 2 * t * d)


def _flash_layer_params() -> int:
    return _spec_params(_flash_config())


# -- the child process: one measurement ------------------------------------------------------------


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _child_matmul(job: dict) -> dict:
    import torch

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    n = job.get("n", 4096)
    dt = getattr(torch, job["dtype"])
    a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
    out = torch.empty(n, n, dtype=dt)
    for _ in range(2):
        torch.mm(a, b, out=out)
    wall, cpu = [], []
    for _ in range(job.get("repeats", 5)):
        w0, c0 = time.perf_counter(), time.process_time()
        torch.mm(a, b, out=out)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    flop = 2 * n**3
    return {
        "gflops": flop / statistics.median(wall) / 1e9,
        "gflops_cpu": flop / statistics.median(cpu) / 1e9,
        "threads": torch.get_num_threads(),
    }


def _child_step(job: dict) -> dict:
    import torch

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    model_name, t, dtype = job["model"], job["t"], job["dtype"]
    info: dict = {}
    if model_name in ("flashcore", "flashcore-speccore"):
        model = _flashcore_pair(spec_core=model_name == "flashcore-speccore")
        if model_name == "flashcore":
            from flashcore.torch import kernels

            x0 = torch.zeros(1, t, EXPANSION * DIM)
            info["core_path"] = kernels.core_path(x0, _flash_config())
    elif model_name == "flash-pytorch":
        model = _flash_pytorch_pair()
    else:
        model = _transformer_block(job["ffn_dim"])
    info["params"] = _param_count(model)
    if job.get("compile"):
        model = torch.compile(model)
    x = torch.randn(1, t, DIM, requires_grad=True)
    cot = torch.randn(1, t, DIM)
    params = [p for p in model.parameters()]
    use_bf16 = dtype == "bfloat16"

    def step():
        x.grad = None
        for p in params:
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            y = model(x)
        (y.float() * cot).sum().backward()

    rss0 = _rss_mb()  # model, input and imports resident; the steps' own memory comes on top
    for _ in range(job["warmup"]):
        step()
    wall, cpu = [], []
    for _ in range(job["repeats"]):
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    peak = _peak_rss_mb()
    info.update(
        wall_s=statistics.median(wall),
        cpu_s=statistics.median(cpu),
        wall_all=wall,
        # The high-water mark of the steps above what was resident before the first one.
        peak_mb=max(0.0, peak - rss0),
        rss_before_mb=rss0,
        threads=torch.get_num_threads(),
    )
    return info


def _child(job: dict) -> int:
    try:
        res = _child_matmul(job) if job["kind"] == "matmul" else _child_step(job)
    except Exception as err:  # reported in the table
        res = {"error": f"{type(err).__name__}: {err}"}
    print("BENCH_RESULT " + json.dumps(res))
    return 0


# -- the parent: orchestration, table, plot ----------------------------------------------------------


def _run_child(job: dict, env: dict, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "flashcore.torch.bench", "--child", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT ") :])
    return {"error": f"child failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}"}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="flashcore bench --backend torch",
        description="Forward+backward speed of two flashcore FLASH layers against flash-pytorch "
        "and a Transformer++ layer (batch 1, CPU).",
    )
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    p.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(DEFAULT_MODELS))
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
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _default_repeats(t: int) -> int:
    return 7 if t <= 4096 else 5 if t <= 16384 else 3


def _fmt(x, spec=".1f", missing="-"):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return missing
    return format(x, spec)


class _Plain:
    """Progress without a bar: a plain iteration, lines printed as they come."""

    @staticmethod
    def iterate(items, *, desc: str, quiet: bool = False, unit: str = "it"):
        return iter(items)

    @staticmethod
    def note(text: str, *, file=None) -> None:
        print(text, file=file or sys.stdout, flush=True)


def main(argv: list[str] | None = None, *, progress=None) -> int:
    """Run the benchmark; returns a process exit code (0 even when targets are missed).

    ``progress``: an object with ``iterate(items, desc=, quiet=)`` and ``note(text, file=)`` (the
    ``flashcore bench`` command passes :mod:`flashcore.app.progress`, a tqdm bar over the
    measurements); None: no bar."""
    args = _parse(argv)
    progress = progress or _Plain
    if args.child:
        return _child(json.loads(args.child))

    env = dict(os.environ)
    if not args.system_malloc:
        env.update(MALLOC_ENV)
    env.setdefault("PYTHONUNBUFFERED", "1")
    flash_params = 2 * _flash_layer_params()
    ffn = matched_ffn_dim(flash_params)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"flashcore torch benchmark, {started}; lengths {args.lengths}, dtypes {args.dtypes}")

    def peaks(tag: str) -> dict:
        out = {}
        for dt in args.dtypes:
            r = _run_child(
                {"kind": "matmul", "dtype": dt, "threads": args.threads, "n": args.matmul_size},
                env,
                args.timeout,
            )
            out[dt] = {k: r.get(k, float("nan")) for k in ("gflops", "gflops_cpu")}
            print(
                f"  matmul peak ({tag}) {dt}: {_fmt(out[dt]['gflops'], '.0f')} GFLOP/s wall, "
                f"{_fmt(out[dt]['gflops_cpu'], '.0f')} by CPU time"
            )
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
        res = _run_child(job, env, args.timeout)
        row.update(res)
        if "wall_s" in res:
            row["us_per_token"] = res["wall_s"] * 1e6 / t
            row["cpu_us_per_token"] = res["cpu_s"] * 1e6 / t
            flop = flops_per_token(model, t, ffn) * t
            row["gflops"] = flop / res["wall_s"] / 1e9
            row["gflops_cpu"] = flop / res["cpu_s"] / 1e9
        rows.append(row)
        progress.note("  " + _row_text(row), file=sys.stdout)
    peak_end = peaks("end")
    peak = {
        dt: {k: max(peak_start[dt][k], peak_end[dt][k]) for k in ("gflops", "gflops_cpu")}
        for dt in args.dtypes
    }
    for row in rows:
        if "gflops" in row:
            row["peak_fraction"] = row["gflops"] / peak[row["dtype"]]["gflops"]
            row["peak_fraction_cpu"] = row["gflops_cpu"] / peak[row["dtype"]]["gflops_cpu"]
    _add_ratios(rows)
    targets = _targets(rows, peak, args)
    meta = {
        "started": started,
        "command": "flashcore bench --backend torch " + " ".join(argv or sys.argv[1:]),
        "machine": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "malloc_env": {} if args.system_malloc else MALLOC_ENV,
        "matmul_peak_gflops": {"start": peak_start, "end": peak_end, "used": peak},
        "matmul_size": args.matmul_size,
        "params": {"flash_pair": flash_params, "transformer++_ffn_dim": ffn},
        "flops_model": __doc__.split("FLOPs:")[1].split("\n\n")[0].strip(),
    }
    md = _markdown(rows, targets, meta)
    print()
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.md").write_text(md)
    (args.out / "bench.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "targets": targets}, indent=2)
    )
    png = _plot(rows, args.out / "bench.png")
    print(f"wrote {args.out / 'bench.md'}, {args.out / 'bench.json'}" + (f", {png}" if png else ""))
    return 0


def _row_text(row: dict) -> str:
    head = f"{row['model']:<19} {row['dtype']:<8} T={row['t']:<6}"
    if "error" in row:
        return f"{head} ERROR {row['error']}"
    if "skipped" in row:
        return f"{head} skipped: {row['skipped']}"
    return (
        f"{head} {row['wall_s'] * 1e3:9.1f} ms  {row['us_per_token']:7.2f} us/tok "
        f"(cpu {row['cpu_us_per_token']:7.2f})  {row['gflops']:6.0f} GFLOP/s  "
        f"peak mem {row['peak_mb']:7.0f} MB"
    )


def _find(rows, model, dtype, t):
    for r in rows:
        if r["model"] == model and r["dtype"] == dtype and r["t"] == t and "wall_s" in r:
            return r
    return None


def _add_ratios(rows: list[dict]) -> None:
    for r in rows:
        if "wall_s" not in r:
            continue
        for base, key in (("flash-pytorch", "x_vs_flash_pytorch"), ("transformer++", "x_vs_tpp")):
            b = _find(rows, base, r["dtype"], r["t"])
            if b is not None and r["model"] != base:
                r[key] = b["wall_s"] / r["wall_s"]  # > 1: r is faster
                r[key + "_cpu"] = b["cpu_s"] / r["cpu_s"]


def _targets(rows, peak, args) -> list[dict]:
    """The issue's targets for the ``flashcore`` rows; each judged on wall time and on CPU time."""
    out = []
    lengths = sorted(args.lengths)

    def add(dt, target, wall, cpu, ok):
        out.append(dict(dtype=dt, target=target, wall=wall, cpu=cpu, met_wall=ok[0], met_cpu=ok[1]))

    for dt in args.dtypes:
        fc_rows = {t: _find(rows, "flashcore", dt, t) for t in lengths}
        lo, hi = fc_rows.get(1024), fc_rows.get(65536)
        if lo and hi:
            rw = hi["us_per_token"] / lo["us_per_token"]
            rc = hi["cpu_us_per_token"] / lo["cpu_us_per_token"]
            add(dt, "us/token at 64K within 1.15x of 1K", f"{rw:.2f}x", f"{rc:.2f}x",
                (rw <= 1.15, rc <= 1.15))  # fmt: skip
        vs = [(t, r) for t, r in fc_rows.items() if r and "x_vs_flash_pytorch" in r]
        if vs:
            ww = min(r["x_vs_flash_pytorch"] for _, r in vs)
            wc = min(r["x_vs_flash_pytorch_cpu"] for _, r in vs)
            add(dt, "at every T at least as fast as flash-pytorch", f"worst {ww:.2f}x",
                f"worst {wc:.2f}x", (ww >= 1.0, wc >= 1.0))  # fmt: skip
        r16 = fc_rows.get(16384)
        if r16 and "x_vs_flash_pytorch" in r16:
            w, c = r16["x_vs_flash_pytorch"], r16["x_vs_flash_pytorch_cpu"]
            add(dt, "1.5x faster than flash-pytorch at 16K", f"{w:.2f}x", f"{c:.2f}x",
                (w >= 1.5, c >= 1.5))  # fmt: skip
        if r16 and "x_vs_tpp" in r16:
            w, c = r16["x_vs_tpp"], r16["x_vs_tpp_cpu"]
            add(dt, "3x faster than Transformer++ at 16K", f"{w:.2f}x", f"{c:.2f}x",
                (w >= 3.0, c >= 3.0))  # fmt: skip
        need = 0.75 if dt == "float32" else 0.60
        fr = [(t, r) for t, r in fc_rows.items() if r and "peak_fraction" in r]
        if fr:
            tw = ", ".join(f"{t // 1024}K {r['peak_fraction']:.0%}" for t, r in fr)
            tc = ", ".join(f"{t // 1024}K {r['peak_fraction_cpu']:.0%}" for t, r in fr)
            add(dt, f"fwd+bwd >= {need:.0%} of the {dt} matmul peak", tw, tc,
                (min(r["peak_fraction"] for _, r in fr) >= need,
                 min(r["peak_fraction_cpu"] for _, r in fr) >= need))  # fmt: skip
    return out


def _markdown(rows, targets, meta) -> str:
    pk = meta["matmul_peak_gflops"]["used"]
    lines = [
        f"# flashcore torch benchmark ({meta['started']})",
        "",
        f"`{meta['command']}`",
        "",
        f"{meta['processor'] or meta['machine']}, {meta['cpu_count']} CPUs, torch threads "
        f"{meta['threads'] or 'default'}. Matmul peak (torch.mm {meta['matmul_size']}^2, best of "
        "start and end of "
        "the run): "
        + ", ".join(
            f"{k} {v['gflops']:.0f} GFLOP/s wall / {v['gflops_cpu']:.0f} by CPU time"
            for k, v in pk.items()
        )
        + ".",
        "",
        "Forward+backward at batch 1. ms and us/token: median wall time per step; cpu: process "
        "CPU time (all threads), less sensitive to other load. GFLOP/s and % peak by CPU time "
        "(against the CPU-time matmul peak); wall-clock figures are in bench.json. "
        "x fp / x T++: how many times faster than flash-pytorch / Transformer++ at the same T "
        "and dtype in this run, by wall | CPU time (> 1: faster).",
        "",
        "| model | dtype | T | ms/step | us/token | cpu us/token | GFLOP/s | % peak | peak MB "
        "| x fp (wall, cpu) | x T++ (wall, cpu) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def pair(r, key):
        if key not in r:
            return "-"
        return f"{r[key]:.2f}, {r[key + '_cpu']:.2f}"

    for r in rows:
        if "wall_s" not in r:
            why = r.get("error") or r.get("skipped", "")
            lines.append(f"| {r['model']} | {r['dtype']} | {r['t']} | {why} | | | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['t']} | {r['wall_s'] * 1e3:.1f} | "
            f"{r['us_per_token']:.2f} | {r['cpu_us_per_token']:.2f} | {r['gflops_cpu']:.0f} | "
            f"{_fmt(100 * r.get('peak_fraction_cpu', float('nan')), '.0f')} | "
            f"{r['peak_mb']:.0f} | {pair(r, 'x_vs_flash_pytorch')} | {pair(r, 'x_vs_tpp')} |"
        )
    lines += [
        "",
        "## Targets (flashcore rows)",
        "",
        "| dtype | target | by wall time | by CPU time | met (wall, cpu) |",
        "|---|---|---|---|---|",
    ]
    yn = {True: "yes", False: "no"}
    for tg in targets:
        lines.append(
            f"| {tg['dtype']} | {tg['target']} | {tg['wall']} | {tg['cpu']} | "
            f"{yn[tg['met_wall']]}, {yn[tg['met_cpu']]} |"
        )
    lines += [
        "",
        f"Parameters: FLASH pair {meta['params']['flash_pair']:,}; Transformer++ FFN width "
        f"{meta['params']['transformer++_ffn_dim']} (matched count). FLOPs: {meta['flops_model']}",
        "",
    ]
    return "\n".join(lines)


def _plot(rows, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict = {}
    for r in rows:
        if "us_per_token" in r:
            series.setdefault((r["model"], r["dtype"]), []).append((r["t"], r["us_per_token"]))
    for (model, dt), pts in sorted(series.items()):
        pts.sort()
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            marker="o",
            linestyle="-" if dt == "float32" else "--",
            label=f"{model} ({dt})",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("us per token (forward + backward, batch 1)")
    ax.set_title("flashcore torch benchmark (CPU)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
