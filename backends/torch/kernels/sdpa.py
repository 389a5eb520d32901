"""The Transformer++ attention core on ``torch.nn.functional.scaled_dot_product_attention``.

:func:`softmax_core` has the signature of :func:`flashcore.lm.attention_core_softmax` and is what
``flashcore.torch`` passes as ``transformer_block(..., core=softmax_core)``. SDPA picks its fused
kernel (flash attention on CPU and CUDA for float32 / bfloat16 / float16; the math kernel for
float64), so the b x n x T x T scores are never held in memory on the flash path. The guard
:func:`can_use_sdpa` sends to the spec's core what SDPA does not compute the same way:

* a dropout keep-mask of the probabilities (SDPA draws its own dropout; ours is given);
* tensors inside a torch.func transform (vmap, grad, jvp).

Causal attention without padding or segments is SDPA's ``is_causal``. A padding mask or
segment_ids become a boolean ``attn_mask`` (b, 1, t, j), with every query's own key allowed: a
real query sees itself already, and a padded query (which the block zeroes afterwards) then has
one allowed key instead of none, so SDPA never sees an empty row (the spec gives such a row zeros,
SDPA NaN). Masked rows of the output and their gradients are zeroed by the block as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flashcore.lm import attention_core_softmax

from ._common import FLOAT_DTYPES, plain_tensor

__all__ = ["softmax_core", "can_use_sdpa", "softmax_core_path"]


def can_use_sdpa(q, config, mask=None, segment_ids=None, attn_keep=None) -> bool:
    """Whether :func:`softmax_core` runs SDPA for these inputs (else the spec's core)."""
    return attn_keep is None and plain_tensor(q, compiling=True) and q.dtype in FLOAT_DTYPES


def softmax_core_path(q, config, mask=None, segment_ids=None, attn_keep=None) -> str:
    """'sdpa' or 'spec': which core :func:`softmax_core` takes."""
    return "sdpa" if can_use_sdpa(q, config, mask, segment_ids, attn_keep) else "spec"


def _common_dtype(q, k, v) -> torch.dtype:
    if torch.is_autocast_enabled(q.device.type):
        return torch.get_autocast_dtype(q.device.type)
    return q.dtype


def softmax_core(q, k, v, *, config, mask=None, segment_ids=None, attn_keep=None, xp=None):
    """q, k, v: (b, n, t, hd) -> (b, n, t, hd); see :func:`flashcore.lm.attention_core_softmax`."""
    if not can_use_sdpa(q, config, mask, segment_ids, attn_keep):
        return attention_core_softmax(
            q,
            k,
            v,
            config=config,
            mask=mask,
            segment_ids=segment_ids,
            attn_keep=attn_keep,
            xp=xp,
        )
    dt = _common_dtype(q, k, v)
    q, k, v = (a.to(dt) for a in (q, k, v))
    if mask is None and segment_ids is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=bool(config.causal))
    t = q.shape[-2]
    allowed = torch.ones(1, 1, t, t, dtype=torch.bool, device=q.device)
    if config.causal:
        allowed = torch.tril(allowed)
    if mask is not None:
        allowed = allowed & mask.to(torch.bool)[:, None, None, :]
    if segment_ids is not None:
        allowed = allowed & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    allowed = allowed | torch.eye(t, dtype=torch.bool, device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
