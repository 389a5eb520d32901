"""The report of ``flashcore bench --backend torch``: ratios against the baselines, the issue's
targets, the markdown table (bench.md) and the plot (bench.png), from the rows that
:mod:`flashcore.app.torchbench` measured. Framework-free.

A row: {"model", "dtype", "t"} and either "error" / "skipped" or the measurement ("wall_s",
"cpu_s", "us_per_token", "cpu_us_per_token", "gflops", "gflops_cpu", "peak_mb", ...).
"""

from __future__ import annotations

import math
from pathlib import Path

__all__ = ["fmt", "row_text", "find", "add_ratios", "targets", "markdown", "plot"]


def fmt(x, spec=".1f", missing="-") -> str:
    """``x`` formatted by ``spec``; ``missing`` for None or a non-finite float."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return missing
    return format(x, spec)


def row_text(row: dict) -> str:
    """One measured row as a progress line (ms, us/token, GFLOP/s, peak memory)."""
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


def find(rows, model, dtype, t):
    """The measured row of (model, dtype, T), or None."""
    for r in rows:
        if r["model"] == model and r["dtype"] == dtype and r["t"] == t and "wall_s" in r:
            return r
    return None


def add_ratios(rows: list[dict]) -> None:
    """Add ``x_vs_flash_pytorch`` / ``x_vs_tpp`` (wall and CPU): how many times faster each row
    is than that baseline at the same T and dtype (> 1: faster)."""
    for r in rows:
        if "wall_s" not in r:
            continue
        for base, key in (("flash-pytorch", "x_vs_flash_pytorch"), ("transformer++", "x_vs_tpp")):
            b = find(rows, base, r["dtype"], r["t"])
            if b is not None and r["model"] != base:
                r[key] = b["wall_s"] / r["wall_s"]  # > 1: r is faster
                r[key + "_cpu"] = b["cpu_s"] / r["cpu_s"]


def targets(rows: list[dict], lengths, dtypes) -> list[dict]:
    """The issue's targets for the ``flashcore`` rows; each judged on wall time and on CPU time."""
    out = []
    lengths = sorted(lengths)

    def add(dt, target, wall, cpu, ok):
        out.append(dict(dtype=dt, target=target, wall=wall, cpu=cpu, met_wall=ok[0], met_cpu=ok[1]))

    for dt in dtypes:
        fc_rows = {t: find(rows, "flashcore", dt, t) for t in lengths}
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


def markdown(rows, targets, meta) -> str:
    """bench.md: the machine line, the table of rows and the targets."""
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
            f"{fmt(100 * r.get('peak_fraction_cpu', float('nan')), '.0f')} | "
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


def plot(rows, path: Path) -> Path | None:
    """bench.png: us/token against T per (model, dtype); None without matplotlib."""
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
