"""Causal incremental decoding in JAX: a state pytree, ``lax.scan`` over time, and ``generate``.

The math is :mod:`flashcore.decode` (``decode_step`` / ``lm_decode_step``) called with
``jax.numpy``; this module only threads its state through ``jax.lax.scan`` and samples. The state
is a dict of arrays (see :mod:`flashcore.decode`), so it jits, scans and vmaps as it is. Rotary
angles at traced positions come from ``flashcore.ops.rope_at``: host float64 tables combined with
the angle-sum identity, exact up to ``flashcore.ops.ROPE_MAX_POSITION`` even in float32.

    state = init_state(config, batch, dtype)             # FlashConfig (causal FLASH) or LMConfig
    y_t, state = step(params, x_t, state, config=cfg)   # x_t: (b, d) or tokens (b,)
    ys, state = scan(params, xs, state, config=cfg)     # xs: (b, t, d) or tokens (b, t)
    tokens = generate(params, prompt, key, config=lm_cfg, max_new_tokens=32, top_k=40)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from flashcore import decode as spec_decode
from flashcore.config import FlashConfig, LMConfig

from .xp import xp

__all__ = ["init_state", "step", "scan", "sample", "generate"]


def init_state(config: FlashConfig | LMConfig, batch: int, dtype=jnp.float32) -> dict:
    """An empty decoding state (position 0) for a causal FLASH layer or an LM of FLASH blocks."""
    if isinstance(config, LMConfig):
        return spec_decode.lm_decode_init(config, batch, xp=xp, dtype=jnp.dtype(dtype))
    return spec_decode.decode_init(config, batch, xp=xp, dtype=jnp.dtype(dtype))


def step(params: dict, x_t: jax.Array, state: dict, *, config: FlashConfig | LMConfig):
    """One position. Layer: x_t (b, d) -> (out (b, d), state); LM: tokens (b,) -> (logits (b, v), state)."""
    if isinstance(config, LMConfig):
        return spec_decode.lm_decode_step(params, x_t, state, config=config, xp=xp)
    return spec_decode.decode_step(params, x_t, state, config=config, xp=xp)


def scan(params: dict, xs: jax.Array, state: dict, *, config: FlashConfig | LMConfig):
    """Feed ``xs`` one position at a time with ``lax.scan``.

    Layer: xs (b, t, d) -> (outs (b, t, d), state); LM: tokens (b, t) -> (logits (b, t, v), state).
    """

    def body(state, x_t):
        y, state = step(params, x_t, state, config=config)
        return state, y

    state, ys = jax.lax.scan(body, state, jnp.moveaxis(xs, 1, 0))  # time-major inside
    return jnp.moveaxis(ys, 0, 1), state


def sample(
    logits: jax.Array,
    key: jax.Array | None,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    greedy: bool = False,
) -> jax.Array:
    """logits: (b, v) -> token ids (b,) int32.

    greedy: argmax. Otherwise a draw from softmax(logits / temperature), restricted to the
    ``top_k`` largest logits when given (ties with the k-th are kept).
    """
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if key is None:
        raise ValueError("sampling needs a PRNG key (or greedy=True)")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (or greedy=True), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    scaled = logits.astype(jnp.float32) / temperature  # (b, v)
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]  # (b, 1)
        scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)


@functools.partial(
    jax.jit, static_argnames=("config", "max_new_tokens", "temperature", "top_k", "greedy")
)
def generate(
    params: dict,
    prompt: jax.Array,
    key: jax.Array | None = None,
    *,
    config: LMConfig,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    greedy: bool = False,
) -> jax.Array:
    """Extend ``prompt`` (b, t0) ints by ``max_new_tokens`` tokens -> (b, t0 + max_new_tokens).

    Jitted (config and the sampling options are static). The prompt is read with the same scan
    as decoding, then each new token is sampled from the last logits and fed back.
    """
    if not isinstance(config, LMConfig):
        raise TypeError(f"generate needs an LMConfig, got {type(config).__name__}")
    b = prompt.shape[0]
    state = init_state(config, b, params["embed.weight"].dtype)
    logits, state = scan(params, prompt, state, config=config)  # (b, t0, v)
    if key is None and not greedy:
        raise ValueError("sampling needs a PRNG key (or greedy=True)")
    keys = None if key is None else jax.random.split(key, max_new_tokens)  # one per new token

    def body(carry, k):
        last, state = carry
        tok = sample(last, k, temperature=temperature, top_k=top_k, greedy=greedy)
        last, state = step(params, tok, state, config=config)
        return (last, state), tok

    _, new = jax.lax.scan(body, (logits[:, -1], state), keys, length=max_new_tokens)  # (n, b)
    return jnp.concatenate([prompt.astype(jnp.int32), new.T], axis=1)
