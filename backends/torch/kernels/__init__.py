"""Accelerated mixed-chunk attention cores for torch, behind a guard.

``attention_core`` has the signature of :func:`flashcore.layers.attention_core_flash` and is what
``flashcore.torch`` modules pass as ``flash(..., core=attention_core)``. It picks, in order:

1. the fused Triton kernel (:mod:`.triton_core`) when :func:`can_use_kernel` passes: CUDA
   tensors, a supported configuration, Triton importable;
2. the blocked torch implementation with a hand-written backward (:mod:`.torch_core`, the CPU
   fast path) when :func:`can_use_torch_core` passes: any device, same configurations;
3. otherwise the spec's own core, which is also the oracle both are tested against.

Training with dropout hands the core a keep-mask of the local attention weights (``attn_keep``);
neither fused core applies one, so those calls take the spec's core.

``gau_core`` is GAU's (``xp.gau_core``, the namespace hook :func:`flashcore.gau` takes): the
blocked torch core with one chunk of length t and no linear part behind
:func:`can_use_gau_core` (relu2 with the scale 1 / t, causal or not, any relative bias, no
segment_ids, no dropout keep-mask), the spec's :func:`flashcore.layers.attention_core_gau`
otherwise.

``layer_path`` / ``flash_layer`` / ``gau_layer`` (:mod:`.torch_layer`) are the whole layer's: on
the CPU, for the configurations of :func:`.torch_layer.layer_unsupported` (ScaleNorm or RMSNorm,
RoPE 'half' or none, no token shift, on top of the cores' tables) and finite inputs without
segment ids or dropout masks, ``flashcore.torch.FLASH`` and ``GAU`` run norm, projections,
heads, the blocked core and the output as one autograd Function; otherwise they run the spec's
layer (FLASH with ``attention_core``, GAU with ``gau_core``).

``softmax_core`` (:mod:`.sdpa`) is the Transformer++ block's: torch's
``scaled_dot_product_attention`` behind :func:`can_use_sdpa`, the spec's softmax core otherwise.

Supported configuration (see :func:`._common.unsupported_reason`): attention='relu2', any
linear_norm, any relative bias, causal or not, an optional key mask, no segment_ids. Tensors
inside a torch.func transform (vmap, grad, jvp) always take the spec's path.
"""

from __future__ import annotations

import functools

import torch

from flashcore.layers import attention_core_flash, attention_core_gau, fused_gau_unsupported

from ._common import FLOAT_DTYPES, plain_tensor, unsupported_reason
from .sdpa import can_use_sdpa, softmax_core, softmax_core_path

__all__ = [
    "attention_core",
    "can_use_kernel",
    "can_use_torch_core",
    "core_path",
    "softmax_core",
    "can_use_sdpa",
    "softmax_core_path",
    "gau_core",
    "can_use_gau_core",
    "gau_core_path",
    "layer_path",
    "flash_layer",
    "gau_layer",
]

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@functools.cache
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


def _torch_core():
    from .torch_core import attention_core_torch

    return attention_core_torch


@functools.cache
def _torch_core_outside_graph():
    """Under torch.compile the blocked core runs eagerly between two compiled graphs (its
    Python loop over blocks would otherwise be unrolled into the graph). Made on first use, so
    that eager use never imports torch._dynamo."""
    return torch.compiler.disable(_torch_core())


def can_use_kernel(v, config, mask=None, segment_ids=None, attn_keep=None) -> bool:
    """Whether the fused Triton kernel handles this call: CUDA tensors of float16, bfloat16 or
    float32, a configuration the spec's fused-core table gives it
    (:func:`flashcore.layers.fused_core_unsupported`), Triton importable. The signature of
    ``flashcore.jax.kernels.can_use_kernel``. v: (b, t, e); mask, segment_ids: (b, t) or None."""
    if not plain_tensor(v, compiling=True) or not v.is_cuda or v.dtype not in _TRITON_DTYPES:
        return False
    if unsupported_reason(config, mask, segment_ids, attn_keep, core="triton") is not None:
        return False
    return _triton_available()


def can_use_torch_core(v, config, mask=None, segment_ids=None, attn_keep=None) -> bool:
    """Whether the blocked torch core (the CPU fast path; any device) handles this call."""
    if not plain_tensor(v, compiling=True) or v.dtype not in FLOAT_DTYPES:
        return False
    return unsupported_reason(config, mask, segment_ids, attn_keep, core="torch") is None


def core_path(v, config, mask=None, segment_ids=None, attn_keep=None) -> str:
    """Which implementation :func:`attention_core` takes: 'triton', 'torch' or 'spec'."""
    if can_use_kernel(v, config, mask, segment_ids, attn_keep):
        return "triton"
    if can_use_torch_core(v, config, mask, segment_ids, attn_keep):
        return "torch"
    return "spec"


def attention_core(
    qq, qk, lq, lk, v, *, bias, config, mask=None, segment_ids=None, xp=None, attn_keep=None
):
    """(b, t, s) x4 and (b, t, e) -> (b, t, e); see flashcore.layers.attention_core_flash.

    attn_keep: (b, g, c, k) bool dropout keep-mask or None; given, the spec's core runs."""
    path = core_path(v, config, mask, segment_ids, attn_keep)
    if path == "triton":
        from .triton_core import attention_core_triton

        return attention_core_triton(qq, qk, lq, lk, v, bias=bias, config=config, mask=mask)
    if path == "torch":
        fn = _torch_core_outside_graph() if torch.compiler.is_compiling() else _torch_core()
        return fn(qq, qk, lq, lk, v, bias=bias, config=config, mask=mask)
    spec = dict(config=config, mask=mask, segment_ids=segment_ids, xp=xp, attn_keep=attn_keep)
    return attention_core_flash(qq, qk, lq, lk, v, bias=bias, **spec)


def can_use_gau_core(v, config, mask=None, segment_ids=None, attn_keep=None) -> bool:
    """Whether :func:`gau_core` runs the blocked torch core: a plain floating torch tensor and a
    configuration the spec's table passes (:func:`flashcore.layers.fused_gau_unsupported`)."""
    if not plain_tensor(v, compiling=True) or v.dtype not in FLOAT_DTYPES:
        return False
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool):
        return False
    masked = mask is not None
    return fused_gau_unsupported(config, masked=masked, segment_ids=segment_ids,
                                 attn_keep=attn_keep) is None  # fmt: skip


def gau_core_path(v, config, mask=None, segment_ids=None, attn_keep=None) -> str:
    """Which implementation :func:`gau_core` takes: 'torch' or 'spec'."""
    return "torch" if can_use_gau_core(v, config, mask, segment_ids, attn_keep) else "spec"


def gau_core(q, k, v, *, bias, config, mask=None, segment_ids=None, xp=None, attn_keep=None):
    """q, k: (b, t, s); v: (b, t, e) -> (b, t, e); see flashcore.layers.attention_core_gau."""
    if can_use_gau_core(v, config, mask, segment_ids, attn_keep):
        from .torch_core import gau_core_torch

        fn = gau_core_torch
        if torch.compiler.is_compiling():
            fn = torch.compiler.disable(gau_core_torch)
        return fn(q, k, v, bias=bias, config=config, mask=mask)
    spec = dict(config=config, mask=mask, segment_ids=segment_ids, xp=xp, attn_keep=attn_keep)
    return attention_core_gau(q, k, v, bias=bias, **spec)


def layer_path(layer, x, mask=None, segment_ids=None, dropout=None) -> str:
    """Which implementation ``flashcore.torch.FLASH.forward`` (``GAU.forward``) takes for this
    call: 'fused' (the whole layer as one autograd Function, :func:`flash_layer` /
    :func:`gau_layer`) or 'spec'. dropout: the keep-masks
    the layer drew for the call (None: none)."""
    from .torch_layer import fused_layer_reason

    return "fused" if fused_layer_reason(layer, x, mask, segment_ids, dropout) is None else "spec"


def flash_layer(layer, x, mask=None):
    """The FLASH ``layer`` on x (b, t, d) as one autograd Function; the call must pass
    :func:`layer_path` (see :func:`.torch_layer.flash_layer_torch`)."""
    from .torch_layer import flash_layer_torch

    return flash_layer_torch(layer, x, mask)


def gau_layer(layer, x, mask=None):
    """The GAU ``layer`` on x (b, t, d) as one autograd Function; the call must pass
    :func:`layer_path` (see :func:`.torch_layer.gau_layer_torch`)."""
    from .torch_layer import gau_layer_torch

    return gau_layer_torch(layer, x, mask)
