"""The namespace the torch backend hands the spec: ``array_api_compat.torch`` plus torch's own
``silu`` (fused) and ``erf``, and the tracing hooks of torch.compile (see
:func:`flashcore._xp.extended`). Use :data:`xp`."""

from __future__ import annotations

import array_api_compat.torch as _compat
import numpy as np
import torch

from flashcore._xp import extended

__all__ = ["xp"]


def _concrete(a) -> np.ndarray | None:
    """A NumPy copy of ``a``, or None while torch.compile traces (the values are unknown)."""
    if torch.compiler.is_compiling():
        return None
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


xp = extended(
    _compat,
    "flashcore.torch.xp",
    silu=torch.nn.functional.silu,
    erf=torch.special.erf,
    concrete=_concrete,
    is_tracing=torch.compiler.is_compiling,
)
