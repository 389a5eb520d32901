"""The backend adapter protocol: what a port must provide to be checked by the conformance suite.

An adapter builds a layer or an LM from canonical float64 weights and a config, runs it in a given
dtype on golden inputs, and returns NumPy float64 results. See conformance/README.md for a worked
example.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

import flashcore as fc

__all__ = ["Adapter", "Result"]


@dataclass
class Result:
    """What one run returns, as NumPy float64.

    output: (b, t, d) layer output or (b, t, v) LM logits. loss: the scalar whose gradients are
    returned: sum(output * cotangent) for layers, mean next-token cross-entropy for LMs.
    grads: "x" (layers) and "param/<canonical name>" -> gradient, or None with ``no_grads_reason``
    when the backend has no autodiff.
    """

    output: np.ndarray
    loss: float
    grads: dict[str, np.ndarray] | None = None
    no_grads_reason: str = ""
    extra: dict = field(default_factory=dict)


class Adapter:
    """Subclass and implement :meth:`run`; override the rest as needed.

    ``name`` is the backend id used on the command line and in test ids. ``dtypes`` lists the
    dtypes the backend runs ("float64", "float32", "bfloat16"); golden cases are checked in each.
    """

    name: ClassVar[str] = "base"
    dtypes: ClassVar[tuple[str, ...]] = ("float64", "float32")
    #: False when the backend has no autodiff; gradient checks are then reported as skipped.
    autodiff: ClassVar[bool] = True

    def unavailable(self) -> str | None:
        """None when the backend can run here, else why not (e.g. 'torch is not installed')."""
        return None

    def unsupported(self, config, inputs: dict[str, np.ndarray]) -> str | None:
        """None when this backend can express the case, else why not (e.g. a deployment export
        has no dropout): the runner reports its checks as skipped with that reason."""
        return None

    def strict_precision(self) -> contextlib.AbstractContextManager:
        """A context in which matmuls run at full precision (no TF32, float64 where possible)."""
        return contextlib.nullcontext()

    def run(
        self,
        config: fc.FlashConfig | fc.TransformerConfig | fc.LMConfig,
        params: dict[str, np.ndarray],
        inputs: dict[str, np.ndarray],
        dtype: str,
    ) -> Result:
        """Build from canonical ``params`` (float64), cast to ``dtype``, run on ``inputs``.

        inputs: "x" (b, t, d) float64 and "cotangent" (b, t, d) for layers, or "tokens" and
        "targets" (b, t) int64 for LMs; optional "mask" (b, t) bool and "segment_ids" (b, t) int64.
        """
        raise NotImplementedError

    def output(
        self,
        config: fc.FlashConfig | fc.TransformerConfig | fc.LMConfig,
        params: dict[str, np.ndarray],
        inputs: dict[str, np.ndarray],
        dtype: str,
    ) -> np.ndarray:
        """Only :meth:`run`'s output, (b, t, d) or (b, t, v) float64, for checks that need no
        gradients (the peer-parity tests). The default calls :meth:`run`; a backend whose
        gradients are costly to compile may override it with a forward-only call."""
        return self.run(config, params, inputs, dtype).output
