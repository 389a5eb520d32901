"""Conformance adapter: builds the NNX module from canonical float64 weights and reports outputs,
the loss and its gradients (w.r.t. x and every canonical parameter) as NumPy float64.

float64: JAX keeps 64-bit types off unless ``jax_enable_x64`` is set, a process-wide flag. The
adapter does not flip it globally: each run happens inside ``jax.enable_x64(dtype == "float64")``,
a context manager (a thread-local override of the flag in JAX >= 0.5; ``jax.experimental.enable_x64``
is gone in 0.10). Float64 runs therefore really run in float64, float32 / bfloat16 runs run with
JAX's default (x64 off) whatever the process set, and nothing leaks to other code in the process;
jit caches are keyed on the flag, so the two modes never share a compiled function.
"""

from __future__ import annotations

import contextlib

import numpy as np

from flashcore.config import LMConfig
from flashcore.conformance import golden
from flashcore.conformance.adapters.base import Adapter, Result

__all__ = ["JaxAdapter"]


class JaxAdapter(Adapter):
    name = "jax"
    dtypes = ("float64", "float32", "bfloat16")

    def unavailable(self) -> str | None:
        try:
            import flax.nnx  # noqa: F401
            import jax  # noqa: F401
        except ImportError as err:
            return f"jax / flax are not installed ({err})"
        return None

    def strict_precision(self) -> contextlib.AbstractContextManager:
        """Matmuls at full precision (no bf16 passes / TF32 on accelerators)."""
        import jax

        return jax.default_matmul_precision("highest")

    def run(self, config, params, inputs, dtype) -> Result:
        import jax

        with jax.enable_x64(dtype == "float64"):
            return _run(config, params, inputs, dtype)

    def output(self, config, params, inputs, dtype) -> np.ndarray:
        """The jitted forward alone (no gradient program to compile)."""
        import jax

        with jax.enable_x64(dtype == "float64"):
            return _run(config, params, inputs, dtype, grads=False).output


def _run(config, params, inputs, dtype, grads: bool = True) -> Result:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from .module import block_class

    dt = jnp.dtype(dtype)
    acc = jnp.float32 if dtype == "bfloat16" else dt  # the loss is summed in at least float32
    graphdef, state = nnx.split(block_class(config)(config, params=params, dtype=dt))
    mask = None if "mask" not in inputs else jnp.asarray(inputs["mask"])
    seg = None if "segment_ids" not in inputs else jnp.asarray(inputs["segment_ids"])
    masks = golden.dropout_masks(inputs)  # given keep-masks (dropout cases)
    drop = {"dropout": {k: jnp.asarray(v) for k, v in masks.items()}} if masks else {}
    if "token_type_ids" in inputs:  # LMs with token types
        drop["token_type_ids"] = jnp.asarray(inputs["token_type_ids"])

    f64 = lambda a: np.asarray(a).astype(np.float64)  # noqa: E731  (bfloat16 via ml_dtypes)
    if not grads:
        key = "tokens" if isinstance(config, LMConfig) else "x"
        first = jnp.asarray(inputs[key], dtype=None if key == "tokens" else dt)

        def forward(state, first):
            return nnx.merge(graphdef, state)(first, mask=mask, segment_ids=seg, **drop)

        return Result(f64(jax.jit(forward)(state, first)), float("nan"), None, "output only")
    if isinstance(config, LMConfig):
        tokens, targets = jnp.asarray(inputs["tokens"]), jnp.asarray(inputs["targets"])

        def f(state):
            model = nnx.merge(graphdef, state)
            loss = model.loss(tokens, targets, mask=mask, segment_ids=seg, **drop)
            return loss, model(tokens, mask=mask, segment_ids=seg, **drop)

        (loss, out), g_state = jax.jit(jax.value_and_grad(f, has_aux=True))(state)
        grads = {}
    else:
        x = jnp.asarray(inputs["x"], dtype=dt)
        cot = jnp.asarray(inputs["cotangent"], dtype=acc)

        def f(state, x):
            out = nnx.merge(graphdef, state)(x, mask=mask, segment_ids=seg, **drop)
            return jnp.sum(out.astype(acc) * cot), out

        step = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))
        (loss, out), (g_state, g_x) = step(state, x)
        grads = {"x": g_x}
    grads.update({f"param/{k}": v for k, v in nnx.merge(graphdef, g_state).to_canonical().items()})
    return Result(f64(out), float(loss), {k: f64(v) for k, v in grads.items()})
