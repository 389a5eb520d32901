"""The report of ``flashcore bench``: ratios against the baselines and between backends, the
issue's targets, the markdown table (bench.md) and the plot (bench.png), from the rows that
:mod:`flashcore.app.bench` measured. Framework-free.

A row: {"backend", "model", "dtype", "t"} and either "error" / "skipped" or the measurement
("wall_s", "cpu_s", "us_per_token", "cpu_us_per_token", "gflops", "gflops_cpu", "peak_mb", ...;
jax / tf: "dot_path", :mod:`flashcore.dotpath`). ``gflops`` is by wall time, ``gflops_cpu`` by
process CPU time; every figure printed says which.
"""

from __future__ import annotations

import math
from pathlib import Path

from flashcore.dotpath import label

__all__ = [
    "fmt",
    "row_text",
    "dtype_text",
    "peak_dtype",
    "add_peak_fractions",
    "find",
    "add_ratios",
    "targets",
    "markdown",
    "plot",
]

PEER = ("torch", "flash-pytorch")  # (backend, model) of the peer


def fmt(x, spec=".1f", missing="-") -> str:
    """``x`` formatted by ``spec``; ``missing`` for None or a non-finite float."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return missing
    return format(x, spec)


def dtype_text(row: dict) -> str:
    """The row's dtype with the dot path that ran: 'bfloat16 (f32 dots)' for a jax / tf row whose
    low-precision dots (and blocks) ran in float32 from bf16 storage."""
    return label(row["dtype"], row.get("dot_path", "native"))


def peak_dtype(row: dict, peaks: dict) -> str:
    """The dtype of the matmul peak a row is measured against: float32 for a row whose dots ran
    in float32 (when the run measured that peak), else the row's dtype."""
    return "float32" if row.get("dot_path") == "float32" and "float32" in peaks else row["dtype"]


def add_peak_fractions(rows: list[dict], peaks: dict) -> None:
    """Add to each measured row its GFLOP/s as a fraction of the matmul peak, by wall time
    (``peak_fraction``) and CPU time (``peak_fraction_cpu``), and the peak's dtype
    (``peak_dtype``, :func:`peak_dtype`). peaks: {dtype: {"gflops", "gflops_cpu"}}."""
    for row in rows:
        if "gflops" in row:
            row["peak_dtype"] = ref = peak_dtype(row, peaks)
            row["peak_fraction"] = row["gflops"] / peaks[ref]["gflops"]
            row["peak_fraction_cpu"] = row["gflops_cpu"] / peaks[ref]["gflops_cpu"]


def row_text(row: dict) -> str:
    """One measured row as a progress line (ms, us/token, GFLOP/s by wall and CPU time, peak
    memory)."""
    head = f"{row['backend']:<5} {row['model']:<19} {dtype_text(row):<8} T={row['t']:<6}"
    if "error" in row:
        return f"{head} ERROR {row['error']}"
    if "skipped" in row:
        return f"{head} skipped: {row['skipped']}"
    return (
        f"{head} {row['wall_s'] * 1e3:9.1f} ms  {row['us_per_token']:7.2f} us/tok "
        f"(cpu {row['cpu_us_per_token']:7.2f})  GFLOP/s {row['gflops']:4.0f} wall, "
        f"{row['gflops_cpu']:4.0f} CPU  peak mem {row['peak_mb']:7.0f} MB"
    )


def find(rows, backend, model, dtype, t):
    """The measured row of (backend, model, dtype, T), or None."""
    for r in rows:
        if (r["backend"], r["model"], r["dtype"], r["t"]) == (backend, model, dtype, t):
            return r if "wall_s" in r else None
    return None


# ratio key -> the baseline row of a row r (None: no such ratio for r)
_BASES = {
    "x_vs_flash_pytorch": lambda r: (
        None if (r["backend"], r["model"]) == PEER else (*PEER, r["dtype"])
    ),
    "x_vs_tpp": lambda r: (
        None if r["model"] == "transformer++" else (r["backend"], "transformer++", r["dtype"])
    ),
    "x_vs_torch": lambda r: None if r["backend"] == "torch" else ("torch", r["model"], r["dtype"]),
    "x_vs_float32": lambda r: (
        None if r["dtype"] == "float32" else (r["backend"], r["model"], "float32")
    ),
}


def add_ratios(rows: list[dict]) -> None:
    """Add how many times faster each measured row is than a baseline at the same T (> 1:
    faster), by wall time (``key``) and CPU time (``key_cpu``): ``x_vs_flash_pytorch`` (the peer,
    same dtype), ``x_vs_tpp`` (the same backend's Transformer++, same dtype), ``x_vs_torch`` (jax /
    tf: the torch row of the same model and dtype), ``x_vs_float32`` (bf16: the same backend and
    model in float32)."""
    for r in rows:
        if "wall_s" not in r:
            continue
        for key, base_of in _BASES.items():
            base = base_of(r)
            b = None if base is None else find(rows, *base, r["t"])
            if b is not None:
                r[key] = b["wall_s"] / r["wall_s"]
                r[key + "_cpu"] = b["cpu_s"] / r["cpu_s"]


def _k(t: int) -> str:
    return f"{t // 1024}K" if t % 1024 == 0 else str(t)


def targets(rows: list[dict]) -> list[dict]:
    """The issue's targets, each judged on wall time and on CPU time (peak memory: once), for the
    backends in ``rows``. An entry: {"backend", "dtype", "target", "wall", "cpu", "met_wall",
    "met_cpu", "required"}; met is None where the run did not measure what the target needs."""
    out: list[dict] = []
    backends = [b for b in ("torch", "jax", "tf") if any(r["backend"] == b for r in rows)]
    dtypes = [d for d in ("float32", "bfloat16") if any(r["dtype"] == d for r in rows)]
    lengths = sorted({r["t"] for r in rows})

    def add(backend, dt, target, wall, cpu, met_wall, met_cpu, required=True):
        out.append(dict(backend=backend, dtype=dt, target=target, wall=wall, cpu=cpu,
                        met_wall=met_wall, met_cpu=met_cpu, required=required))  # fmt: skip

    def missing(backend, dt, target, needs, required=True):
        add(backend, dt, target, f"not measured (needs {needs})", "-", None, None, required)

    def worst(pairs, key, higher_is_better=True):
        """The worst (T, wall, cpu) of ``key`` over rows [(t, row)], or None."""
        have = [(t, r) for t, r in pairs if r is not None and key in r]
        if not have:
            return None
        pick = min if higher_is_better else max
        tw, rw = pick(have, key=lambda p: p[1][key])
        tc, rc = pick(have, key=lambda p: p[1][key + "_cpu"])
        return (tw, rw[key]), (tc, rc[key + "_cpu"])

    fc = {(b, dt): {t: find(rows, b, "flashcore", dt, t) for t in lengths}
          for b in backends for dt in dtypes}  # fmt: skip
    if "torch" in backends:
        for dt in dtypes:
            need = 1.15 if dt == "float32" else 1.3
            name = f"FLASH >= {need}x faster than flash-pytorch at every T"
            w = worst(fc["torch", dt].items(), "x_vs_flash_pytorch")
            if w is None:
                missing("torch", dt, name, "flash-pytorch rows")
            else:
                (tw, vw), (tc, vc) = w
                add("torch", dt, name, f"worst {vw:.2f}x ({_k(tw)})", f"worst {vc:.2f}x ({_k(tc)})",
                    vw >= need, vc >= need)  # fmt: skip
        if "bfloat16" in dtypes and "float32" in dtypes:
            name = "bf16 >= 1.8x faster than fp32 at T >= 4K"
            w = worst([(t, r) for t, r in fc["torch", "bfloat16"].items() if t >= 4096],
                      "x_vs_float32")  # fmt: skip
            if w is None:
                missing("torch", "bfloat16", name, "T >= 4K in both dtypes")
            else:
                (tw, vw), (tc, vc) = w
                add("torch", "bfloat16", name, f"worst {vw:.2f}x ({_k(tw)})",
                    f"worst {vc:.2f}x ({_k(tc)})", vw >= 1.8, vc >= 1.8)  # fmt: skip
        for dt in dtypes:
            name = "peak memory at 16K and 64K <= flash-pytorch's"
            pairs = [(t, fc["torch", dt].get(t), find(rows, *PEER, dt, t)) for t in (16384, 65536)]
            have = [(t, a, b) for t, a, b in pairs if a is not None and b is not None]
            if not have:
                missing("torch", dt, name, "16K or 64K with flash-pytorch")
                continue
            text = ", ".join(
                f"{_k(t)} {a['peak_mb']:.0f} vs {b['peak_mb']:.0f} MB" for t, a, b in have
            )
            if len(have) < 2:
                text += " (only)"
            ok = all(a["peak_mb"] <= b["peak_mb"] for _, a, b in have)
            add("torch", dt, name, text, "-", ok, None)
    for b in backends:
        if b == "torch":
            continue
        for dt in dtypes:
            name = "FLASH within 1.25x of torch's time at every T"
            required = dt == "float32"
            w = worst(fc[b, dt].items(), "x_vs_torch")
            if w is None:
                missing(b, dt, name, "torch flashcore rows", required)
                continue
            (tw, vw), (tc, vc) = w
            add(b, dt, name, f"worst {1 / vw:.2f}x torch's ({_k(tw)})",
                f"worst {1 / vc:.2f}x torch's ({_k(tc)})", 1 / vw <= 1.25, 1 / vc <= 1.25,
                required)  # fmt: skip
    for b in backends:
        for dt in dtypes:
            name = "us/token at 64K <= 1.1x that at 1K"
            lo, hi = fc[b, dt].get(1024), fc[b, dt].get(65536)
            if not (lo and hi):
                missing(b, dt, name, "1K and 64K")
                continue
            rw = hi["us_per_token"] / lo["us_per_token"]
            rc = hi["cpu_us_per_token"] / lo["cpu_us_per_token"]
            add(b, dt, name, f"{rw:.2f}x", f"{rc:.2f}x", rw <= 1.1, rc <= 1.1)
    for b in backends:
        for dt in dtypes:
            name = "causal FLASH >= 3x faster than Transformer++ at 16K"
            r16 = fc[b, dt].get(16384)
            if r16 is None or "x_vs_tpp" not in r16:
                if b == "torch":
                    missing(b, dt, name, "16K with transformer++")
                continue
            w, c = r16["x_vs_tpp"], r16["x_vs_tpp_cpu"]
            add(b, dt, name, f"{w:.2f}x", f"{c:.2f}x", w >= 3.0, c >= 3.0)
    return out


def _pair(r: dict, key: str) -> str:
    return "-" if key not in r else f"{r[key]:.2f}, {r[key + '_cpu']:.2f}"


def markdown(rows, targets, meta) -> str:
    """bench.md: the command, the machine line, the table of rows and the targets."""
    pk = meta["matmul_peak_gflops"]["used"]
    lines = [
        f"# flashcore benchmark ({meta['started']})",
        "",
        f"`{meta['command']}`",
        "",
        f"{meta['processor'] or meta['machine']}, {meta['cpu_count']} CPUs, threads "
        f"{meta['threads'] or 'default'}; backends {', '.join(meta['backends'])}. Matmul peak "
        f"(torch.mm {meta['matmul_size']}^2, best of start and end of the run): "
        + ", ".join(
            f"{k} {fmt(v['gflops'], '.0f')} GFLOP/s wall / {fmt(v['gflops_cpu'], '.0f')} by CPU time"
            for k, v in pk.items()
        )
        + "."
        + "".join(
            f" {b} matmul (the same n, jitted): "
            + ", ".join(f"{dt} {fmt(v['gflops'], '.0f')}" for dt, v in d.items())
            + " GFLOP/s wall."
            for b, d in meta.get("framework_matmul_gflops", {}).items()
        ),
        "",
        meta["step"],
        "",
        meta["bfloat16"],
        "",
        "ms and us/token: median wall time per step (batch 1); cpu: process CPU time (all "
        "threads), less sensitive to other load. GFLOP/s (CPU) and % peak (CPU) by CPU time "
        "(against the CPU-time matmul peak of the row's dtype; float32's for a row whose dots ran "
        "in float32, 'bfloat16 (f32 dots)'); the wall-clock figures are in the Targets section and "
        "bench.json. peak MB: the child's maximum "
        "resident set above what was resident before the first step (jax / tf: their compile "
        "included). x fp / x T++ / x torch: how "
        "many times faster than flash-pytorch / the same backend's Transformer++ / torch's row of "
        "the same model, at the same T and dtype in this run, by wall | CPU time (> 1: faster).",
        "",
        "| backend | model | dtype | T | ms/step | us/token | cpu us/token | GFLOP/s (CPU) "
        "| % peak (CPU) "
        "| peak MB | x fp (wall, cpu) | x T++ (wall, cpu) | x torch (wall, cpu) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        head = f"| {r['backend']} | {r['model']} | {dtype_text(r)} | {r['t']} |"
        if "wall_s" not in r:
            why = r.get("error") or r.get("skipped", "")
            lines.append(f"{head} {why} | | | | | | | | |")
            continue
        lines.append(
            f"{head} {r['wall_s'] * 1e3:.1f} | {r['us_per_token']:.2f} | "
            f"{r['cpu_us_per_token']:.2f} | {fmt(r.get('gflops_cpu'), '.0f')} | "
            f"{fmt(100 * r.get('peak_fraction_cpu', float('nan')), '.0f')} | {r['peak_mb']:.0f} | "
            f"{_pair(r, 'x_vs_flash_pytorch')} | {_pair(r, 'x_vs_tpp')} | {_pair(r, 'x_vs_torch')} |"
        )
    judged = [tg for tg in targets if tg["required"] and tg["met_wall"] is not None]
    met = [tg for tg in judged if tg["met_wall"] and tg["met_cpu"] is not False]
    lines += [
        "",
        "## Targets",
        "",
        f"{len(met)} of the {len(judged)} targets this run measured are met by wall and CPU time "
        f"({sum(tg['required'] and tg['met_wall'] is None for tg in targets)} not measured)"
        + (
            "; (reported): shown, not a target."
            if any(not tg["required"] for tg in targets)
            else "."
        ),
        "",
        "| backend | dtype | target | by wall time | by CPU time | met (wall, cpu) |",
        "|---|---|---|---|---|---|",
    ]
    yn = {True: "yes", False: "no", None: "-"}
    for tg in targets:
        met_text = f"{yn[tg['met_wall']]}, {yn[tg['met_cpu']]}"
        name = tg["target"] + ("" if tg["required"] else " (reported)")
        lines.append(
            f"| {tg['backend']} | {tg['dtype']} | {name} | {tg['wall']} | {tg['cpu']} | {met_text} |"
        )
    lines += [
        "",
        "Every row against the matmul peak (torch.mm of the dtype named; GFLOP/s of the row's "
        "FLOP model) by wall time and by CPU time:",
        "",
        "| backend | model | dtype | T | GFLOP/s (wall) | % peak (wall) | GFLOP/s (CPU) "
        "| % peak (CPU) | peak of |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "gflops" not in r:
            continue
        pct = {
            k: fmt(100 * r.get(k, float("nan")), ".0f")
            for k in ("peak_fraction", "peak_fraction_cpu")
        }
        lines.append(
            f"| {r['backend']} | {r['model']} | {dtype_text(r)} | {r['t']} | {fmt(r['gflops'], '.0f')} "
            f"| {pct['peak_fraction']} | {fmt(r['gflops_cpu'], '.0f')} | {pct['peak_fraction_cpu']} "
            f"| {r.get('peak_dtype', r['dtype'])} |"
        )
    lines += [
        "",
        f"Parameters: FLASH pair {meta['params']['flash_pair']:,}; Transformer++ FFN width "
        f"{meta['params']['transformer++_ffn_dim']} (matched count). {meta['flops_model']}",
        "",
    ]
    return "\n".join(lines)


def plot(rows, path: Path) -> Path | None:
    """bench.png: us/token against T per (backend, model), one panel per dtype; None without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    dtypes = [d for d in ("float32", "bfloat16") if any(r["dtype"] == d for r in rows)] or [
        "float32"
    ]
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6.5 * len(dtypes), 4.5), squeeze=False)
    styles = {"torch": "-", "jax": "--", "tf": ":"}
    for ax, dt in zip(axes[0], dtypes):
        series: dict = {}
        for r in rows:
            if "us_per_token" in r and r["dtype"] == dt:
                key = (r["backend"], r["model"])
                series.setdefault(key, []).append((r["t"], r["us_per_token"]))
        for (backend, model), pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    linestyle=styles.get(backend, "-"), label=f"{backend} {model}")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("us per token (forward + backward, batch 1)")
        ax.set_title(f"flashcore benchmark, {dt} (CPU)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
