"""Causal incremental decoding in JAX: a state pytree, ``lax.scan`` over time, and ``generate``.

The math is :mod:`flashcore.decode` (FLASH's constant-size state, GAU / Transformer++ key/value
caches) called with ``jax.numpy``; this module only threads its state through ``jax.lax.scan``
and jits one step. The state is a dict of arrays, so it jits, scans and vmaps as it is. Rotary
angles at traced positions come from ``flashcore.ops.rope_at``: host float64 tables combined with
the angle-sum identity, exact up to ``flashcore.ops.ROPE_MAX_POSITION`` even in float32.

    state = decode_init(config, batch, dtype, capacity=None)   # a causal block or an LMConfig
    y_t, state = decode_step(params, x_t, state, config=cfg)   # x_t: (b, d) or tokens (b,)
    ys, state = scan(params, xs, state, config=cfg)            # xs: (b, t, d) or tokens (b, t)
    tokens = generate(params, prompt, config=lm_cfg, max_new_tokens=32, top_k=40, seed=0)
    logits, state = prefill(params, tokens, config=lm_cfg, piece=4096, last_only=True)

The NNX modules carry the same entry points as methods, named as in every backend
(:class:`BlockDecoding`, :class:`LMDecoding`): ``module.decode_init(batch, capacity=None)``,
``module.decode_step(x_t, state)``, ``lm.prefill(tokens, ...)``, ``lm.generate(prompt, n, ...)``.
"""

from __future__ import annotations

import functools

import array_api_compat.numpy
import jax
import jax.numpy as jnp
import numpy as np

from flashcore import decode as spec_decode
from flashcore import generation, sampling, stream
from flashcore.config import FlashConfig, LMConfig, TransformerConfig
from flashcore.lm import lm_logits

from .xp import xp

__all__ = [
    "decode_init",
    "decode_step",
    "scan",
    "generate",
    "prefill",
    "BlockDecoding",
    "LMDecoding",
]

Config = FlashConfig | TransformerConfig | LMConfig


def decode_init(config: Config, batch: int, dtype=jnp.float32, capacity: int | None = None) -> dict:
    """An empty decoding state (position 0) for a causal block or LM; ``capacity``: the
    positions of a GAU / Transformer++ cache (:func:`flashcore.decode.decode_init`).

    The zeros are made by NumPy on the host and moved to the device as they are: made by
    ``jnp.zeros``, each new shape would compile its own small XLA program (about 20 ms each on
    CPU, a dozen of them before a first ``generate``)."""
    kw = dict(capacity=capacity, xp=array_api_compat.numpy, dtype=np.dtype(jnp.dtype(dtype)))
    if isinstance(config, LMConfig):
        state = spec_decode.lm_decode_init(config, batch, **kw)
    else:
        state = spec_decode.decode_init(config, batch, **kw)
    return jax.device_put(state)


def decode_step(params: dict, x_t: jax.Array, state: dict, *, config: Config):
    """One position. Block: x_t (b, d) -> (out (b, d), state); LM: tokens (b,) -> (logits (b, v),
    state)."""
    if isinstance(config, LMConfig):
        return spec_decode.lm_decode_step(params, x_t, state, config=config, xp=xp)
    return spec_decode.decode_step(params, x_t, state, config=config, xp=xp)


def scan(params: dict, xs: jax.Array, state: dict, *, config: Config):
    """Feed ``xs`` one position at a time with ``lax.scan``.

    Block: xs (b, t, d) -> (outs (b, t, d), state); LM: tokens (b, t) -> (logits (b, t, v), state).
    """

    def body(state, x_t):
        y, state = decode_step(params, x_t, state, config=config)
        return state, y

    state, ys = jax.lax.scan(body, state, jnp.moveaxis(xs, 1, 0))  # time-major inside
    return jnp.moveaxis(ys, 0, 1), state


_step = jax.jit(decode_step, static_argnames="config")
_forward = jax.jit(
    functools.partial(lm_logits, xp=xp), static_argnames="config"
)  # a "recompute" LM's forward; Transformer++ blocks on the fast softmax core (KERNELS)


_SAMPLER = {"temperature": 1.0, "top_k": None, "top_p": None}  # generate's options, defaults


@functools.partial(jax.jit, static_argnames=("temperature", "top_k", "top_p"))
def _pick(logits, u, *, temperature, top_k, top_p):
    return sampling.sample(logits, u, temperature=temperature, top_k=top_k, top_p=top_p, xp=xp)


@functools.partial(jax.jit, static_argnames=("config", "start", "temperature", "top_k", "top_p"))
def _loop(params, state, out, n, draws, *, config, start, temperature, top_k, top_p):
    """:func:`flashcore.generation.generate`'s loop as one ``lax.fori_loop``: out (b, total)
    int32 with the prompts, n (b,) their lengths, draws (steps, b) -> out filled in."""

    def body(t, carry):
        out, state = carry
        logits, state = decode_step(params, out[:, t], state, config=config)
        new = sampling.sample(
            logits, draws[t], temperature=temperature, top_k=top_k, top_p=top_p, xp=xp
        )  # (b,)
        col = generation.next_tokens(out[:, t + 1], new.astype(out.dtype), t + 1, n, xp)
        return out.at[:, t + 1].set(col), state

    return jax.lax.fori_loop(start, out.shape[1] - 1, body, (out, state))[0]


def generate(
    params: dict, prompt, *, config: LMConfig, max_new_tokens: int, seed: int = 0, lengths=None,
    **sampler,
) -> np.ndarray:  # fmt: skip
    """Extend ``prompt`` (b, t0) ints by ``max_new_tokens`` -> (b, max(lengths) +
    max_new_tokens) int64: :func:`flashcore.generation.generate_lm` with the whole loop of
    :func:`decode_step` and :func:`flashcore.sampling.sample` in one jitted ``lax.fori_loop``
    (:func:`_loop`: one compilation per output length, no host round trip per token); a
    "recompute" LM (:func:`flashcore.decode.decode_method`)
    reruns the jitted forward, compiled once per length. ``lengths``: right-padded prompts of
    different lengths (:mod:`flashcore.generation`). ``sampler``: ``temperature`` (1.0; 0 is
    greedy), ``top_k`` and ``top_p`` (None), as :meth:`flashcore.generation.Generating.generate`.
    """
    if not isinstance(config, LMConfig):
        raise TypeError(f"generate needs an LMConfig, got {type(config).__name__}")
    unknown = sorted(set(sampler) - set(_SAMPLER))
    if unknown:
        raise TypeError(f"generate() got unknown sampling options {unknown}; known: {_SAMPLER}")
    opts = {**_SAMPLER, **sampler}
    sampling.check_options(opts["temperature"], opts["top_k"], opts["top_p"])
    opts["temperature"] = float(opts["temperature"])
    dtype = params["embed.weight"].dtype
    return generation.generate_lm(
        config,
        np.asarray(prompt),
        max_new_tokens=max_new_tokens,
        lengths=lengths,
        seed=seed,
        init=lambda b, cap: decode_init(config, b, dtype, capacity=cap),
        step=lambda tok, st: _step(params, jnp.asarray(tok, jnp.int32), st, config=config),
        forward_last=lambda t: _forward(params, jnp.asarray(t, jnp.int32), config=config)[:, -1],
        pick=lambda logits, u: _pick(logits, jnp.asarray(u, logits.dtype), **opts),
        loop=lambda state, out, n, draws, start: _loop(
            params, state, *_host_cast(out, n, draws, dtype), config=config, start=start,
            **opts,
        ),
    )  # fmt: skip


def _host_cast(out, n, draws, dtype) -> tuple:
    """The loop's NumPy inputs as int32, int32 and ``dtype`` device arrays, cast on the host
    (``jnp.asarray(x, dtype)`` of an int64 / float64 array compiles a conversion per shape)."""
    return jax.device_put(
        (np.asarray(out, np.int32), np.asarray(n, np.int32), np.asarray(draws, np.dtype(dtype)))
    )


_piece = jax.jit(stream.prefill_piece, static_argnames=("config", "xp", "core", "last_only"))


def prefill(
    params: dict,
    tokens,
    *,
    config: LMConfig,
    piece: int = 4096,
    state: dict | None = None,
    last_only: bool = False,
    core=None,
):
    """Streamed prefill of a causal LM (:func:`flashcore.stream.lm_prefill`; GAU and
    Transformer++ through their key/value caches, ``state=`` giving the capacity): tokens
    (b, T) ints, ``piece`` positions (FLASH: a multiple of C) at a time through one jitted
    :func:`flashcore.stream.prefill_piece` (compiled once per piece length: at most two), the
    last T mod C positions through the jitted decode step. ``core``: deprecated, a mixed-chunk core taken for every
    call instead of :data:`flashcore.jax.xp.KERNELS`'s.

    -> (logits (b, T, v), or the last position's (b, v) with ``last_only``; a decoding state
    for :func:`decode_step`, or ``state=`` to stream on).
    """
    tokens = jnp.asarray(tokens)
    if state is None:
        stream.check_stream(config)
        state = decode_init(config, tokens.shape[0], params["embed.weight"].dtype)
    opts = dict(config=config, xp=xp, core=core, last_only=last_only)
    return stream.lm_prefill(
        params,
        tokens,
        config=config,
        piece=piece,
        state=state,
        last_only=last_only,
        xp=xp,
        piece_fn=lambda t, st: _piece(params, t, st, **opts),
        step_fn=lambda t, st: _step(params, t, st, config=config),
    )


class BlockDecoding:
    """``decode_init`` / ``decode_step`` methods of a causal block (mixed into GAU, FLASH and
    TransformerBlock): :func:`decode_init` / the jitted :func:`decode_step` on the module's
    canonical parameters."""

    def decode_init(self, batch: int, capacity: int | None = None) -> dict:
        """An empty decoding state for ``batch`` sequences in the parameters' dtype (FLASH's
        state, or a GAU / Transformer++ key/value cache of ``capacity`` positions)."""
        dtype = next(iter(self.to_canonical().values())).dtype
        return decode_init(self.config, batch, dtype, capacity=capacity)

    def decode_step(self, x_t, state: dict):
        """One position: x_t (b, d) -> (out (b, d), new state); the LM: tokens (b,) ints ->
        (logits (b, v), new state). Equal to the forward's row at this position."""
        return _step(self.to_canonical(), jnp.asarray(x_t), state, config=self.config)


class LMDecoding(BlockDecoding, generation.Generating, stream.Prefilling):
    """The LM's decoding methods (mixed into :class:`flashcore.jax.LM`): ``decode_init`` /
    ``decode_step`` (from :class:`BlockDecoding`), ``prefill`` and ``generate``."""

    def _prefill(self, tokens, options: dict):
        """:meth:`prefill` (:class:`flashcore.stream.Prefilling`): :func:`prefill`, jitted pieces
        with this LM's core."""
        return prefill(self.to_canonical(), tokens, config=self.config, core=self.core, **options)

    def _generate(self, prompt_tokens, max_new_tokens: int, sampler: dict, seed: int, lengths):
        """:meth:`generate` (:class:`flashcore.generation.Generating`): :func:`generate` on this
        LM's parameters -> NumPy int64."""
        params = self.to_canonical()
        return generate(
            params, prompt_tokens, config=self.config, max_new_tokens=max_new_tokens, seed=seed,
            lengths=lengths, **sampler,
        )  # fmt: skip
