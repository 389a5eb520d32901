"""The jax step of ``flashcore bench`` (the models, the step's one definition, the children and
the report are the application's: :mod:`flashcore.app.benchrun`, :mod:`flashcore.app.bench`).

Models: ``flashcore`` (``flashcore.jax.FLASH`` NNX layers; their core is
``flashcore.jax.kernels.flash_core``: the Pallas kernel on GPU / TPU, the spec's core elsewhere)
and ``transformer++`` (``flashcore.jax.TransformerBlock``, the spec's dense attention). One step:
``jax.jit(jax.value_and_grad)`` of sum(y * cotangent) (summed in float32) w.r.t. every layer's
``nnx.State`` and x, compiled once with :func:`flashcore.jax.compiler_options` (on CPU: no
YNNPACK reductions), as flashcore's training step is; bfloat16 is the modules built in bfloat16
(bf16 parameters and x). A call returns after ``jax.block_until_ready`` on the loss and every gradient.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import compiler
from .layers import FLASH, TransformerBlock
from .xp import dot_path

__all__ = ["MODELS", "build_step"]

MODELS = ("flashcore", "transformer++")


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

    Returns (run, gradients, info): run() does one jitted forward + backward of sum(y * cot) and
    blocks on it; gradients() does one and returns {"loss", "x", "layers.{i}.<canonical name>"}
    as float64 NumPy; info: jax's version, platform and the FLASH core. ``threads`` is set by
    the caller through XLA_FLAGS before jax starts; ``compile`` (torch.compile) does not apply."""
    if model not in MODELS:
        raise ValueError(f"flashcore.jax.bench has no model {model!r} (it has {MODELS})")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    dt = jnp.dtype(dtype)
    cls = FLASH if model == "flashcore" else TransformerBlock
    graphdefs, states = zip(*(nnx.split(cls(config, params=w, dtype=dt)) for w in weights))
    xj = jnp.asarray(x, dtype=dt)
    cj = jnp.asarray(cot, dtype=jnp.float32)

    def loss(states, x, cot):
        h = x
        for graphdef, state in zip(graphdefs, states):
            h = nnx.merge(graphdef, state)(h)
        return jnp.sum(h.astype(jnp.float32) * cot)

    step = compiler.jit(jax.value_and_grad(loss, argnums=(0, 1)))

    def run():
        return jax.block_until_ready(step(states, xj, cj))

    # the optimized HLO of the step, for flashcore.app.benchprofile's per-op names
    run.compiled_text = lambda: step.lower(states, xj, cj).compile().as_text()

    def gradients() -> dict:
        value, (g_states, g_x) = run()
        f64 = lambda a: np.asarray(a).astype(np.float64)  # noqa: E731  (bfloat16 via ml_dtypes)
        out = {"loss": f64(value), "x": f64(g_x)}
        for i, (graphdef, g) in enumerate(zip(graphdefs, g_states)):
            for name, v in nnx.merge(graphdef, g).to_canonical().items():
                out[f"layers.{i}.{name}"] = f64(v)
        return out

    info = {
        "jax": jax.__version__,
        "platform": jax.default_backend(),
        "compiler_options": compiler.compiler_options(),
        "dot_path": dot_path(dt),  # bf16 on CPU: "float32" (flashcore.dotpath)
    }
    if model == "flashcore":
        from .kernels import can_use_kernel

        info["core_path"] = "pallas" if can_use_kernel(None, config) else "spec"
    return run, gradients, info


def matmul_peak(n: int, dtype: str, *, repeats: int = 5) -> dict:
    """GFLOP/s of a jitted ``jnp.dot`` of n x n in ``dtype`` (median of ``repeats`` after two
    untimed calls, the first compiling), by wall and by process CPU time: whether XLA's CPU build
    multiplies bfloat16 natively (about 2x its float32 rate) or through float32."""
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.standard_normal((n, n)), dtype=dtype) for _ in range(2))
    mm = jax.jit(jnp.dot)
    for _ in range(2):
        mm(a, b).block_until_ready()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        mm(a, b).block_until_ready()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    flop = 2 * n**3
    return {
        "gflops": flop / statistics.median(wall) / 1e9,
        "gflops_cpu": flop / statistics.median(cpu) / 1e9,
    }
