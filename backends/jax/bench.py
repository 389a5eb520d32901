"""``flashcore bench --backend jax``: jitted forward + backward of a pair of causal FLASH layers.

    flashcore bench --backend jax                          # T = 1K, 4K, 16K, 64K; float32, bfloat16
    flashcore bench --backend jax --lengths 1K,4K --dtypes float32 --repeats 5

One step is ``jax.value_and_grad`` of mean(layer2(layer1(x))^2) w.r.t. both layers' parameters, batch 1,
dim 512, chunk 256, qk 128 (the paper's FLASH sizes), jitted once per (T, dtype); the table gives
the median over ``--repeats`` timed steps after one warm-up, and microseconds per token. The core is
``flashcore.jax.kernel.flash_core`` (the Pallas kernel on GPU / TPU, the spec's core elsewhere).
"""

from __future__ import annotations

import argparse
import time

from flashcore.benchtable import parse_length, print_table

__all__ = ["main", "bench_one"]


def bench_one(t: int, dtype: str, *, repeats: int, dim: int, chunk: int, qk: int, batch: int = 1):
    """(compile seconds, list of step seconds) for one sequence length and dtype."""
    import jax
    import jax.numpy as jnp

    import flashcore as fc

    from . import functional

    cfg = fc.FlashConfig(dim=dim, chunk_size=chunk, qk_dim=qk, causal=True)
    dt = jnp.dtype(dtype)
    keys = jax.random.split(jax.random.key(0), 3)
    pair = [functional.init(cfg, k, dt) for k in keys[:2]]
    x = jax.random.normal(keys[2], (batch, t, dim), jnp.float32).astype(dt)

    def loss(pair, x):  # not sum(x): XLA would constant-fold a constant cotangent's reductions
        for p in pair:
            x = functional.apply(p, x, config=cfg)
        return jnp.mean(jnp.square(x.astype(jnp.float32)))

    step = jax.jit(jax.value_and_grad(loss))
    t0 = time.perf_counter()
    jax.block_until_ready(step(pair, x))  # compile + warm-up
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(step(pair, x))
        times.append(time.perf_counter() - t0)
    return compile_s, times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="flashcore bench --backend jax", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--lengths", default="1K,4K,16K,64K", help="comma-separated T (1K = 1024)")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated dtypes")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per (T, dtype)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--qk", type=int, default=128)
    args = ap.parse_args(argv)
    try:
        lengths = [parse_length(s) for s in args.lengths.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--lengths must be integers or nK, got {args.lengths!r}")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in ("float32", "bfloat16")]
    if bad or args.repeats < 1:
        ap.error(f"--dtypes takes float32 / bfloat16 (got {bad}); --repeats must be >= 1")

    import jax

    import flashcore as fc

    from .kernel import can_use_kernel

    kernel = can_use_kernel(fc.FlashConfig(causal=True))
    print(
        f"flashcore.jax bench: 2 causal FLASH layers, forward + backward, batch {args.batch}, "
        f"dim {args.dim}, chunk {args.chunk}, qk {args.qk}; jax {jax.__version__} on "
        f"{jax.default_backend()} ({jax.device_count()} device(s)); core: "
        f"{'Pallas kernel' if kernel else 'spec (XLA)'}; median of {args.repeats}"
    )
    print_table(
        bench_one, lengths, dtypes, repeats=args.repeats, dim=args.dim, chunk=args.chunk,
        qk=args.qk, batch=args.batch,
    )  # fmt: skip
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
