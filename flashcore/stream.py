"""Streamed prefill: a causal FLASH LM over a long sequence, piece by piece, in constant memory.

    logits, state = lm_prefill(params, tokens, config=cfg, piece=4096, last_only=True)
    logits, state = lm_decode_step(params, next_tokens, state, config=cfg)   # continue

tokens: (b, T) ints, T as long as wanted. The sequence goes through the LM ``piece`` positions
at a time (a multiple of C); each FLASH layer carries between pieces exactly what
:mod:`flashcore.decode` keeps for it (``lin``: the sum of the chunk states K^T V / C of every
chunk so far, ``count``, and ``prev``: the normed last row, for the token shift), so that the
working memory is that of one piece whatever T is. A piece is one call of the layer's FLASH core
with explicit state (:func:`flashcore.layers.flash_core`, with the backend's fast core)
at global positions ``pos .. pos + piece - 1``, the carried state added to every chunk's linear
state the way context parallelism adds the earlier shards' (:mod:`flashcore.context_parallel`);
positions past the last whole chunk (T not a multiple of C), and those that complete a given
state's partial chunk, are one shorter piece each (a backend's compiled pieces, whose position is
traced, feed them one token at a time by :func:`flashcore.decode.lm_decode_step`). The
returned state is a decoding state (:func:`flashcore.decode.lm_decode_init`'s layout):
``lm_decode_step`` continues from it, and ``lm_prefill`` takes it back as ``state=`` to stream
on.

Logits equal :func:`flashcore.lm_logits` on the whole sequence (the same formulas summed in
another order). ``last_only=True`` returns only the last position's, (b, v), so that nothing
grows with T. No mask and no segment_ids: each batch row is one sequence, every position real
(as in decoding); evaluation only (no dropout). A NaN / Inf embedding row reaches what it reaches
in the forward: every later position of its row.

Only FLASH has a state of constant size: a GAU or Transformer++ LM attends to every earlier
position (use :func:`flashcore.lm_logits`, or a key/value cache with
:func:`flashcore.decode.lm_decode_step`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import kernels, ops
from ._xp import device_of, namespace
from .checks import check_tokens, concrete
from .config import FlashConfig, LMConfig
from .decode import lm_decode_init, lm_decode_step
from .layers import flash_core
from .lm import abs_positions, embed_norm, embed_tokens, final_norm, head
from .params import subtree

__all__ = ["check_stream", "prefill_piece", "lm_prefill", "Prefilling"]


def check_stream(config) -> None:
    """Raise a clear error unless ``config`` is an LMConfig of causal FLASH layers."""
    if not isinstance(config, LMConfig):
        raise TypeError(f"streamed prefill takes an LMConfig, got {type(config).__name__}")
    block = config.block
    if not isinstance(block, FlashConfig) or block.kind != "flash":
        kind = block.kind if isinstance(block, FlashConfig) else "Transformer++"
        raise ValueError(
            f"streamed prefill needs FLASH layers (a constant-size carried state); this LM has "
            f"{kind} layers, which attend to every earlier position: use flashcore.lm_logits "
            "(the full forward) or the key/value cache of flashcore.decode.lm_decode_step"
        )
    if not block.causal:
        raise ValueError(
            "streamed prefill needs causal=True: a bidirectional FLASH layer reads positions "
            "that have not arrived yet; run flashcore.lm_logits on the whole sequence"
        )


def _check_piece(piece, chunk: int) -> None:
    if isinstance(piece, bool) or not isinstance(piece, (int, np.integer)) or piece < 1:
        raise ValueError(f"piece must be a positive int, got {piece!r}")
    if piece % chunk:
        raise ValueError(
            f"piece={piece} must be a multiple of chunk_size={chunk} (the last piece of a "
            "sequence may be shorter; lm_prefill cuts it)"
        )


def _layer_piece(params: dict, x, st: dict, *, config: FlashConfig, xp):
    """One FLASH layer over one piece. x: (b, t, d), t a multiple of C, at positions
    st["pos"] + arange(t) (a chunk boundary) -> (out (b, t, d), the layer's new decoding state):
    one call of the FLASH core with the carried state (:func:`flashcore.layers.flash_core`)."""
    return flash_core(params, x, st, config=config, xp=xp)


def prefill_piece(
    params: dict,
    tokens,
    state: dict,
    *,
    config: LMConfig,
    xp=None,
    core: Callable | None = None,
    last_only: bool = False,
):
    """One piece through the LM. tokens: (b, t) ints, t a multiple of C; ``state`` a decoding
    state at a chunk boundary (its pos a multiple of C; :func:`lm_prefill` makes sure).
    -> (logits (b, t, v), or (b, v) with ``last_only``; the new state). Jit-able: no Python
    branch on values. The FLASH layers' core is the backend's (``Kernels.flash``, see
    :mod:`flashcore.kernels`); ``core``: deprecated, a function taken instead for every call."""
    check_stream(config)
    xp = kernels.override(namespace(tokens, xp=xp), flash=core)
    _, t = check_tokens(tokens, config.vocab_size, xp)
    _check_piece(t, config.block.chunk_size)
    return _lm_piece(params, tokens, state, config=config, xp=xp, last_only=last_only)


def _lm_piece(params: dict, tokens, state: dict, *, config: LMConfig, xp, last_only: bool):
    """:func:`prefill_piece` without its checks: tokens (b, t) of any length t at any position
    (one that starts mid-chunk needs the state's pos concrete: eagerly, not under a trace)."""
    t = tokens.shape[1]
    x = embed_tokens(params, tokens, config, xp)  # (b, t, d), token type 0
    if config.abs_pos == "scaled_sinusoidal":
        pos = state["layers.0"]["pos"]
        cos, sin = ops.angles_offset(pos, t, dims=config.dim, base=10000.0, xp=xp, like=x)
        x = x + abs_positions(params, cos, sin, xp)  # (t, d) broadcast over b
    x = embed_norm(params, x, config, xp)
    new_state = {}
    for i in range(config.num_layers):
        key = f"layers.{i}"
        x, new_state[key] = _layer_piece(
            subtree(params, key + "."), x, state[key], config=config.block, xp=xp
        )
    if last_only:
        x = x[:, -1, :]
    return head(params, final_norm(params, x, config, xp), config, xp), new_state


def _position(state: dict, xp) -> int:
    pos = concrete(state["layers.0"]["pos"], xp)
    if pos is None:
        raise TypeError("lm_prefill drives pieces from Python: call it eagerly, not under a trace")
    return int(pos)


def lm_prefill(
    params: dict,
    tokens,
    *,
    config: LMConfig,
    piece: int,
    state: dict | None = None,
    last_only: bool = False,
    xp=None,
    core: Callable | None = None,
    piece_fn: Callable | None = None,
    step_fn: Callable | None = None,
):
    """Run a causal FLASH LM over ``tokens`` (b, T) ints, ``piece`` positions at a time.

    piece: a multiple of C; the pieces are ``piece`` long, the last whole-chunk one may be
    shorter, and the last T mod C positions are one more piece (with ``piece_fn``: token by
    token through ``step_fn``). state: a decoding state to continue from (None: an empty one in
    the embedding's dtype and device); one that stops mid-chunk is first continued up to the
    chunk boundary the same way (a piece that completes the state's partial chunk,
    :func:`flashcore.layers.flash_core`; with ``piece_fn``, token by token).
    Returns (logits (b, T, v), or the last position's (b, v) with ``last_only``; the decoding
    state after position T - 1, for :func:`flashcore.decode.lm_decode_step`).

    piece_fn(tokens (b, t), state) -> (logits, state) and step_fn(tokens_t (b,), state) ->
    (logits (b, v), state) let a backend run its own compiled versions of
    :func:`prefill_piece` (with ``last_only`` as given here; t a multiple of C at a chunk
    boundary, so that a traced position is right) and ``lm_decode_step``;
    ``core``: deprecated, as in :func:`prefill_piece`.
    """
    check_stream(config)
    xp = kernels.override(namespace(tokens, xp=xp), flash=core)
    c = config.block.chunk_size
    _check_piece(piece, c)
    piece = int(piece)
    b, total = check_tokens(tokens, config.vocab_size, xp)
    if state is None:
        embed = params["embed.weight"]
        state = lm_decode_init(config, b, xp=xp, dtype=embed.dtype, device=device_of(embed))
    if step_fn is None:

        def step_fn(tok, st):
            return lm_decode_step(params, tok, st, config=config, xp=xp)

    edge_fn = None  # a piece of any length from any position (eager), else token by token
    if piece_fn is None:

        def piece_fn(tok, st):
            return _lm_piece(params, tok, st, config=config, xp=xp, last_only=last_only)

        edge_fn = piece_fn

    outs = []  # (b, t_i, v) parts, or only the latest (b, v) with last_only

    def keep(logits, one_step: bool):
        if last_only:
            outs[:] = [logits]
        else:
            outs.append(xp.expand_dims(logits, axis=1) if one_step else logits)

    def edge(i: int, j: int, st):  # positions i .. j - 1, fewer than C, in one piece or steps
        if j > i and edge_fn is not None:
            logits, st = edge_fn(tokens[:, i:j], st)
            keep(logits, False)
            return st
        for k in range(i, j):
            logits, st = step_fn(tokens[:, k], st)
            keep(logits, True)
        return st

    i = min(total, (-_position(state, xp)) % c)  # to the next chunk boundary
    state = edge(0, i, state)
    while total - i >= c:
        n = min(piece, (total - i) // c * c)
        logits, state = piece_fn(tokens[:, i : i + n], state)
        keep(logits, False)
        i += n
    state = edge(i, total, state)
    if last_only:
        return outs[0], state
    return (outs[0] if len(outs) == 1 else xp.concat(outs, axis=1)), state


class Prefilling:
    """``prefill`` for a backend's LM module (a mixin; no framework here). The class supplies
    ``_prefill(tokens, options)``, ``options`` being ``{"piece", "state", "last_only"}`` for
    :func:`lm_prefill` with the backend's compiled pieces."""

    def prefill(self, tokens, *, piece: int = 4096, state: dict | None = None, last_only=False):
        """Streamed prefill of a causal FLASH LM (:func:`lm_prefill`): tokens (b, T) ints,
        ``piece`` positions (a multiple of C) at a time through the backend's core, carrying the
        linear-attention state and token-shift row; memory independent of T.

        -> (logits (b, T, v), or the last position's (b, v) with ``last_only``; a decoding state
        that ``decode_step`` continues and ``state=`` streams on from). No gradients.
        """
        return self._prefill(tokens, {"piece": piece, "state": state, "last_only": last_only})

    def _prefill(self, tokens, options: dict):
        raise NotImplementedError
