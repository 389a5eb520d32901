"""Adapters for the deployment exports (:mod:`flashcore.deploy`): ``onnx``, ``stablehlo``,
``savedmodel``.

Each case is exported from its canonical float64 weights, cast to the dtype, at a length other
than the case's (:func:`flashcore.deploy.trace_length`; the dynamic length is what is under
test), then the artifact is loaded back (onnxruntime, ``jax.export.deserialize``,
``tf.saved_model.load``) and run on the golden inputs. The loss is computed from the artifact's
output in NumPy float64, as the golden loss is defined: sum(output * cotangent) for a layer, the
mean next-token cross-entropy of the logits (``flashcore.cross_entropy``) for an LM.

Skipped, with the reason in the report: gradients (an artifact is inference only), the
dropout cases (an export runs in inference mode; keep-masks are a training input) and the packed
cases (``segment_ids``, :data:`flashcore.deploy.NOT_EXPORTED`), and what a format refuses
(:func:`flashcore.deploy.unsupported`: the SavedModel, the Laplace attention). float32
only: the dtype a deployed model is served in (bfloat16 and float64 are not every runtime's).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

import flashcore as fc

from .base import Adapter, Result

__all__ = ["ExportAdapter", "OnnxAdapter", "StableHLOAdapter", "SavedModelAdapter"]

INFERENCE_ONLY = "{fmt} exports are inference only: gradients are checked in the framework backends"


class ExportAdapter(Adapter):
    """One deployment format (``name`` is its :data:`flashcore.deploy.FORMATS` key)."""

    dtypes = ("float32",)
    autodiff = False

    def unavailable(self) -> str | None:
        from flashcore import deploy

        fmt = deploy.FORMATS[self.name]
        try:
            fmt.function("write"), fmt.function("load")
        except deploy.ExportError as err:
            return str(err)
        return None

    def unsupported(self, config, inputs) -> str | None:
        from flashcore import deploy

        if any(k.startswith("dropout/") for k in inputs):
            return f"{self.name} exports run in inference mode: no dropout keep-masks"
        for name in sorted(set(inputs) & set(deploy.NOT_EXPORTED)):
            return deploy.NOT_EXPORTED[name]
        return deploy.unsupported(self.name, config)

    def run(self, config, params, inputs, dtype) -> Result:
        from flashcore import deploy

        lm = isinstance(config, fc.LMConfig)
        names = deploy.input_names(
            config, mask="mask" in inputs, token_type_ids="token_type_ids" in inputs
        )
        p = {k: v.astype(dtype) for k, v in params.items()}
        with tempfile.TemporaryDirectory(prefix=f"flashcore-{self.name}-") as tmp:
            folder = deploy.export(self.name, p, config, Path(tmp) / "export", inputs=names,
                                   dtype=dtype)  # fmt: skip
            out = np.asarray(deploy.load(folder)(**{n: inputs[n] for n in names}), np.float64)
        if lm:
            loss = float(fc.cross_entropy(out, inputs["targets"], inputs.get("mask"), xp=np))
        else:
            loss = float(np.sum(out * inputs["cotangent"]))
        return Result(out, loss, None, INFERENCE_ONLY.format(fmt=self.name))


class OnnxAdapter(ExportAdapter):
    name = "onnx"


class StableHLOAdapter(ExportAdapter):
    name = "stablehlo"


class SavedModelAdapter(ExportAdapter):
    name = "savedmodel"
