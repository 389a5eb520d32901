"""Activation checkpointing's trade: a FLASH LM's forward and backward with and without it, peak
memory and time.

    flashcore bench-remat [--backends torch,jax,tf] [--context 16K] [--layers 4] [--dim 512]
        [--batch 1] [--repeats 2] [--max-gib 14] [--json PATH]

One measurement: a byte-level FLASH LM (``--layers`` layers of ``--dim``, the paper's other
settings), float32, seeded; one batch of ``--batch`` x ``--context`` random tokens; the mean loss
and its gradients with respect to every weight, as the engines compute them (torch eagerly; jax
under ``jax.jit``; TensorFlow in ``tf.function(jit_compile=True)``). ``remat``: each block's
activations recomputed in the backward pass (``--checkpoint-activations`` of ``flashcore train``;
:func:`flashcore.lm_hidden`'s ``remat``); ``keep``: kept.

Each measurement runs in a child process of its own, as in :mod:`flashcore.app.loss_bench`:
memory is the child's peak resident set at the end minus its peak before the first run (the
model and inputs made); time is the median of ``--repeats`` runs after one untimed warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from .cli_args import parse_length
from .loss_bench import GIB, _available, _rss_peak, run_child, write_report

__all__ = ["main", "measure", "BACKENDS", "MODES"]

BACKENDS = ("torch", "jax", "tf")
MODES = ("keep", "remat")


def _config(layers: int, dim: int, context: int):
    import flashcore as fc

    block = fc.FlashConfig(dim=dim, causal=True, max_len=context, init="uniform")
    return fc.LMConfig(block=block, vocab_size=256, num_layers=layers)


def _step(backend: str, remat: bool, config, tokens: np.ndarray, targets: np.ndarray):
    """run() -> the loss as a float, having computed every weight's gradient."""
    import flashcore as fc

    params = fc.init(config, seed=0)
    if backend == "torch":
        import torch

        from flashcore.torch import LM

        lm = LM(config, init=False)
        lm.load_canonical(params)
        lm.checkpoint_activations = remat
        x, y = torch.as_tensor(tokens), torch.as_tensor(targets)

        def run():
            lm.zero_grad(set_to_none=True)
            loss = lm.loss(x, y)
            loss.backward()
            return float(loss)

        return run
    if backend == "jax":
        import jax

        from flashcore.jax import functional

        p = jax.tree_util.tree_map(jax.numpy.asarray, params)

        @jax.jit
        def grads(p, x, y):
            return jax.value_and_grad(functional.loss)(
                p, x, y, config=config, checkpoint_activations=remat
            )

        def run():
            loss, g = grads(p, tokens, targets)
            jax.block_until_ready(g)
            return float(loss)

        return run
    import tensorflow as tf

    from flashcore.tf import LM

    lm = LM(config, params=params)
    lm.checkpoint_activations = remat
    x, y = tf.constant(tokens, tf.int32), tf.constant(targets, tf.int32)

    @tf.function(jit_compile=True)
    def grads():
        with tf.GradientTape() as tape:
            loss = lm.loss(x, y, training=True)
        return loss, tape.gradient(loss, lm.trainable_variables)

    def run():
        loss, g = grads()
        [tf.convert_to_tensor(t).numpy() for t in g if t is not None]
        return float(loss)

    return run


def measure(backend: str, mode: str, layers: int, dim: int, context: int, batch: int,
            repeats: int) -> dict:  # fmt: skip
    """One measurement in this process (see the module doc) -> its row."""
    config = _config(layers, dim, context)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, (batch, context)).astype(np.int64)
    targets = rng.integers(0, 256, (batch, context)).astype(np.int64)
    run = _step(backend, mode == "remat", config, tokens, targets)
    base = _rss_peak()
    loss = run()  # warm-up (compiles)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {
        "backend": backend, "mode": mode, "layers": layers, "dim": dim, "context": context,
        "batch": batch, "status": "ok", "loss": loss, "peak_mib": (_rss_peak() - base) / 2**20,
        "median_s": statistics.median(times), "times_s": times,
    }  # fmt: skip


def _child(spec: dict, max_bytes: int) -> dict:
    """:func:`measure` in a fresh interpreter, killed past ``max_bytes`` resident (or past the
    memory available now less 2 GiB) -> its row."""
    row = {k: spec[k] for k in ("backend", "mode", "layers", "dim", "context", "batch")}
    free = _available() - 2 * GIB
    if free < GIB:
        return {**row, "status": f"skipped: {free / GIB:.1f} GiB available"}
    return run_child("flashcore.app.remat_bench", spec, row, min(max_bytes, free))


def table(rows: list[dict]) -> str:
    """The report as a markdown table: one line per measurement, remat / keep beside remat."""
    lines = [
        "| backend | context | layers x dim | mode | peak MiB | median s | mem x keep | time x keep |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    keep = {r["backend"]: r for r in rows if r["mode"] == "keep" and r["status"] == "ok"}
    for r in rows:
        shape = f"{r['layers']} x {r['dim']}"
        if r["status"] != "ok":
            lines.append(f"| {r['backend']} | {r['context']} | {shape} | {r['mode']} | "
                         f"{r['status']} | | | |")  # fmt: skip
            continue
        ratios = ["", ""]
        k = keep.get(r["backend"])
        if r["mode"] == "remat" and k is not None:
            ratios = [f"{r['peak_mib'] / max(k['peak_mib'], 1e-9):.2f}",
                      f"{r['median_s'] / k['median_s']:.2f}"]  # fmt: skip
        lines.append(
            f"| {r['backend']} | {r['context']} | {shape} | {r['mode']} | {r['peak_mib']:.0f} | "
            f"{r['median_s']:.2f} | {ratios[0]} | {ratios[1]} |"
        )
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="flashcore bench-remat", description=__doc__.split("\n")[0])
    ap.add_argument("--backends", default="torch", help="comma-separated (default torch)")
    ap.add_argument("--context", default="16K", help="tokens per sequence (1K = 1024)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up")
    ap.add_argument("--max-gib", type=float, default=14.0, help="memory cap of one child")
    ap.add_argument("--json", help="also write the rows and the machine to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return args
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in args.backends if b not in BACKENDS]
    if bad:
        ap.error(f"unknown backend(s) {bad}; choose from {list(BACKENDS)}")
    try:
        args.context = parse_length(args.context)
    except ValueError as err:
        ap.error(str(err))
    if min(args.repeats, args.layers, args.dim, args.batch) < 1:
        ap.error("--repeats, --layers, --dim and --batch must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table (and write --json); returns the exit code."""
    args = _parse(argv)
    if args.child:
        print(json.dumps(measure(**json.loads(args.child))))
        return 0
    rows = []
    for backend in args.backends:
        for mode in MODES:
            spec = dict(backend=backend, mode=mode, layers=args.layers, dim=args.dim,
                        context=args.context, batch=args.batch, repeats=args.repeats)  # fmt: skip
            rows.append(_child(spec, int(args.max_gib * GIB)))
            print(table(rows).splitlines()[-1], flush=True)
    command = "flashcore bench-remat " + " ".join(argv if argv is not None else sys.argv[1:])
    return write_report(command, rows, table(rows), args.json)


if __name__ == "__main__":
    sys.exit(main())
