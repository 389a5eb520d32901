"""Streamed prefill of a causal FLASH LM over a million tokens: peak memory and tokens/s, against
the full forward of the same model at a length that fits.

    python -m flashcore.app.prefill_bench [--backend torch|jax|tf] [--tokens 1M] [--piece 8K]
        [--full-tokens 64K] [--dim 512] [--layers 4] [--chunk 256] [--qk-dim 128]
        [--decode-after 1K,64K] [--decode-steps 64] [--json]

The model: ``LMConfig(FlashConfig(dim, chunk_size=chunk, causal=True), vocab_size=256,
num_layers)`` (the other dimensions FlashConfig's defaults: s = 128, e = 2 d), weights from
``flashcore.init(config, 0)``, one batch row of seeded random bytes. ``prefill`` is the backend
LM's streamed prefill (:mod:`flashcore.stream`) with ``last_only=True``, ``--piece`` positions at a
time; ``full`` is the backend LM's ordinary forward over ``--full-tokens`` positions, all logits.

Each measurement runs in a child process of its own (this module with ``--child``), so that its
peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is that run's alone: the
interpreter, the framework, the model and the tokens included. ``base_rss`` is the child's peak
before the run and its warm-up (after imports, model and tokens), so ``peak_rss - base_rss`` is
what running the model added. One untimed piece first (one warm-up forward for the full forward in jax) takes
compilation out of the time; tokens/s = tokens / the timed run's wall seconds. Threads: what the
frameworks take from the environment (set ``OMP_NUM_THREADS``).

``--decode-after 1K,64K``: per-token decoding latency after a prompt of each length (its streamed
prefill untimed): greedy decoding steps of the backend LM's ``decode_step`` (torch eager, jax
jitted, tf one XLA-compiled ``tf.function``), each timed alone to its logits on the host, the
median; FLASH's state is the same size after any prompt, so the latency should not grow.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

from .cli_args import parse_length

__all__ = ["main", "model_config", "measure", "cpu_name"]

BACKENDS = ("torch", "jax", "tf")


def model_config(dim: int, layers: int, chunk: int, qk_dim: int = 128):
    """The benchmarked LM: ``layers`` causal FLASH layers of width ``dim``, byte vocabulary."""
    import flashcore as fc

    block = fc.FlashConfig(dim=dim, chunk_size=chunk, qk_dim=qk_dim, causal=True)
    return fc.LMConfig(block=block, vocab_size=256, num_layers=layers)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo, as lscpu shows it), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _rss_bytes() -> int:
    """This process's peak resident set so far, bytes (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _runner(backend: str, config, mode: str, piece: int):
    """(run(tokens (1, T) int NumPy) -> a result to block on, warm(tokens)) for one backend."""
    import flashcore as fc

    params = fc.init(config, 0)
    if backend == "torch":
        import torch

        from flashcore.torch import LM

        lm = LM(config, init=False).eval()
        lm.load_canonical(params)

        def run(tokens):
            t = torch.from_numpy(tokens)
            with torch.no_grad():
                return lm.prefill(t, piece=piece, last_only=True)[0] if mode == "prefill" else lm(t)

        return run, None
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        from flashcore.jax import LM, functional

        lm = LM(config, params=params)
        if mode == "prefill":

            def run(tokens):
                return jax.block_until_ready(lm.prefill(tokens, piece=piece, last_only=True)[0])

            return run, None
        jparams = {k: jnp.asarray(v) for k, v in params.items()}
        fwd = jax.jit(lambda p, t: functional.logits(p, t, config=config, core=lm.core))

        def run(tokens):
            return jax.block_until_ready(fwd(jparams, jnp.asarray(tokens)))

        return run, run  # the warm-up compiles the forward
    from flashcore.tf import LM

    lm = LM(config, params=params)

    def run(tokens):
        t = tokens.astype(np.int32)
        out = lm.prefill(t, piece=piece, last_only=True)[0] if mode == "prefill" else lm(t)
        return out.numpy()

    return run, None


def _decoder(backend: str, config, piece: int):
    """(prefill(tokens (1, T) NumPy) -> (last logits, state), step(token (1,) NumPy, state) ->
    (logits (1, v) NumPy, state)) for one backend: the LM's streamed prefill, then its decoding
    step (torch eager without autograd, jax jitted, tf one XLA-compiled tf.function)."""
    import flashcore as fc

    params = fc.init(config, 0)
    if backend == "torch":
        import torch

        from flashcore.torch import LM

        lm = LM(config, init=False).eval()
        lm.load_canonical(params)

        @torch.no_grad()
        def prefill(tokens):
            return lm.prefill(torch.from_numpy(tokens), piece=piece, last_only=True)

        @torch.no_grad()
        def step(tok, state):
            logits, state = lm.decode_step(torch.from_numpy(tok), state)
            return logits.numpy(), state

        return prefill, step
    if backend == "jax":
        from flashcore.jax import LM

        lm = LM(config, params=params)

        def step(tok, state):
            logits, state = lm.decode_step(tok, state)
            return np.asarray(logits), state

        return lambda t: lm.prefill(t, piece=piece, last_only=True), step
    from flashcore.tf import LM  # noqa: I001  (before tensorflow itself: it loads triton first)
    import tensorflow as tf

    lm = LM(config, params=params)
    compiled = tf.function(lm.decode_step, jit_compile=True, reduce_retracing=True)

    def step(tok, state):
        logits, state = compiled(tf.constant(tok.astype(np.int32)), state)
        return logits.numpy(), state

    return lambda t: lm.prefill(t.astype(np.int32), piece=piece, last_only=True), step


def measure_decode(backend: str, tokens: int, piece: int, dim: int, layers: int, chunk: int,
                   steps: int = 64, qk_dim: int = 128) -> dict:  # fmt: skip
    """Per-token decoding latency after a prompt of ``tokens`` positions (streamed prefill, not
    timed): ``steps`` greedy decoding steps after 4 untimed ones (compilation), each timed
    alone to the logits on the host -> {mode: "decode", tokens, steps, ms_per_token (median),
    ms_all, tokens_per_s, prefill_seconds, finite}."""
    if backend == "torch":
        import torch  # noqa: F401  (torch before tensorflow, whatever runs)
    import time as _time

    config = model_config(dim, layers, chunk, qk_dim)
    prefill, step = _decoder(backend, config, piece)
    x = np.random.default_rng(0).integers(0, 256, (1, tokens), dtype=np.int64)
    t0 = _time.perf_counter()
    logits, state = prefill(x)
    prefill_s = _time.perf_counter() - t0
    tok = np.argmax(np.asarray(logits, np.float32), axis=-1).astype(np.int64)
    times, finite = [], True
    for i in range(4 + steps):
        t0 = _time.perf_counter()
        out, state = step(tok, state)
        dt = _time.perf_counter() - t0
        if i >= 4:
            times.append(dt)
        finite = finite and bool(np.isfinite(out).all())
        tok = np.argmax(out, axis=-1).astype(np.int64)
    ms = 1e3 * float(np.median(times))
    return {
        "mode": "decode", "tokens": tokens, "steps": steps, "ms_per_token": ms,
        "ms_all": [1e3 * t for t in times], "tokens_per_s": 1e3 / ms,
        "prefill_seconds": prefill_s, "finite": finite,
    }  # fmt: skip


def measure(backend: str, mode: str, tokens: int, piece: int, dim: int, layers: int,
            chunk: int, qk_dim: int = 128, steps: int = 64) -> dict:  # fmt: skip
    """One measurement in this process -> {mode, tokens, seconds, tokens_per_s, peak_rss,
    base_rss, logits_shape, finite}. mode: "prefill" (streamed, last logits), "full", or
    "decode" (:func:`measure_decode`)."""
    if mode == "decode":
        return measure_decode(backend, tokens, piece, dim, layers, chunk, steps, qk_dim)
    if backend == "torch":
        import torch  # noqa: F401  (torch before tensorflow, whatever runs)
    config = model_config(dim, layers, chunk, qk_dim)
    run, warm = _runner(backend, config, mode, piece)
    x = np.random.default_rng(0).integers(0, 256, (1, tokens), dtype=np.int64)
    base = _rss_bytes()
    if mode == "prefill":
        run(x[:, :piece])  # one piece: compiles what will be compiled
    elif warm is not None:
        warm(x)
    start = time.perf_counter()
    out = np.asarray(run(x), dtype=np.float32)
    seconds = time.perf_counter() - start
    return {
        "mode": mode,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "peak_rss": _rss_bytes(),
        "base_rss": base,
        "logits_shape": list(out.shape),
        "finite": bool(np.isfinite(out).all()),
    }


def _child(backend: str, mode: str, tokens: int, args: argparse.Namespace) -> dict:
    """:func:`measure` in a fresh interpreter (its own peak RSS) -> its result."""
    spec = dict(backend=backend, mode=mode, tokens=tokens, piece=args.piece, dim=args.dim,
                layers=args.layers, chunk=args.chunk, qk_dim=args.qk_dim,
                steps=args.decode_steps)  # fmt: skip
    cmd = [sys.executable, "-m", "flashcore.app.prefill_bench", "--child", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"the {mode} run ({backend}, {tokens} tokens) failed:\n{done.stderr[-4000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m flashcore.app.prefill_bench", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--backend", choices=BACKENDS, default="torch")
    ap.add_argument("--tokens", default="1M", help="streamed prefill length (1K = 1024, 1M)")
    ap.add_argument("--piece", default="8K", help="positions per piece, a multiple of --chunk")
    ap.add_argument("--full-tokens", default="64K", help="full-forward length; 0: skip it")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=256, help="FLASH chunk size C")
    ap.add_argument("--qk-dim", type=int, default=128, help="s, the query / key width")
    ap.add_argument(
        "--decode-after", default="",
        help="prompt lengths (e.g. 1K,64K): per-token decoding latency after each; '' skips",
    )  # fmt: skip
    ap.add_argument("--decode-steps", type=int, default=64, help="timed decoding steps")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return args
    try:
        args.tokens = parse_length(args.tokens)
        args.piece = parse_length(args.piece)
        args.full_tokens = parse_length(args.full_tokens)
        args.decode_after = [parse_length(t) for t in args.decode_after.split(",") if t.strip()]
    except ValueError:
        ap.error("--tokens, --piece, --full-tokens and --decode-after take integers, nK or nM")
    if min(args.dim, args.layers, args.chunk, args.tokens, args.piece, args.qk_dim,
           args.decode_steps) < 1 or args.full_tokens < 0:  # fmt: skip
        ap.error(
            "--tokens, --piece, --dim, --layers, --chunk, --qk-dim and --decode-steps must be "
            ">= 1, --full-tokens >= 0"
        )
    bad = [t for t in args.decode_after if t < args.piece or t % args.chunk]
    if bad:
        ap.error(
            f"--decode-after lengths must be at least one piece ({args.piece}) and multiples of "
            f"--chunk {args.chunk}, got {bad}"
        )
    if args.piece % args.chunk:
        ap.error(f"--piece {args.piece} must be a multiple of --chunk {args.chunk}")
    if args.tokens < args.piece:
        ap.error(f"--tokens {args.tokens} must be at least one piece ({args.piece})")
    return args


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report; returns the exit code."""
    args = _parse(argv)
    if args.child:
        print(json.dumps(measure(**json.loads(args.child))))
        return 0
    block = model_config(args.dim, args.layers, args.chunk).block
    report = {
        "backend": args.backend,
        "model": {
            "dim": args.dim,
            "layers": args.layers,
            "chunk": args.chunk,
            "vocab": 256,
            "qk_dim": block.qk_dim,
            "expanded_dim": block.expanded_dim,
        },  # fmt: skip
        "piece": args.piece,
        "machine": {
            "cpu": cpu_name(),
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        },
        "prefill": _child(args.backend, "prefill", args.tokens, args),
        "full": _child(args.backend, "full", args.full_tokens, args) if args.full_tokens else None,
        "decode": [_child(args.backend, "decode", t, args) for t in args.decode_after],
    }
    if len(report["decode"]) > 1:
        first, last = report["decode"][0], report["decode"][-1]
        report["decode_latency_ratio"] = last["ms_per_token"] / first["ms_per_token"]
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    m = report["machine"]
    print(
        f"{args.backend}: causal LM of {args.layers} FLASH layers, d={args.dim}, "
        f"e={block.expanded_dim}, s={block.qk_dim}, C={args.chunk}, vocab 256, batch 1, float32; "
        f"{m['cpu']}, {m['cores']} cores, OMP_NUM_THREADS={m['OMP_NUM_THREADS']}"
    )
    print("| run | tokens | seconds | tokens/s | peak RSS | of which the run |")
    print("|---|---|---|---|---|---|")
    for name, r in (("streamed prefill", report["prefill"]), ("full forward", report["full"])):
        if r is None:
            continue
        label = f"{name}, piece {args.piece}" if r["mode"] == "prefill" else name
        print(
            f"| {label} | {r['tokens']:,} | {r['seconds']:.1f} | {r['tokens_per_s']:,.0f} | "
            f"{_gib(r['peak_rss'])} | {_gib(r['peak_rss'] - r['base_rss'])} |"
        )
    if report["decode"]:
        print(f"\ndecoding ({args.decode_steps} greedy steps timed one by one, after 4 untimed):")
        print("| prompt tokens | ms per token (median) | tokens/s | prefill seconds |")
        print("|---|---|---|---|")
        for r in report["decode"]:
            print(
                f"| {r['tokens']:,} | {r['ms_per_token']:.2f} | {r['tokens_per_s']:,.0f} | "
                f"{r['prefill_seconds']:.1f} |"
            )
        if "decode_latency_ratio" in report:
            print(
                f"latency after {report['decode'][-1]['tokens']:,} vs {report['decode'][0]['tokens']:,}"
                f" prompt tokens: {report['decode_latency_ratio']:.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
