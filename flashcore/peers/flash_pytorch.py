"""Import checkpoints of the peer package flash-pytorch 0.1.9 (lucidrains) into canonical weights.

    import_state_dict(state_dict, model="FLASH" | "GAU" | "FLASHTransformer", causal=..., ...)
        -> (params, config)

Every behaviour of flash-pytorch that differs from the paper maps to a spec option (off by default
in flashcore), never to a special case here:

| flash-pytorch                                          | flashcore config                                  |
|---|---|
| Z from a separate `to_qk` layer                        | concatenated into `hidden.kernel` (same math)      |
| `to_hidden` rows [v; gate]                             | reordered to [U (gate) \\| V]                       |
| offset-scale rows quad_q, lin_q, quad_k, lin_k         | reordered to quad_q, quad_k, lin_q, lin_k          |
| ScaleNorm `x / max(‖x‖ d^-½, 1e-5) g`                   | `norm="scale", norm_eps_mode="clamp"`              |
| T5 bias (32 buckets, distance 128) times √s (FLASH) or √d (GAU) | `rel_bias="t5", bias_scale=...`            |
| GAU: `relu²((q kᵀ + bias) / n)`, n = padded length, no RoPE | `bias_before_scale=True, length_mode="array", rope="none"` |
| rotary on the first 32 dims, interleaved pairs         | `rope="interleaved", rope_dims=32`                 |
| non-causal linear branch `Σ lkᵀ v / n`, n = array length | `linear_norm="length", length_mode="array"`      |
| causal linear branch: exclusive cumsum of `lkᵀ v / C`  | `linear_norm="sum"` (the paper's)                  |
| token shift of the first ⌈d/2⌉ channels                | `token_shift=True`                                 |
| FLASHTransformer: scaled sinusoidal positions, LayerNorm + biased head | `LMConfig(abs_pos="scaled_sinusoidal", final_norm="layer", head_bias=True, tie_embeddings=False)` |

What the state dict does not record (causal, group size, token shift, the attention function) must
be passed; dims, the norm type and rotary are read from the tensors. Padded query positions: the peer
returns values there, flashcore returns 0; compare real positions only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..config import FlashConfig, LMConfig
from ..params import check_params

__all__ = ["import_state_dict", "MODELS"]

MODELS = ("FLASH", "GAU", "FLASHTransformer")
_T5_BUCKETS, _T5_MAX_DISTANCE = 32, 128


def _np(a) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor, without importing torch
        a = a.detach().cpu()
        if str(a.dtype) == "torch.bfloat16":
            a = a.float()
        a = a.numpy()
    return np.asarray(a)


class _Take:
    """Reads tensors by name, remembering which were used, so leftovers can be reported."""

    def __init__(self, sd: Mapping, prefix: str = ""):
        self.sd, self.prefix, self.used = sd, prefix, set()

    def __call__(self, name: str) -> np.ndarray:
        key = self.prefix + name
        if key not in self.sd:
            raise ValueError(f"flash-pytorch state dict has no {key!r}")
        self.used.add(key)
        return _np(self.sd[key])

    def has(self, name: str) -> bool:
        return self.prefix + name in self.sd


def _layer(take: _Take, *, gau: bool, causal: bool, group_size: int, shift_tokens: bool,
           laplace_attn_fn: bool) -> tuple[dict[str, np.ndarray], FlashConfig]:  # fmt: skip
    params: dict[str, np.ndarray] = {}
    if take.has("norm.g"):
        params["norm.scale"] = take("norm.g").reshape(1)
        norm = dict(norm="scale", norm_eps_mode="clamp", norm_eps=1e-5)
    else:
        params["norm.weight"], params["norm.bias"] = take("norm.weight"), take("norm.bias")
        norm = dict(norm="layer", norm_eps=1e-5)
    hidden_w, hidden_b = take("to_hidden.0.weight"), take("to_hidden.0.bias")  # (2e, d): [v; gate]
    qk_w, qk_b = take("to_qk.0.weight"), take("to_qk.0.bias")  # (s, d)
    two_e, d = hidden_w.shape
    e, s = two_e // 2, qk_w.shape[0]
    v_w, gate_w = hidden_w[:e], hidden_w[e:]
    v_b, gate_b = hidden_b[:e], hidden_b[e:]
    params["hidden.kernel"] = np.concatenate([gate_w.T, v_w.T, qk_w.T], axis=1)  # (d, 2e + s)
    params["hidden.bias"] = np.concatenate([gate_b, v_b, qk_b])
    prefix = "offsetscale." if gau else "qk_offset_scale."
    gamma, beta = take(prefix + "gamma"), take(prefix + "beta")
    order = [0, 1] if gau else [0, 2, 1, 3]  # peer rows quad_q, lin_q, quad_k, lin_k
    params["qk.gamma"], params["qk.beta"] = gamma[order], beta[order]
    bias = take("rel_pos_bias.relative_attention_bias.weight")  # (32, 1)
    if bias.shape != (_T5_BUCKETS, 1):
        raise ValueError(f"expected a (32, 1) T5 bias table, got {bias.shape}")
    params["rel_bias.weight"] = bias[:, 0]
    out = "to_out.0." if gau else "to_out."
    params["out.kernel"], params["out.bias"] = take(out + "weight").T, take(out + "bias")

    rope: dict = dict(rope="none")
    if take.has("rotary_pos_emb.freqs"):
        freqs = take("rotary_pos_emb.freqs")
        dims = 2 * freqs.shape[0]
        expected = (1.0 / 10000.0 ** (np.arange(0, dims, 2, dtype=np.float32) / dims)).astype(
            np.float32
        )
        if not np.allclose(freqs, expected, rtol=1e-6, atol=0):
            raise ValueError("custom rotary frequencies are not supported (expected theta = 10000)")
        rope = dict(rope="interleaved", rope_dims=dims)
    common = dict(
        dim=d, expansion=e / d, qk_dim=s, causal=causal, rel_bias="t5", t5_buckets=_T5_BUCKETS,
        t5_max_distance=_T5_MAX_DISTANCE, attention="laplace" if laplace_attn_fn else "relu2",
        **norm, **rope,
    )  # fmt: skip
    if gau:
        cfg = FlashConfig(
            kind="gau", bias_scale=math.sqrt(d), bias_before_scale=True, length_mode="array",
            token_shift=False, **common,
        )  # fmt: skip
    else:
        cfg = FlashConfig(
            kind="flash", chunk_size=group_size, bias_scale=math.sqrt(s), token_shift=shift_tokens,
            linear_norm="sum" if causal else "length", length_mode="array", **common,
        )  # fmt: skip
    return params, cfg


def import_state_dict(
    state_dict: Mapping,
    model: str = "FLASH",
    *,
    causal: bool,
    group_size: int = 256,
    shift_tokens: bool | None = None,
    laplace_attn_fn: bool = False,
    reduce_group_non_causal_attn: bool = True,
) -> tuple[dict[str, np.ndarray], FlashConfig | LMConfig]:
    """A flash-pytorch 0.1.9 state dict -> (canonical params as float arrays, config).

    ``model``: "FLASH", "GAU" or "FLASHTransformer". ``shift_tokens`` defaults to the peer's own
    default (False for FLASH, True for FLASHTransformer). Unknown or leftover tensors are an error.
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if not reduce_group_non_causal_attn and not causal:
        raise ValueError(
            "reduce_group_non_causal_attn=False (each chunk sees only its own linear state) has no "
            "flashcore equivalent"
        )
    kw = dict(causal=causal, group_size=group_size, laplace_attn_fn=laplace_attn_fn)
    if model in ("FLASH", "GAU"):
        take = _Take(state_dict)
        params, cfg = _layer(take, gau=model == "GAU", shift_tokens=bool(shift_tokens), **kw)
        _check_all_used(state_dict, take.used)
        check_params(params, cfg)
        return params, cfg

    top = _Take(state_dict)
    params = {
        "embed.weight": top("token_emb.weight"),
        "abs_pos.scale": top("abs_pos_emb.scale").reshape(1),
    }
    inv_freq = top("abs_pos_emb.inv_freq")
    d = params["embed.weight"].shape[1]
    expected = 1.0 / 10000 ** (np.arange(0, d, 2, dtype=np.float32) / d)
    if not np.allclose(inv_freq, expected, rtol=1e-6, atol=0):
        raise ValueError("abs_pos_emb.inv_freq is not the standard 10000^(-2i/d)")
    n_layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("layers."))
    block = None
    used = set(top.used)
    for i in range(n_layers):
        take = _Take(state_dict, f"layers.{i}.")
        p, cfg = _layer(
            take, gau=False, shift_tokens=True if shift_tokens is None else shift_tokens, **kw
        )
        if block is not None and cfg != block:
            raise ValueError(f"layer {i} differs in configuration from layer 0")
        block = cfg
        params.update({f"layers.{i}.{k}": v for k, v in p.items()})
        used |= take.used
    params["final_norm.weight"] = top("to_logits.0.weight")
    params["final_norm.bias"] = top("to_logits.0.bias")
    params["head.kernel"] = top("to_logits.1.weight").T
    params["head.bias"] = top("to_logits.1.bias")
    used |= top.used
    _check_all_used(state_dict, used)
    cfg = LMConfig(
        block=block, vocab_size=params["embed.weight"].shape[0], num_layers=n_layers,
        tie_embeddings=False, head_bias=True, final_norm="layer", abs_pos="scaled_sinusoidal",
    )  # fmt: skip
    check_params(params, cfg)
    return params, cfg


def _check_all_used(state_dict: Mapping, used: set[str]) -> None:
    left = sorted(k for k in state_dict if k not in used and not k.endswith("rotary_pos_emb.freqs"))
    if left:
        raise ValueError(f"flash-pytorch state dict has tensors flashcore does not know: {left}")
