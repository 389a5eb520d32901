"""What the accelerated cores support, shared by the dispatcher and the cores themselves."""

from __future__ import annotations

import dataclasses

import torch

__all__ = [
    "unsupported_reason",
    "check_core_args",
    "state_weights",
    "FLOAT_DTYPES",
    "KNOWN_FIELDS",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

#: FlashConfig fields whose meaning for the attention core the fused cores account for. Fields
#: that only act outside the core (norms, RoPE, the bias table, token shift, dropout, ...) are
#: listed too; the core-relevant ones are kind, chunk_size, causal, attention, linear_norm,
#: length_mode and bias_before_scale.
KNOWN_FIELDS = frozenset(
    {
        "dim", "kind", "expansion", "qk_dim", "chunk_size", "causal", "attention", "rope",
        "rope_dims", "rope_base", "rel_bias", "max_len", "t5_buckets", "t5_max_distance",
        "bias_scale", "norm", "norm_eps", "norm_eps_mode", "linear_norm", "fixed_length",
        "length_mode", "bias_before_scale", "token_shift", "dropout",
    }
)  # fmt: skip


def _config_fields(config) -> list[str]:
    return [f.name for f in dataclasses.fields(config)] if dataclasses.is_dataclass(config) else []


def unsupported_reason(config, mask, segment_ids, attn_keep=None) -> str | None:
    """None when an accelerated core implements this configuration, else why not.

    Supported: a FLASH layer with attention='relu2', any linear_norm ('sum', 'mean', 'length'
    with either length_mode), any relative bias (passed in as a (C, C) tensor or None, added before
    or after the 1/C scaling), causal or not, an optional (b, t) bool key mask, and no
    segment_ids. A config field this module does not know makes the call unsupported, so that a
    new spec option can never be silently ignored by a fused core. ``attn_keep`` (a dropout
    keep-mask of the local attention weights, training only) is not fused: such calls take the
    spec's core (``config.dropout`` alone, in evaluation, changes nothing in the core).
    """
    if attn_keep is not None:
        return "dropout on the attention weights (attn_keep) is not fused"
    unknown = sorted(set(_config_fields(config)) - KNOWN_FIELDS)
    if unknown:
        return f"FlashConfig fields {unknown} are new to the fused cores"
    if getattr(config, "kind", None) != "flash":
        return f"config.kind must be 'flash', got {getattr(config, 'kind', None)!r}"
    if config.attention != "relu2":
        return f"attention={config.attention!r} (only 'relu2' is fused)"
    if config.linear_norm not in ("sum", "mean", "length"):
        return f"linear_norm={config.linear_norm!r}"
    if segment_ids is not None:
        return "segment_ids (packed sequences) are not fused"
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool):
        return "mask must be a bool torch.Tensor"
    return None


def check_core_args(qq, qk, lq, lk, v, bias, config, mask, segment_ids) -> None:
    """Raise ValueError / TypeError when a direct call to a core gets arguments it cannot take."""
    reason = unsupported_reason(config, mask, segment_ids)
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
