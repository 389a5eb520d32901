"""The LM loss's forward and backward at real vocabulary sizes: flashcore's chunked loss against
each framework's own plain path, peak memory and time.

    flashcore bench-loss [--backends torch,jax,tf] [--vocab 256,32K,128K]
        [--tokens 8K] [--dim 512] [--repeats 3] [--chunk N] [--max-gib 14] [--json PATH]

One measurement is: final hidden states h (tokens, d) and a tied head E (v, d), float32, seeded
random; targets uniform in [0, v); the loss (mean over the tokens) and its gradients with
respect to h and E. Paths:

- ``chunked``: :func:`flashcore.loss.linear_cross_entropy` with the backend's chunk loop
  (``flashcore.{torch,jax,tf}.loss.chunked_loss``; ``--chunk`` tokens per chunk, default
  :func:`flashcore.loss.chunk_tokens`);
- ``plain``: the logits h E^T (tokens, v) whole, then torch ``F.cross_entropy``; jax
  ``optax.softmax_cross_entropy_with_integer_labels`` (mean); Keras
  ``keras.losses.SparseCategoricalCrossentropy(from_logits=True)``.

torch runs eagerly; jax under ``jax.jit`` (``value_and_grad``); TensorFlow in one
``tf.function(jit_compile=True)`` around a ``GradientTape``, as the engines run them.

Each measurement runs in a child process of its own (``python -m flashcore.app.loss_bench --child``). Memory: the
child's peak resident set (``ru_maxrss``) at the end minus its peak before the first run (after
the imports and the inputs are made): what the loss's forward and backward added, compilation
and the warm-up included. Time: one untimed warm-up run (it compiles), then the median of
``--repeats`` runs, each to its gradients on the host side. Threads: what the frameworks take
from the environment (set ``OMP_NUM_THREADS``).

Safety: before a child starts, its need is estimated (plain: 3 copies of the (tokens, v) float32
logits and 1 GiB; chunked: 1 GiB) and the run is skipped, with the reason in the table, when that exceeds
``--max-gib`` or the memory available now less 2 GiB; while it runs, a child whose resident set
passes ``--max-gib`` is killed and reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

from .cli_args import parse_length
from .prefill_bench import cpu_name

__all__ = ["main", "measure", "PATHS", "BACKENDS"]

BACKENDS = ("torch", "jax", "tf")
PATHS = ("chunked", "plain")
GIB = 2**30


def _rss_peak() -> int:
    """This process's peak resident set so far, bytes (ru_maxrss: KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _config(vocab: int, dim: int):
    import flashcore as fc

    return fc.LMConfig(block=fc.FlashConfig(dim=dim), vocab_size=vocab, tie_embeddings=True)


def _inputs(vocab: int, dim: int, tokens: int):
    """h (1, tokens, d), E (v, d) float32 and targets (1, tokens) int32, seeded."""
    rng = np.random.default_rng(0)
    h = rng.standard_normal((1, tokens, dim), dtype=np.float32)
    embed = (rng.standard_normal((vocab, dim), dtype=np.float32) * dim**-0.5).astype(np.float32)
    targets = rng.integers(0, vocab, (1, tokens)).astype(np.int32)
    return h, embed, targets


def _step(backend: str, path: str, vocab: int, dim: int, tokens: int, chunk: int | None):
    """run() -> the loss as a float, having computed the gradients w.r.t. h and E."""
    import flashcore as fc

    config = _config(vocab, dim)
    h, embed, targets = _inputs(vocab, dim, tokens)
    if backend == "torch":
        import torch
        import torch.nn.functional as F

        from flashcore.torch.loss import chunked_loss
        from flashcore.torch.xp import xp

        th, te, tt = torch.from_numpy(h), torch.from_numpy(embed), torch.from_numpy(targets).long()

        def run():
            hh, ee = th.clone().requires_grad_(), te.clone().requires_grad_()
            if path == "plain":
                loss = F.cross_entropy((hh @ ee.T).reshape(-1, vocab), tt.reshape(-1))
            else:
                loss = fc.loss.linear_cross_entropy(
                    {"embed.weight": ee}, hh, tt, config=config, xp=xp, core=chunked_loss,
                    chunk=chunk,
                )  # fmt: skip
            loss.backward()
            float(hh.grad[0, 0, 0] + ee.grad[0, 0])
            return float(loss)

        return run
    if backend == "jax":
        import jax
        import jax.numpy as jnp
        import optax

        from flashcore.jax.loss import chunked_loss
        from flashcore.jax.xp import xp

        jh, je, jt = jnp.asarray(h), jnp.asarray(embed), jnp.asarray(targets)

        def loss_fn(hh, ee):
            if path == "plain":
                logits = (hh @ ee.T).reshape(-1, vocab)
                return optax.softmax_cross_entropy_with_integer_labels(
                    logits, jt.reshape(-1)
                ).mean()
            return fc.loss.linear_cross_entropy(
                {"embed.weight": ee}, hh, jt, config=config, xp=xp, core=chunked_loss, chunk=chunk
            )

        step = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))

        def run():
            loss, grads = jax.block_until_ready(step(jh, je))
            return float(loss)

        return run
    import keras
    import tensorflow as tf

    from flashcore.tf.loss import chunked_loss
    from flashcore.tf.xp import xp

    th, te, tt = tf.constant(h), tf.Variable(embed), tf.constant(targets)
    sparse = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=True, autograph=False)
    def step(hh):
        with tf.GradientTape() as tape:
            tape.watch(hh)
            if path == "plain":
                loss = sparse(tf.reshape(tt, [-1]), tf.reshape(hh @ tf.transpose(te), [-1, vocab]))
            else:
                loss = fc.loss.linear_cross_entropy(
                    {"embed.weight": tf.convert_to_tensor(te)}, hh, tt, config=config, xp=xp,
                    core=chunked_loss, chunk=chunk,
                )  # fmt: skip
        gh, ge = tape.gradient(loss, [hh, te])
        return loss, gh[0, 0, 0] + tf.convert_to_tensor(ge)[0, 0]

    def run():
        loss, probe = step(th)
        float(probe)
        return float(loss)

    return run


def measure(backend: str, path: str, vocab: int, dim: int, tokens: int, repeats: int,
            chunk: int | None = None) -> dict:  # fmt: skip
    """One measurement in this process (see the module doc) -> its row."""
    run = _step(backend, path, vocab, dim, tokens, chunk)
    base = _rss_peak()
    loss = run()  # warm-up (compiles)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    import flashcore as fc

    return {
        "backend": backend, "path": path, "vocab": vocab, "tokens": tokens, "dim": dim,
        "chunk": min(chunk or fc.loss.chunk_tokens(vocab), tokens) if path == "chunked" else None,
        "status": "ok", "loss": loss, "finite": bool(np.isfinite(loss)),
        "peak_mib": (_rss_peak() - base) / 2**20, "median_s": statistics.median(times),
        "times_s": times,
    }  # fmt: skip


def _available() -> int:
    """MemAvailable now, bytes (the machine is shared: what others use counts)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _need(path: str, vocab: int, tokens: int) -> int:
    """A rough upper estimate of a run's memory, bytes."""
    return 3 * tokens * vocab * 4 + GIB if path == "plain" else GIB


def _rss_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _child(spec: dict, max_bytes: int) -> dict:
    """:func:`measure` in a fresh interpreter, killed past ``max_bytes`` resident -> its row."""
    row = {k: spec[k] for k in ("backend", "path", "vocab", "tokens", "dim")}
    need, free = _need(spec["path"], spec["vocab"], spec["tokens"]), _available() - 2 * GIB
    if need > min(max_bytes, free):
        why = f"skipped: needs ~{need / GIB:.1f} GiB; cap {max_bytes / GIB:.1f}, available {free / GIB:.1f}"
        return {**row, "status": why}
    return run_child("flashcore.app.loss_bench", spec, row, max_bytes)


def run_child(module: str, spec: dict, row: dict, max_bytes: int) -> dict:
    """``python -m MODULE --child SPEC`` (a bench's one measurement in a fresh interpreter),
    killed past ``max_bytes`` resident -> the row it printed last, or ``row`` with a status
    saying why there is none."""
    cmd = [sys.executable, "-m", module, "--child", json.dumps(spec)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    over = False
    while proc.poll() is None:
        if _rss_of(proc.pid) > max_bytes:
            proc.kill()
            over = True
        time.sleep(0.1)
    out, err = proc.communicate()
    if over:
        return {**row, "status": f"killed: resident set over {max_bytes / GIB:.1f} GiB"}
    if proc.returncode != 0:
        return {**row, "status": f"failed (exit {proc.returncode}): {err.strip()[-300:]}"}
    return json.loads(out.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    """The report: one line per measurement, the chunked/plain ratios beside the chunked row."""
    head = (f"{'backend':<7} {'vocab':>7} {'path':<8} {'chunk':>6} {'peak MiB':>10} "
            f"{'median s':>9} {'mem x plain':>11} {'time x plain':>12}")  # fmt: skip
    lines = [head]
    plain = {(r["backend"], r["vocab"]): r for r in rows if r["path"] == "plain"}
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['backend']:<7} {r['vocab']:>7} {r['path']:<8} {r['status']}")
            continue
        ratios = ["", ""]
        p = plain.get((r["backend"], r["vocab"]))
        if r["path"] == "chunked" and p is not None and p["status"] == "ok":
            ratios = [f"{r['peak_mib'] / max(p['peak_mib'], 1e-9):.3f}",
                      f"{r['median_s'] / p['median_s']:.3f}"]  # fmt: skip
        chunk = "" if r["chunk"] is None else str(r["chunk"])
        lines.append(
            f"{r['backend']:<7} {r['vocab']:>7} {r['path']:<8} {chunk:>6} {r['peak_mib']:>10.1f} "
            f"{r['median_s']:>9.3f} {ratios[0]:>11} {ratios[1]:>12}"
        )
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="flashcore bench-loss", description=__doc__.split("\n")[0])
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated")
    ap.add_argument("--vocab", default="256,32K,128K", help="vocabulary sizes (1K = 1024)")
    ap.add_argument("--tokens", default="8K", help="tokens per loss (1K = 1024)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    ap.add_argument("--chunk", type=int, default=None, help="tokens per chunk (default: by v)")
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
        args.vocab = [parse_length(v) for v in args.vocab.split(",") if v.strip()]
        args.tokens = parse_length(args.tokens)
    except ValueError as err:
        ap.error(str(err))
    if args.repeats < 1 or args.dim < 1 or (args.chunk is not None and args.chunk < 1):
        ap.error("--repeats, --dim and --chunk must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table (and write --json); returns the exit code."""
    args = _parse(argv)
    if args.child:
        print(json.dumps(measure(**json.loads(args.child))))
        return 0
    rows = []
    for vocab in args.vocab:
        for backend in args.backends:
            for path in PATHS:
                spec = dict(backend=backend, path=path, vocab=vocab, dim=args.dim,
                            tokens=args.tokens, repeats=args.repeats, chunk=args.chunk)  # fmt: skip
                rows.append(_child(spec, int(args.max_gib * GIB)))
                print(table(rows).splitlines()[-1], flush=True)
    command = "flashcore bench-loss " + " ".join(argv if argv is not None else sys.argv[1:])
    return write_report(command, rows, table(rows), args.json)


def write_report(command: str, rows: list[dict], text: str, path: str | None) -> int:
    """Print a bench's report ``text``; with ``path``, also write the command, the machine and
    the rows there as JSON. -> 0 (the exit code)."""
    report = {
        "command": command,
        "machine": {
            "cpu": cpu_name(),
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        },
        "rows": rows,
    }
    print(text)
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
