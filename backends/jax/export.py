"""The StableHLO and SavedModel exports (:mod:`flashcore.deploy`): the spec traced by
``jax.export`` with a symbolic batch and length.

- ``stablehlo``: ``model.stablehlo``, the serialized ``jax.export.Exported`` (weights embedded
  as constants); run by ``jax.export.deserialize(...).call``, or by any StableHLO runtime.
- ``savedmodel``: the same function converted by ``jax2tf`` (the StableHLO module inside an
  ``XlaCallModule`` op, the weights as ``tf.Variable`` s) and saved by ``tf.saved_model.save``
  with a ``serving_default`` signature; run by ``tf.saved_model.load`` or TF Serving. A
  TensorFlow graph has no symbolic sizes (an unknown dimension is ``None``, and the spec
  computes its shapes from them), so the SavedModel carries the jax trace rather than a second
  TF one: the weights and the math are the same, and the conformance suite checks the artifact.

The trace runs on :data:`EXPORT_XP`: ``jax.numpy`` with the spec's plain prefix sum (the CPU
pairwise scan of :mod:`flashcore.jax.xp` picks its path from the static array size).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import flashcore as fc
from flashcore import deploy
from flashcore.kernels import with_kernels

from .xp import KERNELS, xp

__all__ = [
    "EXPORT_XP",
    "STABLEHLO_FILE",
    "trace",
    "write_stablehlo",
    "load_stablehlo",
    "write_savedmodel",
    "load_savedmodel",
    "savedmodel_refuses",
]

STABLEHLO_FILE = "model.stablehlo"

#: the namespace of an export trace: jnp's own prefix sum, the spec's cores, never a host copy
#: of a value
EXPORT_XP = with_kernels(
    xp,
    "flashcore.jax.export_xp",
    dataclasses.replace(
        KERNELS, flash=None, softmax=None, concrete=lambda a: None, is_tracing=lambda: True
    ),
)
EXPORT_XP.cumulative_sum = jnp.cumulative_sum


def _dtype(name: str, dtype: str):
    if name == "x":
        return jnp.dtype(dtype)
    return jnp.dtype(bool) if name == "mask" else jnp.dtype(jnp.int64)


def _function(config, names):
    def fn(params, *inputs):
        return deploy.forward(params, dict(zip(names, inputs)), config=config, xp=EXPORT_XP)

    return fn


def _specs(config, names, dtype: str):
    """ShapeDtypeStructs of the inputs with a symbolic batch ``b`` and length ``t``."""
    b, t = jax.export.symbolic_shape("b, t", constraints=[f"t <= {deploy.max_length(config)}"])
    shape = {n: (b, t, config.dim) if n == "x" else (b, t) for n in names}
    return [jax.ShapeDtypeStruct(shape[n], _dtype(n, dtype)) for n in names]


def trace(params: dict, config, names, dtype: str) -> jax.export.Exported:
    """``jax.export`` of the forward with the weights ``params`` as constants."""
    weights = {k: jnp.asarray(np.asarray(v), dtype=dtype) for k, v in params.items()}
    fn = _function(config, names)
    return jax.export.export(jax.jit(lambda *a: fn(weights, *a)))(*_specs(config, names, dtype))


def write_stablehlo(params, config, folder: Path, names, dtype: str, example: dict) -> None:
    """``folder/model.stablehlo``: the serialized :func:`trace` (``example`` is unused: the
    trace is symbolic)."""
    with jax.enable_x64(True):  # int64 inputs and float64 weights stay as given
        exported = trace(params, config, names, dtype)
    (folder / STABLEHLO_FILE).write_bytes(exported.serialize())


def write_savedmodel(params, config, folder: Path, names, dtype: str, example: dict) -> None:
    """A SavedModel in ``folder`` with the ``serving_default`` signature (named inputs, one
    output ``logits`` or ``y``)."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    fn = _function(config, names)
    keys = sorted(params)
    with jax.enable_x64(True):
        poly = ["b, t, _" if n == "x" else "b, t" for n in names]
        converted = jax2tf.convert(
            lambda flat, *inputs: fn(dict(zip(keys, flat)), *inputs),
            polymorphic_shapes=[None, *poly],
            with_gradient=False,
        )
        module = tf.Module()
        module.weights = [tf.Variable(np.asarray(params[k], dtype=dtype), name=k.replace(".", "/"))
                          for k in keys]  # fmt: skip
        specs = [
            tf.TensorSpec([None, None, config.dim] if n == "x" else [None, None],
                          tf.as_dtype(_dtype(n, dtype).name), name=n)
            for n in names
        ]  # fmt: skip
        output = "logits" if isinstance(config, fc.LMConfig) else "y"

        @tf.function(autograph=False, input_signature=specs)
        def serve(*inputs):
            return {output: converted(module.weights, *inputs)}

        module.serve = serve
        tf.saved_model.save(module, str(folder), signatures={"serving_default": serve})


def savedmodel_refuses(config) -> str | None:
    """Why a SavedModel cannot hold a model of ``config``, or None: jax serializes erf (the
    Laplace attention's) as a StableHLO composite op newer than the StableHLO that TensorFlow's
    XlaCallModule reads (jax 0.10.2 against tensorflow 2.21: 1.15 against 1.13.7)."""
    block = getattr(config, "block", config)
    if getattr(block, "attention", None) == "laplace":
        return (
            f"attention='laplace': jax {jax.__version__} serializes its erf as a StableHLO "
            "composite that TensorFlow's XlaCallModule cannot read; export it as stablehlo or onnx"
        )
    return None


def load_stablehlo(folder: Path, meta: dict):
    """``jax.export.deserialize`` of ``folder/model.stablehlo``: a function of the NumPy feeds."""
    exported = jax.export.deserialize(bytearray((folder / STABLEHLO_FILE).read_bytes()))

    def run(feeds):
        with jax.enable_x64(True):
            return np.asarray(exported.call(*[feeds[n] for n in meta["inputs"]]))

    return run


def load_savedmodel(folder: Path, meta: dict):
    """``tf.saved_model.load`` of ``folder``'s ``serving_default``: a function of the NumPy
    feeds."""
    import tensorflow as tf

    serve = tf.saved_model.load(str(folder)).signatures["serving_default"]

    def run(feeds):
        out = serve(**{n: tf.constant(feeds[n]) for n in meta["inputs"]})
        return next(iter(out.values())).numpy()

    return run
