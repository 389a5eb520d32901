"""``flashcore bench --backend tf``: XLA-compiled forward + backward of a pair of causal FLASH layers.

    flashcore bench --backend tf                           # T = 1K, 4K, 16K, 64K; float32, bfloat16
    flashcore bench --backend tf --lengths 1K,4K --dtypes float32 --repeats 5

One step is ``tf.GradientTape`` of sum(layer2(layer1(x))) w.r.t. both Keras layers' weights, batch 1,
dim 512, chunk 256, qk 128 (the paper's FLASH sizes), in one ``tf.function(jit_compile=True)``
compiled once per (T, dtype). bfloat16 is the Keras policy ``mixed_bfloat16`` (float32 variables,
bfloat16 compute; the attention core in float32), as in :mod:`flashcore.tf.adapter`. The table
gives the median over ``--repeats`` timed steps after one warm-up, and microseconds per token.
"""

from __future__ import annotations

import time

from flashcore.benchtable import parse_args, print_table

__all__ = ["main", "bench_one"]

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


def main(argv: list[str] | None = None) -> int:
    args, lengths, dtypes = parse_args("flashcore bench --backend tf", __doc__.split("\n")[0], argv)

    import tensorflow as tf

    devices = ", ".join(d.device_type for d in tf.config.list_logical_devices())
    print(
        f"flashcore.tf bench: 2 causal FLASH layers, forward + backward, batch {args.batch}, "
        f"dim {args.dim}, chunk {args.chunk}, qk {args.qk}; tensorflow {tf.__version__} on "
        f"{devices}; XLA (jit_compile=True); median of {args.repeats}"
    )
    print_table(
        bench_one, lengths, dtypes, repeats=args.repeats, dim=args.dim, chunk=args.chunk,
        qk=args.qk, batch=args.batch, quiet=args.quiet,
    )  # fmt: skip
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
