"""Where one ``flashcore bench`` step spends its time: the framework profiler's per-op table.

    python -m flashcore.app.benchprofile --backend jax|torch|tf [--model flashcore] [--length 64K]
        [--dtype float32] [--top 25] [--out FILE]

The step is the benchmark's own (:func:`flashcore.app.benchrun.build`: the same models, weights,
inputs and forward + backward), run once untimed (jax: compiling), then once under the profiler.
Ops are grouped into matmul (dots), reduce, and elementwise / copy / other.

- jax: a ``jax.profiler`` trace (its Perfetto JSON) of the step's XLA program, every thunk with
  its HLO instruction. XLA's CPU runtime may run two thunks at once; the step's wall time is
  shared among the thunks running at each instant ("ms": attributed wall time, summing to the
  step), and GFLOP/s of a dot is over its own span. A dot that XLA hands to Eigen asynchronously
  shows only its dispatch (GFLOP/s "async"); its work lands in the ops it overlaps, whose
  GFLOP/s then read low.
- tf: the same for its XLA-compiled step (``jit_compile=True``), from ``tf.profiler``'s XSpace
  file (the thunks on the host threads) and the step's optimized HLO.
- torch: ``torch.profiler`` self CPU time per aten op on the calling thread (the intra-op
  threads' work inside), the fused layer's hand-written backward included; GFLOP/s from the
  profiler's FLOP counts (matmuls).

Prints a markdown report (and writes it to ``--out``): the step's wall time, time per category,
and the ``--top`` ops.

``--compare-xla-options N`` (jax) instead times the step compiled without and with
:func:`flashcore.jax.compiler_options` in one process, N pairs of steps alternating (the order
flipped every pair), and prints both medians and each pair's ratio: a paired comparison that
this VM's drift between runs does not blur. ``--compare-dots N`` (jax, tf) times, the same way,
the step in float32 and in bfloat16 on both low-precision dot paths (:mod:`flashcore.dotpath`).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import sys
import tempfile
import time

from .cli_args import parse_length

__all__ = [
    "main",
    "profile_jax",
    "profile_torch",
    "profile_tf",
    "hlo_ops",
    "attribute",
    "report",
    "compare_xla_options",
    "compare_dots",
]

CATEGORIES = ("matmul", "reduce", "elementwise / copy / other")
ASYNC_GFLOPS = 1e4  # a "rate" above any CPU's: the span was only the dispatch of the work


def hlo_ops(text: str) -> dict[str, dict]:
    """{instruction name: {"category", "shape", "flop"}} of an optimized HLO module's text: a
    fusion is a matmul when its computation has a dot (flop: the dot's 2 x output x contracted
    size), else a reduce when it has one, else elementwise / copy / other."""
    bodies = {
        m.group(1): m.group(2)
        for m in re.finditer(r"\n(?:ENTRY )?%([\w.\-]+) [^\n]*\{\n(.*?)\n\}", text, re.S)
    }
    shapes = {}
    for m in re.finditer(r"%([\w.\-]+) = \w+\[([\d,]*)\]", text):
        shapes.setdefault(m.group(1), [int(d) for d in m.group(2).split(",") if d])
    # instructions of the computations that run as thunks: not those a fusion calls
    fused = set(re.findall(r"fusion\(.*?calls=%([\w.\-]+)", text))
    runs = "\n".join(body for name, body in bodies.items() if name not in fused)
    out = {}
    line_re = re.compile(r"^\s+(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\((.*?)\)(.*)$", re.M)
    for m in line_re.finditer(runs):
        name, shape, opcode, args, rest = m.groups()
        body = ""
        if opcode == "fusion":
            called = re.search(r"calls=%([\w.\-]+)", rest)
            body = bodies.get(called.group(1), "") if called else ""
        dot = re.search(
            r"= \w+\[([\d,]*)\]\S* dot\(%([\w.\-]+), .*?lhs_contracting_dims=\{([\d,]*)\}", body
        )
        if opcode == "dot":
            lhs = args.split(",")[0].strip().lstrip("%")
            dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
            dot_parts = (shape.split("[")[1].split("]")[0], lhs, dims.group(1) if dims else "")
        elif dot:
            dot_parts = dot.groups()
        else:
            dot_parts = None
        if dot_parts:
            out_dims = [int(d) for d in dot_parts[0].split(",") if d]
            lhs_shape = shapes.get(dot_parts[1], [])
            k = 1
            for d in (int(d) for d in dot_parts[2].split(",") if d):
                k *= lhs_shape[d] if d < len(lhs_shape) else 1
            n = 1
            for d in out_dims:
                n *= d
            out[name] = {"category": "matmul", "shape": shape, "flop": 2.0 * n * k}
        elif opcode in ("reduce", "reduce-window") or re.search(r"= \S+ reduce(-window)?\(", body):
            out[name] = {"category": "reduce", "shape": shape, "flop": 0.0}
        else:
            out[name] = {"category": CATEGORIES[2], "shape": shape, "flop": 0.0}
    return out


def attribute(spans: list[tuple[str, float, float]]) -> tuple[dict[str, float], dict[int, float]]:
    """Share wall time among concurrent spans (name, start, end): at each instant the time is
    split evenly among the spans running. Returns ({name: attributed time}, {number of spans
    running: total time}), the latter with 0 for idle time inside the outermost span."""
    edges = sorted({t for _, a, b in spans for t in (a, b)})
    starts, ends = collections.defaultdict(list), collections.defaultdict(list)
    for i, (_, a, b) in enumerate(spans):
        starts[a].append(i)
        ends[b].append(i)
    active: set[int] = set()
    got: dict[str, float] = collections.Counter()
    running: dict[int, float] = collections.Counter()
    for a, b in zip(edges, edges[1:]):
        active.difference_update(ends.get(a, ()))
        active.update(starts.get(a, ()))
        running[len(active)] += b - a
        for i in active:
            got[spans[i][0]] += (b - a) / len(active)
    return dict(got), dict(running)


def _xla_rows(ops: dict[str, dict], spans: list[tuple[str, float, float]]) -> tuple[list, str]:
    """Rows of an XLA program's profile from its HLO ops and its thunks' spans (name, start,
    end seconds): wall time shared among concurrent thunks, GFLOP/s of a dot over its own spans."""
    spans = [sp for sp in spans if sp[0] in ops]
    own: dict[str, float] = collections.Counter()
    for name, start, end in spans:
        own[name] += end - start
    got, running = attribute(spans)
    rows = []
    for name, seconds in got.items():
        op = ops[name]
        gflops = op["flop"] / own[name] / 1e9 if op["flop"] and own[name] else None
        rows.append({"op": name, **op, "seconds": seconds, "gflops": gflops})
    note = "concurrent thunks: " + ", ".join(
        f"{k} running {v:.2f} s" for k, v in sorted(running.items())
    )
    return rows, note


def _inner(run):
    return run.args[0] if hasattr(run, "args") else run  # benchrun.build's partial


def profile_jax(run) -> dict:
    """Profile one call of the jax bench step ``run`` (from ``build``): per-op attributed ms."""
    import jax

    ops = hlo_ops(_inner(run).compiled_text())
    with tempfile.TemporaryDirectory() as folder:
        jax.profiler.start_trace(folder, create_perfetto_trace=True)
        t0 = time.perf_counter()
        run()
        wall = time.perf_counter() - t0
        jax.profiler.stop_trace()
        files = glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True)
        if not files:
            raise RuntimeError("jax.profiler wrote no Perfetto trace")
        with gzip.open(files[0]) as f:
            events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    spans = [
        (e["name"], e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6)
        for e in events
        if e.get("args", {}).get("hlo_op") == e["name"]
    ]
    rows, note = _xla_rows(ops, spans)
    return {"wall_s": wall, "rows": rows, "note": note}


def profile_tf(run) -> dict:
    """Profile one call of the tf bench step ``run``: the XLA program's thunks from
    ``tf.profiler``'s XSpace (host threads), per-op attributed ms as for jax."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    ops = hlo_ops(_inner(run).compiled_text())
    with tempfile.TemporaryDirectory() as folder:
        tf.profiler.experimental.start(folder)
        t0 = time.perf_counter()
        run()
        wall = time.perf_counter() - t0
        tf.profiler.experimental.stop()
        files = glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)
        if not files:
            raise RuntimeError("tf.profiler wrote no XSpace file")
        space = xplane_pb2.XSpace()
        with open(files[0], "rb") as f:
            space.ParseFromString(f.read())
    spans = []
    for plane in space.planes:
        for line in plane.lines:
            for ev in line.events:
                start = line.timestamp_ns * 1e-9 + ev.offset_ps * 1e-12
                name = plane.event_metadata[ev.metadata_id].name
                spans.append((name, start, start + ev.duration_ps * 1e-12))
    rows, note = _xla_rows(ops, spans)
    return {"wall_s": wall, "rows": rows, "note": note}


def _torch_category(name: str) -> str:
    if re.search(r"mm|matmul|linear|einsum|dot", name):
        return "matmul"
    if re.search(r"sum|mean|norm|reduce|amax|max", name):
        return "reduce"
    return CATEGORIES[2]


def profile_torch(run) -> dict:
    """Profile one call of the torch bench step ``run``: per-aten-op self CPU time."""
    import torch

    cpu = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=cpu, with_flops=True) as prof:
        t0 = time.perf_counter()
        run()
        wall = time.perf_counter() - t0
    rows = []
    for ev in prof.key_averages():
        seconds = ev.self_cpu_time_total / 1e6
        if seconds > 0:
            flop = float(getattr(ev, "flops", 0) or 0)
            rows.append(
                {
                    "op": f"{ev.key} x{ev.count}",
                    "category": _torch_category(ev.key),
                    "shape": "",
                    "seconds": seconds,
                    "flop": flop,
                    "gflops": flop / seconds / 1e9 if flop else None,
                }
            )
    return {"wall_s": wall, "rows": rows, "note": "self CPU time of the calling thread per op"}


def report(title: str, prof: dict, top: int) -> str:
    """The markdown report of a profile: wall time, time per category, the ``top`` ops."""
    rows = sorted(prof["rows"], key=lambda r: -r["seconds"])
    total = sum(r["seconds"] for r in rows) or 1.0
    lines = [f"# {title}", "", f"step wall time {prof['wall_s']:.3f} s; {prof['note']}", ""]
    lines += ["| category | s | share |", "|---|---|---|"]
    per = collections.Counter()
    for r in rows:
        per[r["category"]] += r["seconds"]
    for cat in CATEGORIES:
        lines.append(f"| {cat} | {per[cat]:.3f} | {per[cat] / total:.1%} |")
    lines += ["", "| op | category | shape | ms | share | GFLOP/s |", "|---|---|---|---|---|---|"]
    for r in rows[:top]:
        g = f"{r['gflops']:.0f}" if r["gflops"] else ""
        if r["gflops"] and r["gflops"] > ASYNC_GFLOPS:
            g = "async"  # a dispatch span: the work ran in another pool
        lines.append(
            f"| {r['op']} | {r['category']} | {r['shape']} | {r['seconds'] * 1e3:.1f} | "
            f"{r['seconds'] / total:.1%} | {g} |"
        )
    return "\n".join(lines) + "\n"


def compare_xla_options(job: dict, pairs: int) -> str:
    """Time the jax bench step ``job`` compiled without and with the XLA options, ``pairs``
    alternating pairs of steps in this process (each compiled by one untimed step first)."""
    import os
    import statistics

    from . import benchrun

    saved = os.environ.get("FLASHCORE_XLA_OPTIONS")
    os.environ["FLASHCORE_XLA_OPTIONS"] = "off"
    try:
        plain, _, _ = benchrun.build(job)
    finally:
        os.environ.pop("FLASHCORE_XLA_OPTIONS")
        if saved is not None:
            os.environ["FLASHCORE_XLA_OPTIONS"] = saved
    tuned, _, info = benchrun.build(job)
    plain(), tuned()
    times: dict[str, list[float]] = {"plain": [], "tuned": []}
    for i in range(pairs):
        order = [("plain", plain), ("tuned", tuned)]
        for key, run in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - t0)
    per_token = {k: statistics.median(v) / job["t"] * 1e6 for k, v in times.items()}
    ratios = [round(a / b, 3) for a, b in zip(times["plain"], times["tuned"])]
    return (
        f"jax {job['model']} {job['dtype']} T={job['t']}, {pairs} pairs: without the options "
        f"{per_token['plain']:.1f}, with {info['compiler_options'] or 'none'} "
        f"{per_token['tuned']:.1f} us/token (median); without / with per pair {ratios}\n"
    )


DOT_PATHS = (("float32", "float32", "auto"), ("bfloat16", "bfloat16", "native"))
DOT_PATHS += (("bfloat16 (f32 dots)", "bfloat16", "float32"),)  # (label, dtype, path)


def compare_dots(job: dict, rounds: int) -> str:
    """Time the jax or tf bench step ``job`` in float32 and in bfloat16 on both dot paths of
    :mod:`flashcore.dotpath` (``FLASHCORE_LOW_PRECISION_DOTS`` native and float32), in this
    process: ``rounds`` rounds of one step of each, in a rotating order, each compiled by one
    untimed step first. The bf16 / fp32 ratios by wall and by CPU time, from the same run."""
    import os
    import statistics

    from flashcore.dotpath import ENV

    from . import benchrun

    saved, runs = os.environ.get(ENV), {}
    try:
        for label, dtype, path in DOT_PATHS:
            os.environ[ENV] = path
            run, _, _ = benchrun.build({**job, "dtype": dtype})
            run()  # untimed: compiles, reading the path while it traces
            runs[label] = run
    finally:
        os.environ.pop(ENV)
        if saved is not None:
            os.environ[ENV] = saved
    times: dict[str, tuple[list, list]] = {k: ([], []) for k in runs}
    names = list(runs)
    for i in range(rounds):
        for key in names[i % len(names) :] + names[: i % len(names)]:
            w0, c0 = time.perf_counter(), time.process_time()
            runs[key]()
            times[key][0].append(time.perf_counter() - w0)
            times[key][1].append(time.process_time() - c0)
    med = {k: [statistics.median(v) / job["t"] * 1e6 for v in wc] for k, wc in times.items()}
    base_w, base_c = med["float32"]
    lines = [
        f"{job['backend']} {job['model']} T={job['t']}, {rounds} rounds of one step each, in "
        "turn: us/token (median) and the time / float32's, by wall and by CPU time",
        "",
        "| dtype | us/token (wall) | x float32 (wall) | us/token (CPU) | x float32 (CPU) |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, (w, c) in med.items():
        lines.append(f"| {k} | {w:.1f} | {w / base_w:.2f} | {c:.1f} | {c / base_c:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m flashcore.app.benchprofile", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--backend", choices=("jax", "torch", "tf"), required=True)
    p.add_argument("--model", default="flashcore")
    p.add_argument("--length", type=parse_length, default=65536, help="T (e.g. 4K, 64K)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--top", type=int, default=25, help="ops listed (default 25)")
    p.add_argument("--out", help="also write the report to this file")
    p.add_argument(
        "--compare-xla-options",
        type=int,
        metavar="N",
        help="jax: N alternating pairs of steps without / with flashcore.jax.compiler_options()",
    )
    p.add_argument(
        "--compare-dots",
        type=int,
        metavar="N",
        help="jax, tf: N rounds of steps in float32 and in bfloat16 on both low-precision dot "
        "paths (flashcore.dotpath), in turn",
    )
    args = p.parse_args(argv)

    from . import benchrun

    job = {"backend": args.backend, "model": args.model, "t": args.length, "dtype": args.dtype}
    if args.compare_xla_options:
        if args.backend != "jax":
            p.error("--compare-xla-options is for --backend jax")
        text = compare_xla_options(job, args.compare_xla_options)
    elif args.compare_dots:
        if args.backend == "torch":
            p.error("--compare-dots is for --backend jax or tf")
        text = compare_dots(job, args.compare_dots)
    else:
        run, _, _ = benchrun.build(job)
        run()  # untimed: jax compiles
        profile = {"jax": profile_jax, "torch": profile_torch, "tf": profile_tf}[args.backend]
        title = (
            f"{args.backend} {args.model} {args.dtype} T={args.length}: one bench step, profiled"
        )
        text = report(title, profile(run), args.top)
    print(text, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
