"""``flashcore bench --backend jax``: jitted forward + backward of a pair of causal FLASH layers.

    flashcore bench --backend jax                          # T = 1K, 4K, 16K, 64K; float32, bfloat16
    flashcore bench --backend jax --lengths 1K,4K --dtypes float32 --repeats 5

One step is ``jax.value_and_grad`` of mean(layer2(layer1(x))^2) w.r.t. both layers' parameters, batch 1,
dim 512, chunk 256, qk 128 (the paper's FLASH sizes), jitted once per (T, dtype); the table gives
the median over ``--repeats`` timed steps after one warm-up, and microseconds per token. The core is
``flashcore.jax.kernels.flash_core`` (the Pallas kernel on GPU / TPU, the spec's core elsewhere).

This module builds and times the steps; the command and the table are the application's
(:mod:`flashcore.app.benchtable`).
"""

from __future__ import annotations

import time

__all__ = ["bench_one", "describe"]


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


def describe(*, batch: int, dim: int, chunk: int, qk: int, repeats: int) -> str:
    """The line above the table: what one step is, the framework version, device and core."""
    import jax

    import flashcore as fc

    from .kernels import can_use_kernel

    kernel = can_use_kernel(None, fc.FlashConfig(causal=True))
    return (
        f"flashcore.jax bench: 2 causal FLASH layers, forward + backward, batch {batch}, "
        f"dim {dim}, chunk {chunk}, qk {qk}; jax {jax.__version__} on "
        f"{jax.default_backend()} ({jax.device_count()} device(s)); core: "
        f"{'Pallas kernel' if kernel else 'spec (XLA)'}; median of {repeats}"
    )
