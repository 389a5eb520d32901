"""What the accelerated cores support, shared by the dispatcher and the cores themselves."""

from __future__ import annotations

import torch

from flashcore.layers import fused_core_unsupported

__all__ = [
    "plain_tensor",
    "unsupported_reason",
    "check_core_args",
    "state_weights",
    "FLOAT_DTYPES",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def plain_tensor(a, *, compiling: bool) -> bool:
    """Whether ``a`` is a torch.Tensor that a fused path may take: outside torch.func transforms
    (those need the spec's traceable ops). Under torch.compile tracing the answer is
    ``compiling``: True for a path that runs outside the graph (the blocked cores, SDPA), False
    for one that must not be traced (the whole-layer autograd Function)."""
    if not isinstance(a, torch.Tensor):
        return False
    if torch.compiler.is_compiling():
        return compiling
    return not torch._C._functorch.is_functorch_wrapped_tensor(a)


def unsupported_reason(
    config, mask, segment_ids, attn_keep=None, core: str = "torch"
) -> str | None:
    """None when the fused cores (Triton, blocked torch) implement this call, else why not.

    What they cover is the spec's table (:func:`flashcore.layers.fused_core_unsupported`: FLASH,
    relu2, any linear_norm, any relative bias, causal or not, no segment_ids, no ``attn_keep``,
    no config field the table does not know); here also the torch side: an optional (b, t)
    bool torch key mask. ``attn_keep`` (a dropout keep-mask of the local attention weights,
    training only) is not fused: such calls take the spec's core (``config.dropout`` alone, in
    evaluation, changes nothing in the core). ``core``: 'torch' or 'triton', the row of
    :data:`flashcore.layers.FUSED_CORE_LINEAR_NORMS` to read.
    """
    reason = fused_core_unsupported(core, config, segment_ids=segment_ids, attn_keep=attn_keep)
    if reason is not None:
        return reason
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool):
        return "mask must be a bool torch.Tensor"
    return None


def check_core_args(qq, qk, lq, lk, v, bias, config, mask, segment_ids, core: str) -> None:
    """Raise ValueError / TypeError when a direct call to the fused ``core`` ('torch' or
    'triton') gets arguments it cannot take."""
    reason = unsupported_reason(config, mask, segment_ids, core=core)
    if reason is not None:
        raise ValueError(f"this fused core does not support the call: {reason}")
    if v.dim() != 3:
        raise ValueError(f"v must be (b, t, e), got shape {tuple(v.shape)}")
    b, t, _ = v.shape
    heads = (qq, qk, lq, lk)
    s = qq.shape[-1]
    for name, a in zip(("qq", "qk", "lq", "lk"), heads):
        if tuple(a.shape) != (b, t, s):
            raise ValueError(f"{name} must be (b, t, s) = {(b, t, s)}, got {tuple(a.shape)}")
    if any(a.dtype != v.dtype for a in heads) or v.dtype not in FLOAT_DTYPES:
        raise TypeError(
            "qq, qk, lq, lk and v must share one floating dtype, got "
            f"{[str(a.dtype) for a in (*heads, v)]}"
        )
    c = config.chunk_size
    if bias is not None and tuple(bias.shape) != (c, c):
        raise ValueError(f"bias must be (C, C) = {(c, c)}, got {tuple(bias.shape)}")
    if mask is not None and tuple(mask.shape) != (b, t):
        raise ValueError(f"mask must be (b, t) = {(b, t)}, got {tuple(mask.shape)}")


def state_weights(mask, b: int, t: int, config, device=None):
    """The factor w applied to each sum of chunk states K^T V (float64 tensor on ``device``):
    (b, g) when causal (w[:, g] scales the prefix that chunk g reads), (b, 1) when not (one
    state per batch row).

    sum: 1 / C;  mean: 1 / (C max(n, 1)), n = the chunks with a real key that the sum covers;
    length (non-causal): 1 / n, n = the real keys of the row (length_mode 'real') or t ('array').
    mask: (b, t) bool or None.
    """
    c = config.chunk_size
    g = -(-t // c)
    cols = g if config.causal else 1
    f64 = dict(dtype=torch.float64, device=device)
    if config.linear_norm == "length":
        if config.length_mode == "array" or mask is None:
            return torch.full((b, 1), 1.0 / t, **f64)
        n = mask.to(**f64).sum(dim=1, keepdim=True)
        return 1.0 / n.clamp(min=1.0)
    if config.linear_norm == "sum":
        return torch.full((b, cols), 1.0 / c, **f64)
    if mask is None:
        has = torch.ones((b, g), **f64)  # every chunk, the padded last one too, has a real key
    else:
        real = torch.nn.functional.pad(mask.to(**f64), (0, g * c - t))
        has = (real.view(b, g, c).sum(dim=-1) > 0).to(torch.float64)
    if config.causal:
        n = torch.cumsum(has, dim=1) - has  # chunks before g
    else:
        n = has.sum(dim=1, keepdim=True)
    return 1.0 / (c * n.clamp(min=1.0))
