"""Causal incremental decoding for FLASH layers and LMs of FLASH blocks: constant cost per token.

The state of one layer is a flat dict of arrays (a pytree in JAX, a dict of tensors in torch):

    pos      ()         int32   position of the next token (t)
    lin      (b, s, e)  acc     sum over completed chunks of K_lin^T V / C
    pending  (b, s, e)  acc     the same sum over the current (incomplete) chunk
    count    (b,)       acc     completed chunks (for linear_norm='mean')
    qk       (b, C, s)  acc     quad keys of the current chunk (slots < t mod C are filled)
    v        (b, C, e)  acc     values of the current chunk
    prev     (b, d)     dtype   normed input of the previous token (token shift)

acc is float32 for float16 / bfloat16 models, else the model dtype. A step costs O(C (s + e) + s e),
whatever t is. At the end of a chunk, ``pending`` moves into ``lin``: exactly the spec's exclusive
prefix sum over chunks, accumulated token by token.

Every function takes ``xp`` and uses only array operations (no Python branching on values), so it
runs eagerly, under ``jax.jit`` / ``lax.scan``, ``torch.compile`` and ``tf.function`` alike.
Positions are exact up to :data:`flashcore.ops.ROPE_MAX_POSITION` (see :func:`flashcore.ops.rope_at`).
Decoding takes no mask or segment ids: each batch row is one sequence, all positions real.

    decode_init(config, batch, xp=, dtype=, device=None)          -> state
    decode_step(params, x_t, state, config=, xp=None)             -> (out (b, d), state)
    lm_decode_init(config, batch, xp=, dtype=, device=None)       -> state
    lm_decode_step(params, tokens_t, state, config=, xp=None)     -> (logits (b, v), state)
"""

from __future__ import annotations

import math

import numpy as np

from . import ops
from ._xp import const, is_low_precision, namespace
from .config import FlashConfig, LMConfig
from .layers import finish, hidden, layer_norm, scores_to_logits
from .lm import abs_positions, final_norm, head
from .params import subtree

__all__ = ["decode_init", "decode_step", "lm_decode_init", "lm_decode_step"]


def _check_decodable(config) -> None:
    if not isinstance(config, FlashConfig) or config.kind != "flash":
        raise ValueError(
            "incremental decoding needs a FLASH layer config (kind='flash'); GAU and Transformer++ "
            "recompute the full forward"
        )
    if not config.causal:
        raise ValueError("incremental decoding needs causal=True")


def decode_init(config: FlashConfig, batch: int, *, xp, dtype, device=None) -> dict:
    """An empty state for one causal FLASH layer: nothing seen yet, position 0."""
    _check_decodable(config)
    acc = xp.float32 if is_low_precision(dtype) else dtype
    b, c, s, e, d = batch, config.chunk_size, config.qk_dim, config.expanded_dim, config.dim
    kw = {"device": device} if device is not None else {}
    return {
        "pos": xp.zeros((), dtype=xp.int32, **kw),
        "lin": xp.zeros((b, s, e), dtype=acc, **kw),
        "pending": xp.zeros((b, s, e), dtype=acc, **kw),
        "count": xp.zeros((b,), dtype=acc, **kw),
        "qk": xp.zeros((b, c, s), dtype=acc, **kw),
        "v": xp.zeros((b, c, e), dtype=acc, **kw),
        "prev": xp.zeros((b, d), dtype=dtype, **kw),
    }


def decode_step(params: dict, x_t, state: dict, *, config: FlashConfig, xp=None):
    """One token through one causal FLASH layer. x_t: (b, d) -> (out (b, d), new state).

    Equals row t of :func:`flashcore.flash` on the whole prefix (same formulas, summed in another
    order).
    """
    _check_decodable(config)
    xp = namespace(x_t, xp=xp)
    c_size, d = config.chunk_size, config.dim
    pos = state["pos"]
    c = pos % c_size  # slot of this token in its chunk, ()
    h = layer_norm(params, x_t, config, xp)
    if config.token_shift:
        k = (d + 1) // 2
        h_in = xp.concat([state["prev"][..., :k], h[..., k:]], axis=-1)
    else:
        h_in = h
    u, v, heads = hidden(params, h_in, config, xp)  # (b, e) x2, 4 x (b, s)
    acc = state["lin"].dtype
    heads = [
        xp.astype(
            ops.rope_at(
                q, pos, dims=config.rotary_dims, mode=config.rope, base=config.rope_base, xp=xp
            ),
            acc,
        )
        for q in heads
    ]
    qq, qk, lq, lk = heads
    v = xp.astype(v, acc)

    # Write this token's key and value into slot c of the chunk buffers.
    slots = const(xp, np.arange(c_size), like=pos, dtype=pos.dtype)  # (C,)
    here = (slots == c)[None, :, None]  # (1, C, 1)
    qk_buf = xp.where(here, qk[:, None, :], state["qk"])  # (b, C, s)
    v_buf = xp.where(here, v[:, None, :], state["v"])  # (b, C, e)

    # Local quadratic attention over slots 0..c of the current chunk.
    scores = xp.matmul(qk_buf, qq[..., None])[..., 0]  # (b, C)
    bias = ops.rel_bias(
        params.get("rel_bias.weight"),
        np.arange(c_size),
        np.arange(c_size),
        config=config,
        xp=xp,
        like=scores,
    )
    if bias is not None:
        bias = xp.take(bias, xp.reshape(c, (1,)), axis=0)  # row c: (1, C)
    scale = 1.0 / math.sqrt(config.qk_dim) if config.attention == "softmax_plus" else 1.0 / c_size
    scores = scores_to_logits(scores, bias, scale, config)
    allowed = (slots <= c)[None, :]  # (1, C)
    a = ops.attend(scores, allowed, kind=config.attention, length=float(c_size), xp=xp)
    quad = xp.matmul(a[:, None, :], v_buf)[:, 0, :]  # (b, e)

    # Linear attention over completed chunks.
    lin = xp.matmul(lq[:, None, :], state["lin"])[:, 0, :]  # (b, e)
    if config.linear_norm == "mean":
        lin = lin / xp.maximum(state["count"], xp.ones_like(state["count"]))[:, None]

    out = finish(params, x_t, u, quad + lin, None, xp)

    pending = state["pending"] + lk[:, :, None] * v[:, None, :] / float(c_size)  # (b, s, e)
    full = c == c_size - 1  # this token completes its chunk
    new_state = {
        "pos": pos + 1,
        "lin": xp.where(full, state["lin"] + pending, state["lin"]),
        "pending": xp.where(full, xp.zeros_like(pending), pending),
        "count": xp.where(full, state["count"] + 1.0, state["count"]),
        "qk": qk_buf,
        "v": v_buf,
        "prev": h,
    }
    return out, new_state


def _check_lm(config) -> None:
    if not isinstance(config, LMConfig):
        raise TypeError(f"config must be an LMConfig, got {type(config).__name__}")
    _check_decodable(config.block)


def lm_decode_init(config: LMConfig, batch: int, *, xp, dtype, device=None) -> dict:
    """An empty state for an LM of causal FLASH blocks: ``{"layers.{i}": layer state}``."""
    _check_lm(config)
    return {
        f"layers.{i}": decode_init(config.block, batch, xp=xp, dtype=dtype, device=device)
        for i in range(config.num_layers)
    }


def lm_decode_step(params: dict, tokens_t, state: dict, *, config: LMConfig, xp=None):
    """One token per row through the LM. tokens_t: (b,) ints -> (logits (b, v), new state)."""
    _check_lm(config)
    xp = namespace(tokens_t, xp=xp)
    x = xp.take(params["embed.weight"], tokens_t, axis=0)  # (b, d)
    if config.abs_pos == "scaled_sinusoidal":
        pos = state["layers.0"]["pos"]
        cos, sin = ops.angles_at(pos, dims=config.dim, base=10000.0, xp=xp, like=x)  # (1, d/2)
        x = x + abs_positions(params, cos, sin, xp)
    new_state = {}
    for i in range(config.num_layers):
        key = f"layers.{i}"
        x, new_state[key] = decode_step(
            subtree(params, key + "."), x, state[key], config=config.block, xp=xp
        )
    return head(params, final_norm(params, x, config, xp), config, xp), new_state
