"""The tf step of ``flashcore bench`` (the models, the step's one definition, the children and the
report are the application's: :mod:`flashcore.app.benchrun`, :mod:`flashcore.app.bench`).

Models: ``flashcore`` (``flashcore.tf.FLASH`` Keras layers) and ``transformer++``
(``flashcore.tf.TransformerBlock``, the spec's dense attention). One step: ``tf.GradientTape`` of
sum(y * cotangent) (summed in float32) w.r.t. x and every layer's weights, in one
``tf.function(jit_compile=True)`` compiled once. bfloat16 is the Keras policy ``mixed_bfloat16``
(float32 variables read as bfloat16, x cast to bfloat16 by Keras; the attention core in float32),
as in :mod:`flashcore.tf.adapter`. A call returns after ``.numpy()`` of the loss: the compiled
function is one XLA program, whose outputs are all computed when it returns.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from .layers import FLASH, TransformerBlock
from .xp import dot_path

__all__ = ["MODELS", "POLICIES", "build_step"]

MODELS = ("flashcore", "transformer++")
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def build_step(
    model: str,
    config,
    weights: list[dict],
    x: np.ndarray,
    cot: np.ndarray,
    dtype: str,
    *,
    threads: int | None = None,
    compile: bool = False,
) -> tuple[Callable[[], object], Callable[[], dict], dict]:
    """One benchmark step of ``model`` on x / cot (1, T, d) float32 in ``dtype``.

    Returns (run, gradients, info): run() does one XLA-compiled forward + backward of
    sum(y * cot) and waits for it; gradients() does one and returns {"loss", "x",
    "layers.{i}.<canonical name>"} as float64 NumPy; info: TensorFlow's version and devices.
    ``threads``: TensorFlow's intra-op threads; ``compile`` (torch.compile) does not apply."""
    if model not in MODELS:
        raise ValueError(f"flashcore.tf.bench has no model {model!r} (it has {MODELS})")
    if dtype not in POLICIES:
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    cls = FLASH if model == "flashcore" else TransformerBlock
    layers = [cls(config, params=w, dtype=POLICIES[dtype]) for w in weights]
    sources = {}  # "layers.{i}.<canonical>" -> the Keras variable
    transposed = set()
    for i, layer in enumerate(layers):
        variables = layer.native_variables()
        for name, (native, transpose) in layer.table.items():
            sources[f"layers.{i}.{name}"] = variables[native]
            if transpose:
                transposed.add(f"layers.{i}.{name}")
    xt, ct = tf.constant(x), tf.constant(cot)

    @tf.function(jit_compile=True, autograph=False)
    def step(x, cot):
        with tf.GradientTape() as tape:
            tape.watch(x)
            h = x
            for layer in layers:
                h = layer(h)
            loss = tf.reduce_sum(tf.cast(h, tf.float32) * cot)
        grads = tape.gradient(loss, {"x": x, **sources})
        # gathered weights (rel_bias) get IndexedSlices
        return loss, {k: tf.convert_to_tensor(v) for k, v in grads.items()}

    def run():
        loss, grads = step(xt, ct)
        loss.numpy()  # wait for the compiled program
        return loss, grads

    # the optimized HLO of the step, for flashcore.app.benchprofile's per-op names
    run.compiled_text = lambda: step.experimental_get_compiler_ir(xt, ct)(stage="optimized_hlo")

    def gradients() -> dict:
        loss, grads = run()
        out = {"loss": np.float64(loss.numpy())}
        for k, g in grads.items():
            g = tf.cast(g, tf.float64).numpy()
            out[k] = g.T if k in transposed else g
        return out

    info = {"tensorflow": tf.__version__}
    info["devices"] = ", ".join(d.device_type for d in tf.config.list_logical_devices())
    info["dot_path"] = dot_path(dtype)  # bf16 on CPU: "float32" (flashcore.dotpath)
    return run, gradients, info


def matmul_peak(n: int, dtype: str, *, repeats: int = 5) -> dict:
    """GFLOP/s of an XLA-compiled ``tf.linalg.matmul`` of n x n in ``dtype`` (median of
    ``repeats`` after two untimed calls, the first compiling), by wall and by process CPU time:
    whether TF's CPU build multiplies bfloat16 natively or through float32."""
    rng = np.random.default_rng(0)
    a, b = (tf.cast(rng.standard_normal((n, n)), dtype) for _ in range(2))
    mm = tf.function(tf.linalg.matmul, jit_compile=True)
    for _ in range(2):
        mm(a, b).numpy()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        mm(a, b).numpy()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    flop = 2 * n**3
    return {
        "gflops": flop / statistics.median(wall) / 1e9,
        "gflops_cpu": flop / statistics.median(cpu) / 1e9,
    }
