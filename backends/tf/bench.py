"""``flashcore bench --backend tf``: XLA-compiled forward + backward of a pair of causal FLASH layers.

    flashcore bench --backend tf                           # T = 1K, 4K, 16K, 64K; float32, bfloat16
    flashcore bench --backend tf --lengths 1K,4K --dtypes float32 --repeats 5

One step is ``tf.GradientTape`` of sum(layer2(layer1(x))) w.r.t. both Keras layers' weights, batch 1,
dim 512, chunk 256, qk 128 (the paper's FLASH sizes), in one ``tf.function(jit_compile=True)``
compiled once per (T, dtype). bfloat16 is the Keras policy ``mixed_bfloat16`` (float32 variables,
bfloat16 compute; the attention core in float32), as in :mod:`flashcore.tf.adapter`. The table
gives the median over ``--repeats`` timed steps after one warm-up, and microseconds per token.

This module builds and times the steps; the command and the table are the application's
(:mod:`flashcore.app.benchtable`).
"""

from __future__ import annotations

import time

__all__ = ["bench_one", "describe"]

POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def bench_one(t: int, dtype: str, *, repeats: int, dim: int, chunk: int, qk: int, batch: int = 1):
    """(compile seconds, list of step seconds) for one sequence length and dtype."""
    import tensorflow as tf

    import flashcore as fc

    from .layers import FLASH

    cfg = fc.FlashConfig(dim=dim, chunk_size=chunk, qk_dim=qk, causal=True)
    pair = [FLASH(cfg, seed=i, dtype=POLICIES[dtype]) for i in range(2)]
    weights = [w for layer in pair for w in layer.trainable_variables]
    x = tf.random.stateless_normal((batch, t, dim), seed=(0, 1))

    @tf.function(jit_compile=True, autograph=False)
    def step(x):
        with tf.GradientTape() as tape:
            h = x
            for layer in pair:
                h = layer(h)
            loss = tf.reduce_sum(tf.cast(h, tf.float32))
        return loss, tape.gradient(loss, weights)

    def run():
        loss, grads = step(x)
        loss.numpy(), [g.numpy() for g in grads[:1]]  # wait for the results

    t0 = time.perf_counter()
    run()  # compile + warm-up
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return compile_s, times


def describe(*, batch: int, dim: int, chunk: int, qk: int, repeats: int) -> str:
    """The line above the table: what one step is, the framework version, device and core."""
    import tensorflow as tf

    devices = ", ".join(d.device_type for d in tf.config.list_logical_devices())
    return (
        f"flashcore.tf bench: 2 causal FLASH layers, forward + backward, batch {batch}, "
        f"dim {dim}, chunk {chunk}, qk {qk}; tensorflow {tf.__version__} on "
        f"{devices}; XLA (jit_compile=True); median of {repeats}"
    )
