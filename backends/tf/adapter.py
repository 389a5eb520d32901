"""Conformance adapter: builds the Keras layer from canonical float64 weights and reports outputs,
the loss and its gradients (w.r.t. x and every canonical parameter, by ``tf.GradientTape``) as
NumPy float64.

Dtypes: "float64" and "float32" are Keras dtype policies of that name (variables and compute).
"bfloat16" is the Keras mixed-precision policy ``mixed_bfloat16``, the way Keras models train in
bfloat16: float32 variables read as bfloat16, x fed as bfloat16, the attention core in float32 (the
spec's rule). Parameter gradients are those of the float32 variables. A layer's loss
sum(output * cotangent) is summed in float64 (a probe of the output, not part of the model).
Runs are eager by default; ``TFAdapter(jit_compile=True)`` runs forward and backward as one
XLA-compiled ``tf.function`` (tests/backend_tf checks both).
"""

from __future__ import annotations

import contextlib

from flashcore.config import LMConfig
from flashcore.conformance import golden
from flashcore.conformance.adapters.base import Adapter, Result

__all__ = ["TFAdapter"]

POLICIES = {"float64": "float64", "float32": "float32", "bfloat16": "mixed_bfloat16"}


class TFAdapter(Adapter):
    name = "tf"
    dtypes = ("float64", "float32", "bfloat16")

    def __init__(self, jit_compile: bool = False):
        self.jit_compile = jit_compile

    def unavailable(self) -> str | None:
        try:
            import flashcore.tf  # noqa: F401
        except ImportError as err:
            return f"tensorflow / keras are not usable ({err})"
        return None

    @contextlib.contextmanager
    def strict_precision(self):
        """No TensorFloat-32 in matmuls and convolutions (GPU); restores the previous setting."""
        import tensorflow as tf

        before = tf.config.experimental.tensor_float_32_execution_enabled()
        tf.config.experimental.enable_tensor_float_32_execution(False)
        try:
            yield
        finally:
            tf.config.experimental.enable_tensor_float_32_execution(before)

    def run(self, config, params, inputs, dtype) -> Result:
        import tensorflow as tf

        from flashcore.tf import block_class

        layer = block_class(config)(config, params=params, dtype=POLICIES[dtype])
        compute = tf.as_dtype(layer.compute_dtype)
        kw = {
            k: tf.constant(inputs[k])
            for k in ("mask", "segment_ids", "token_type_ids")
            if k in inputs
        }
        masks = golden.dropout_masks(inputs)  # given keep-masks (dropout cases)
        if masks is not None:
            kw["dropout"] = {k: tf.constant(v) for k, v in masks.items()}
        variables = layer.native_variables()
        lm = isinstance(config, LMConfig)

        def step(kw):
            with tf.GradientTape() as tape:
                if lm:
                    tokens = tf.constant(inputs["tokens"])
                    out = layer(tokens, **kw)
                    loss = layer.loss(tokens, tf.constant(inputs["targets"]), **kw)  # chunked
                    sources = {}
                else:
                    x = tf.constant(inputs["x"], dtype=compute)
                    tape.watch(x)
                    out = layer(x, **kw)
                    # The loss is a probe of the output: summed in float64, so that its own rounding
                    # does not count against the backend.
                    cot = tf.constant(inputs["cotangent"], tf.float64)
                    loss = tf.reduce_sum(tf.cast(out, tf.float64) * cot)
                    sources = {"x": x}
                sources |= {f"param/{k}": variables[n] for k, (n, _) in layer.table.items()}
            grads = tape.gradient(loss, sources)
            # Gathered weights (rel_bias, embeddings) get IndexedSlices.
            grads = {k: tf.convert_to_tensor(v) for k, v in grads.items()}
            return out, loss, grads

        if self.jit_compile:
            step = tf.function(step, jit_compile=True, autograph=False)
        out, loss, grads = step(kw)
        for key, (_, transpose) in layer.table.items():
            if transpose:
                grads[f"param/{key}"] = tf.transpose(grads[f"param/{key}"])
        f64 = lambda a: tf.cast(a, tf.float64).numpy()  # noqa: E731
        return Result(f64(out), float(f64(loss)), {k: f64(v) for k, v in grads.items()})
