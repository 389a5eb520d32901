"""The one generation loop, shared by every engine: prompts in, sampled continuations out.

    tokens = generate(step, pick, state, prompt, max_new_tokens=32, lengths=None, seed=0,
                      vocab_size=256)                              # (b, max(lengths) + 32) int64
    tokens = generate_lm(config, prompt, max_new_tokens=32, init=, step=, forward_last=, pick=)

A backend supplies two native functions and an initial decoding state:

    step(tokens_t, state) -> (logits (b, v), state)   tokens_t: (b,) int64 NumPy; the logits of
                                                     the next position (native, on device)
    pick(logits, u)       -> (b,) ints               :func:`flashcore.sampling.sample` with the
                                                     options bound, u: (b,) float64 NumPy

``step`` is the backend's compiled :func:`flashcore.decode.lm_decode_step` (FLASH state or a
key/value cache), or :func:`recompute` around its forward where the model cannot be cached
exactly (see :func:`flashcore.decode.decode_method`).

Prompts of different lengths are **right-padded**: ``prompt`` (b, t0) holds row i's prompt in
``prompt[i, :lengths[i]]`` (what follows is ignored). All rows advance one position per step; row
i is fed its own prompt token while ``t < lengths[i]`` and its sampled tokens after that, so each
row's logits are exactly those of its unpadded sequence and no mask enters the model. The output
holds row i's prompt and its ``max_new_tokens`` new tokens in ``out[i, :lengths[i] +
max_new_tokens]``, then zeros. Step t uses the uniform draws ``uniform_draws(seed, ...)[t]``, so a
seed gives the same tokens in every backend.

:func:`generate_lm` is what every engine calls: it picks the decoder :func:`flashcore.decode.
decode_method` names for the LM (a state or cache sized for the whole output, or
:func:`recompute`) and runs :func:`generate`.

``start``: positions already consumed by ``state`` (a prefill of ``prompt[:, :start]``, at most
``min(lengths) - 1``); the loop feeds ``prompt[:, start]`` first.

``loop`` (optional): the whole loop compiled by the backend, ``loop(state, out (b, total) int64,
n (b,) int64, draws (steps, b) float64, start) -> out`` filled in: for t from ``start`` to
``total - 2``, ``step`` on ``out[:, t]``, ``pick`` with ``draws[t]`` and :func:`next_tokens` into
``out[:, t + 1]``, exactly the Python loop's steps, without a host round trip per token (jax:
one ``lax.fori_loop`` under ``jit``).

:class:`Generating` is the public ``generate`` method of every backend's LM module and engine,
written once: the options, their check and the documentation; each class supplies
``_generate(prompt, max_new_tokens, sampler, seed, lengths)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .config import LMConfig
from .decode import decode_method
from .sampling import check_options, uniform_draws

__all__ = ["generate", "generate_lm", "next_tokens", "recompute", "check_prompt", "Generating"]


def check_prompt(prompt, lengths, max_new_tokens: int, vocab_size: int | None):
    """The validated prompt as (b, t0) int64 and lengths as (b,) int64; ValueError naming the
    problem otherwise."""
    p = np.asarray(prompt)
    if p.ndim != 2 or p.shape[1] == 0 or p.shape[0] == 0:
        raise ValueError(f"the prompt must be (batch >= 1, time >= 1) tokens, got {p.shape}")
    if not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"prompt tokens must be integers, got {p.dtype}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
        raise ValueError(f"max_new_tokens must be an int, got {max_new_tokens!r}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    b, t0 = p.shape
    n = np.full((b,), t0, np.int64) if lengths is None else np.asarray(lengths)
    if n.shape != (b,) or not np.issubdtype(n.dtype, np.integer):
        raise ValueError(f"lengths must be ({b},) ints, got {n.shape} {n.dtype}")
    if n.min() < 1 or n.max() > t0:
        raise ValueError(f"lengths must lie in [1, {t0}] (the prompt's width), got {n.tolist()}")
    real = np.arange(t0)[None, :] < n[:, None]
    if vocab_size is not None and np.any(real & ((p < 0) | (p >= vocab_size))):
        bad = p[real & ((p < 0) | (p >= vocab_size))]
        raise ValueError(f"prompt tokens must lie in [0, {vocab_size}), got {sorted(set(bad))[:5]}")
    return np.where(real, p, 0).astype(np.int64), n.astype(np.int64)


def next_tokens(fed, new, nxt, n, xp):
    """The tokens at position ``nxt`` (an int, or an integer array of shape ()): row i's own
    prompt token while ``nxt < n[i]``, the one just sampled after that.

    fed: (b,) the prompt's tokens there (zeros past a prompt); new: (b,) sampled; n: (b,) prompt
    lengths -> (b,). The one rule of the loop, also inside a backend's compiled ``loop``."""
    return xp.where(nxt < n, fed, new)


def generate(
    step: Callable,
    pick: Callable,
    state,
    prompt,
    *,
    max_new_tokens: int,
    lengths=None,
    seed: int = 0,
    vocab_size: int | None = None,
    start: int = 0,
    loop: Callable | None = None,
) -> np.ndarray:
    """Continue right-padded prompts (b, t0) by ``max_new_tokens`` each -> (b, max(lengths) +
    max_new_tokens) int64 (module docstring: the layout, ``step``, ``pick``, ``start``, ``loop``)."""
    prompt, n = check_prompt(prompt, lengths, max_new_tokens, vocab_size)
    b = prompt.shape[0]
    total = int(n.max()) + max_new_tokens
    if not 0 <= start <= int(n.min()) - 1:
        raise ValueError(f"start must lie in [0, min(lengths) - 1 = {int(n.min()) - 1}]")
    out = np.zeros((b, total), np.int64)
    out[:, : prompt.shape[1]] = prompt
    draws = uniform_draws(seed, max(total - 1, 0), b)  # (steps, b)
    if loop is not None:  # the backend runs the same steps compiled, on its device
        if start < total - 1:
            out = np.asarray(loop(state, out, n, draws, start), np.int64)
    else:
        for t in range(start, total - 1):
            logits, state = step(out[:, t], state)
            new = np.asarray(pick(logits, draws[t]), np.int64)  # (b,)
            out[:, t + 1] = next_tokens(out[:, t + 1], new, t + 1, n, np)
    done = np.arange(total)[None, :] < (n + max_new_tokens)[:, None]
    return np.where(done, out, 0)


def recompute(logits_fn: Callable, batch: int) -> tuple[Callable, np.ndarray]:
    """(step, state) for models without an exact cache: the state is the tokens so far (b, t),
    and each step runs ``logits_fn(tokens (b, t + 1) int64 NumPy) -> last logits (b, v)``, the
    backend's full forward. O(t^2) per token; the logits are exactly the forward's."""

    def step(tokens_t, state):
        state = np.concatenate([state, np.asarray(tokens_t, np.int64)[:, None]], axis=1)
        return logits_fn(state), state

    return step, np.zeros((batch, 0), np.int64)


def generate_lm(
    config: LMConfig,
    prompt,
    *,
    max_new_tokens: int,
    init: Callable,
    step: Callable,
    forward_last: Callable,
    pick: Callable,
    lengths=None,
    seed: int = 0,
    loop: Callable | None = None,
) -> np.ndarray:
    """:func:`generate` for a causal LM with the decoder its config allows.

    init(batch, capacity) -> a fresh state (:func:`flashcore.decode.lm_decode_init`, the cache
    sized for every position fed); step: the compiled :func:`flashcore.decode.lm_decode_step`;
    forward_last(tokens (b, t) int64 NumPy) -> the forward's last logits (b, v), used where
    :func:`flashcore.decode.decode_method` says ``"recompute"``; pick, loop: as for
    :func:`generate` (``loop`` only for a cached decoder). Returns (b, max(lengths) + max_new_tokens) int64 (layout: the module docstring).
    """
    prompt, n = check_prompt(prompt, lengths, max_new_tokens, config.vocab_size)
    b, total = prompt.shape[0], int(n.max()) + max_new_tokens
    if decode_method(config) == "recompute":
        step, state = recompute(forward_last, b)
        loop = None  # the state grows by a token per step: the host loop
    else:
        state = init(b, max(total - 1, 1))  # every position but the last is fed
    return generate(
        step,
        pick,
        state,
        prompt,
        max_new_tokens=max_new_tokens,
        lengths=n,
        seed=seed,
        vocab_size=config.vocab_size,
        loop=loop,
    )


class Generating:
    """``generate`` for a backend's LM module or engine (a mixin; no framework here). The class
    supplies ``_generate(prompt, max_new_tokens, sampler, seed, lengths)``, ``sampler`` being the
    checked ``{"temperature", "top_k", "top_p"}`` for :func:`flashcore.sampling.sample`."""

    def generate(
        self,
        prompt,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        lengths=None,
    ):
        """Continue ``prompt`` (b, t0) token ids by ``max_new_tokens`` -> (b, max(lengths) +
        max_new_tokens) int64 (NumPy from engines; the framework's array from LM modules).

        :func:`generate_lm`: the LM's cached decoder (FLASH state, key/value cache) or a rerun of
        its forward (a "recompute" LM), and :func:`flashcore.sampling.sample`: ``temperature`` 0
        is greedy, ``top_k`` / ``top_p`` restrict the draw. ``lengths`` (b,): prompts of
        different lengths, right-padded. One ``seed`` gives the same tokens in every backend.
        """
        check_options(temperature, top_k, top_p)
        sampler = {"temperature": float(temperature), "top_k": top_k, "top_p": top_p}
        return self._generate(prompt, max_new_tokens, sampler, seed, lengths)

    def _generate(self, prompt, max_new_tokens: int, sampler: dict, seed: int, lengths):
        raise NotImplementedError
