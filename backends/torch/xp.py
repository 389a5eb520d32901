"""The namespace the torch backend hands the spec: ``array_api_compat.torch`` carrying
:data:`KERNELS`, torch's one :class:`flashcore.kernels.Kernels` (the backend contract): the fast
cores of :mod:`flashcore.torch.kernels` (FLASH's Triton / blocked core, GAU's blocked core,
Transformer++'s SDPA), each behind its guard; torch's own ``silu`` (fused), ``erf`` and
``log_softmax_last`` (log_softmax over the last axis), ``dense`` (matmul plus bias in one addmm,
autocast-aware), ``split_last`` (one backward for [U | V | Z] instead of a zero-filled gradient
per slice), ``known_all_false`` (the NaN / Inf containment's passes skipped for finite CPU
inputs), and torch.compile's tracing queries. Use :data:`xp`."""

from __future__ import annotations

import array_api_compat.torch as _compat
import numpy as np
import torch

from flashcore.kernels import Call, FastCore, Kernels, with_kernels

from . import kernels

__all__ = ["xp", "KERNELS"]


def _concrete(a) -> np.ndarray | None:
    """A NumPy copy of ``a``, or None while torch.compile traces (the values are unknown)."""
    if torch.compiler.is_compiling():
        return None
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _dense(h: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """h W + b in one addmm: ``kernel`` (i, o) is the module's (o, i) weight seen through ``.mT``,
    so ``kernel.mT`` hands F.linear the contiguous weight back (no copy). Mixed dtypes outside
    autocast take the array API's promotion (F.linear has none)."""
    dtypes = {h.dtype, kernel.dtype} | ({bias.dtype} if bias is not None else set())
    if len(dtypes) > 1 and not torch.is_autocast_enabled(h.device.type):
        y = _compat.matmul(h, kernel)
        return y if bias is None else y + bias
    return torch.nn.functional.linear(h, kernel.mT, bias)


def _split_last(a: torch.Tensor, sizes) -> tuple[torch.Tensor, ...]:
    """torch.split along the last axis: its backward is one concatenation."""
    return torch.split(a, list(sizes), dim=-1)


def _known_all_false(rows: torch.Tensor) -> bool:
    """True when ``rows`` (bool) holds no True, read eagerly on the CPU (no device sync); False
    when that cannot be known cheaply (CUDA, torch.compile tracing, torch.func transforms)."""
    if torch.compiler.is_compiling() or not isinstance(rows, torch.Tensor):
        return False
    if rows.device.type != "cpu" or torch._C._functorch.is_functorch_wrapped_tensor(rows):
        return False
    return not bool(rows.any())


def _flash_unsupported(config, call: Call) -> str | None:
    """Why neither the Triton nor the blocked torch core takes this FLASH core call (None: one
    does, :func:`flashcore.torch.kernels.core_path`)."""
    if kernels.core_path(call.x, config, call.mask, call.segment_ids, call.attn_keep) != "spec":
        return None
    return "no torch core takes it (flashcore.torch.kernels.core_path)"


def _gau_unsupported(config, call: Call) -> str | None:
    """Why the blocked GAU core does not take this call (None: it does)."""
    if kernels.can_use_gau_core(call.x, config, call.mask, call.segment_ids, call.attn_keep):
        return None
    return "the blocked GAU core does not take it (flashcore.torch.kernels.can_use_gau_core)"


def _softmax_unsupported(config, call: Call) -> str | None:
    """Why SDPA does not take this Transformer++ core call (None: it does)."""
    if kernels.can_use_sdpa(call.x, config, call.mask, call.segment_ids, call.attn_keep):
        return None
    return "SDPA does not take it (flashcore.torch.kernels.can_use_sdpa)"


#: torch's side of the backend contract (:mod:`flashcore.kernels`).
KERNELS = Kernels(
    flash=FastCore(kernels.attention_core, _flash_unsupported),
    gau=FastCore(kernels.gau_core, _gau_unsupported),
    softmax=FastCore(kernels.softmax_core, _softmax_unsupported),
    silu=torch.nn.functional.silu,
    dense=_dense,
    split_last=_split_last,
    erf=torch.special.erf,
    log_softmax_last=lambda z: torch.nn.functional.log_softmax(z, dim=-1),
    known_all_false=_known_all_false,
    concrete=_concrete,
    is_tracing=torch.compiler.is_compiling,
)

xp = with_kernels(_compat, "flashcore.torch.xp", KERNELS)
