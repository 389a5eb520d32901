"""Streamed prefill: a causal LM over a long sequence, piece by piece.

    logits, state = lm_prefill(params, tokens, config=cfg, piece=4096, last_only=True)
    logits, state = lm_decode_step(params, next_tokens, state, config=cfg)   # continue

tokens: (b, T) ints. The sequence goes through the LM ``piece`` positions at a time; each layer
carries between pieces exactly what :mod:`flashcore.decode` keeps for it, and a piece is one call
of the layer's core with explicit state at global positions ``pos .. pos + piece - 1``:

- FLASH (constant memory whatever T): :func:`flashcore.layers.flash_core` (with the backend's
  fast core), carrying ``lin`` (the sum of the chunk states K^T V / C of every chunk so far),
  ``count`` and ``prev`` (the normed last row, for the token shift), the carried state added to
  every chunk's linear state the way context parallelism adds the earlier shards'
  (:mod:`flashcore.context_parallel`). ``piece`` is a multiple of C; positions past the last
  whole chunk (T not a multiple of C), and those that complete a given state's partial chunk,
  are one shorter piece each (a backend's compiled pieces, whose position is traced, feed them
  one token at a time by :func:`flashcore.decode.lm_decode_step`).
- GAU (a decodable config: ``length_mode='prefix'`` or ``fixed_length``) and
  Transformer++: :func:`flashcore.layers.gau_core` / :func:`flashcore.lm.transformer_core`
  continuing the key/value cache (any ``piece``; the piece's queries attend to the cached keys
  and their own). The working memory grows with the cache, not with T: the capacity is the
  state's (``state=`` from ``lm_decode_init(..., capacity=)``, or ``capacity=``; GAU's
  default: ``max_len``).

The returned state is a decoding state (:func:`flashcore.decode.lm_decode_init`'s layout):
``lm_decode_step`` continues from it, and ``lm_prefill`` takes it back as ``state=`` to stream on.

Logits equal :func:`flashcore.lm_logits` on the whole sequence (the same formulas summed in
another order). ``last_only=True`` returns only the last position's, (b, v), so that nothing
grows with T. No mask and no segment_ids: each batch row is one sequence, every position real
(as in decoding); evaluation only (no dropout). A NaN / Inf embedding row reaches what it reaches
in the forward: every later position of its row.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import kernels, ops
from ._xp import device_of, namespace
from .checks import check_tokens, concrete
from .config import FlashConfig, LMConfig, TransformerConfig
from .decode import decode_method, lm_decode_init, lm_decode_step
from .layers import flash_core, gau_core
from .lm import abs_positions, embed_norm, embed_tokens, final_norm, head, transformer_core
from .params import subtree

__all__ = ["check_stream", "prefill_piece", "lm_prefill", "Prefilling"]


def check_stream(config) -> None:
    """Raise a clear error unless ``config`` is an LMConfig of causal layers that carry a
    decoding state exactly: FLASH, Transformer++, or GAU whose n does not grow with the sequence
    (``length_mode='prefix'`` or ``fixed_length``)."""
    if not isinstance(config, LMConfig):
        raise TypeError(f"streamed prefill takes an LMConfig, got {type(config).__name__}")
    block = config.block
    if not block.causal:
        raise ValueError(
            f"streamed prefill needs causal=True: a bidirectional {block.kind} layer reads positions "
            "that have not arrived yet; run flashcore.lm_logits on the whole sequence"
        )
    decode_method(config)
    if block.kind == "gau" and block.fixed_length is None and block.length_mode != "prefix":
        raise ValueError(
            f"streamed prefill of gau layers with length_mode={block.length_mode!r} has no exact "
            "carried state (the forward divides every row by n = the whole sequence's length, "
            "which the pieces do not know yet): use flashcore.lm_logits, or train with "
            "length_mode='prefix' or fixed_length for a key/value cache"
        )


def _chunk(config: LMConfig) -> int:
    """The positions a piece must be a multiple of: C for FLASH, 1 for a key/value cache."""
    block = config.block
    return block.chunk_size if isinstance(block, FlashConfig) and block.kind == "flash" else 1


def _check_piece(piece, chunk: int) -> None:
    if isinstance(piece, bool) or not isinstance(piece, (int, np.integer)) or piece < 1:
        raise ValueError(f"piece must be a positive int, got {piece!r}")
    if piece % chunk:
        raise ValueError(
            f"piece={piece} must be a multiple of chunk_size={chunk} (the last piece of a "
            "sequence may be shorter; lm_prefill cuts it)"
        )


def _layer_piece(params: dict, x, st: dict, *, config: FlashConfig | TransformerConfig, xp):
    """One layer over one piece. x: (b, t, d) at positions st["pos"] + arange(t) (FLASH: t a
    multiple of C from a chunk boundary) -> (out (b, t, d), the layer's new decoding state): one
    call of its core with explicit state (:func:`flashcore.layers.flash_core`,
    :func:`flashcore.layers.gau_core`, :func:`flashcore.lm.transformer_core`)."""
    if isinstance(config, TransformerConfig):
        return transformer_core(params, x, st, config=config, xp=xp)
    core = gau_core if config.kind == "gau" else flash_core
    return core(params, x, st, config=config, xp=xp)


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
    """One piece through the LM. tokens: (b, t) ints (FLASH: t a multiple of C); ``state`` a
    decoding state (FLASH: at a chunk boundary, its pos a multiple of C; :func:`lm_prefill`
    makes sure).
    -> (logits (b, t, v), or (b, v) with ``last_only``; the new state). Jit-able: no Python
    branch on values. The FLASH layers' core is the backend's (``Kernels.flash``, see
    :mod:`flashcore.kernels`); ``core``: deprecated, a function taken instead for every call."""
    check_stream(config)
    xp = kernels.override(namespace(tokens, xp=xp), flash=core)
    _, t = check_tokens(tokens, config.vocab_size, xp)
    _check_piece(t, _chunk(config))
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
    capacity: int | None = None,
):
    """Run a causal LM (:func:`check_stream`) over ``tokens`` (b, T) ints, ``piece`` positions
    at a time.

    piece: FLASH: a multiple of C; the pieces are ``piece`` long, the last whole-chunk one may
    be shorter, and the last T mod C positions are one more piece (with ``piece_fn``: token by
    token through ``step_fn``). GAU / Transformer++: any positive int, the last piece the rest.
    state: a decoding state to continue from (None: an empty one in the embedding's dtype and
    device, of ``capacity`` positions for a key/value cache: :func:`flashcore.decode.decode_init`);
    a FLASH one that stops mid-chunk is first continued up to the chunk boundary the same way (a
    piece that completes the state's partial chunk, :func:`flashcore.layers.flash_core`; with
    ``piece_fn``, token by token).
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
    c = _chunk(config)
    _check_piece(piece, c)
    piece = int(piece)
    b, total = check_tokens(tokens, config.vocab_size, xp)
    if state is None:
        embed = params["embed.weight"]
        dev = device_of(embed)
        state = lm_decode_init(config, b, capacity=capacity, xp=xp, dtype=embed.dtype, device=dev)
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
        """Streamed prefill of a causal LM (:func:`lm_prefill`): tokens (b, T) ints, ``piece``
        positions at a time through the backend's core, carrying the decoding state (FLASH: the
        linear-attention state and token-shift row, ``piece`` a multiple of C, memory independent
        of T; GAU / Transformer++: the key/value cache of ``state``, or a new one of GAU's
        ``max_len`` positions; a Transformer++ LM needs ``state=decode_init(b, capacity=)``).

        -> (logits (b, T, v), or the last position's (b, v) with ``last_only``; a decoding state
        that ``decode_step`` continues and ``state=`` streams on from). No gradients.
        """
        return self._prefill(tokens, {"piece": piece, "state": state, "last_only": last_only})

    def _prefill(self, tokens, options: dict):
        raise NotImplementedError
