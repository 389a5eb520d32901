"""The ONNX export (:mod:`flashcore.deploy`): the spec traced by ``torch.onnx.export`` (through
``torch.export``, batch and length dynamic), run by onnxruntime.

The graph is the spec's own path on :data:`EXPORT_XP`: torch's namespace without the fused
kernels (a Triton or blocked CPU core is no ONNX op) and without host reads of values, so what
onnxruntime runs is the oracle every fused path is tested against.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

import flashcore as fc
from flashcore import deploy
from flashcore.kernels import with_kernels

from .xp import KERNELS, xp

__all__ = ["EXPORT_XP", "write_onnx", "load_onnx", "ONNX_FILE", "OPSET"]

ONNX_FILE = "model.onnx"
OPSET = 18

#: the namespace of an export trace: never a fused core, never a host copy of a value
EXPORT_XP = with_kernels(
    xp,
    "flashcore.torch.export_xp",
    dataclasses.replace(
        KERNELS,
        flash=None,
        gau=None,
        softmax=None,
        known_all_false=None,
        concrete=lambda a: None,
        is_tracing=lambda: True,
    ),
)


class _Forward(torch.nn.Module):
    """:func:`flashcore.deploy.forward` on positional inputs named ``names``; the canonical
    weights are buffers (constants of the graph)."""

    def __init__(self, params: dict, config, names: tuple[str, ...], dtype: torch.dtype):
        super().__init__()
        self.config, self.names = config, names
        self.keys = sorted(params)
        for i, k in enumerate(self.keys):
            self.register_buffer(f"w{i}", torch.as_tensor(np.asarray(params[k])).to(dtype))

    def forward(self, *inputs):
        params = {k: getattr(self, f"w{i}") for i, k in enumerate(self.keys)}
        named = dict(zip(self.names, inputs))
        return deploy.forward(params, named, config=self.config, xp=EXPORT_XP)


@contextlib.contextmanager
def _quiet():
    """Without the exporter's notes that concern no flashcore graph: torchvision's operators not
    registered, and the renaming of the dynamic axes that share one constraint."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*The axis name: .* will not be used")
            warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
            yield
    finally:
        registration.setLevel(level)


def write_onnx(params, config, folder: Path, names, dtype: str, example: dict) -> None:
    """Write ``folder/model.onnx``: the forward of ``config`` with ``params``, inputs ``names``
    (example: NumPy inputs to trace with), batch and length dynamic."""
    dt = getattr(torch, dtype)
    module = _Forward(params, config, tuple(names), dt).eval()
    args = tuple(torch.from_numpy(example[n]) for n in names)
    batch = torch.export.Dim("batch", min=1)
    time = torch.export.Dim("time", min=1, max=deploy.max_length(config))
    dynamic = tuple({0: batch, 1: time} for _ in names)
    output = "logits" if isinstance(config, fc.LMConfig) else "y"
    # size-oblivious: no guard "g != 1" from a reshape or a matmul at the traced g = ceil(t / C),
    # which would cut t <= C out of the export
    from torch.fx.experimental import _config as shapes

    with torch.no_grad(), shapes.patch(backed_size_oblivious=True), _quiet():
        program = torch.onnx.export(
            module,
            args,
            input_names=list(names),
            output_names=[output],
            dynamic_shapes=(dynamic,),  # forward(*inputs): one tuple
            opset_version=OPSET,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    program.save(str(folder / ONNX_FILE))


def load_onnx(folder: Path, meta: dict):
    """onnxruntime on ``folder/model.onnx``: a function of the NumPy feeds -> the output."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(
        str(folder / ONNX_FILE), opts, providers=["CPUExecutionProvider"]
    )
    return lambda feeds: session.run(None, feeds)[0]
