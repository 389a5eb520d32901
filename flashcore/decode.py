"""Causal incremental decoding for every block (FLASH, GAU, Transformer++) and LMs of them.

    decode_method(config)                                            -> "state" | "cache" | "recompute"
    decode_init(config, batch, capacity=None, xp=, dtype=, device=None)   -> state
    decode_step(params, x_t, state, config=, xp=None)                -> (out (b, d), state)
    lm_decode_init(config, batch, capacity=None, xp=, dtype=, device=None) -> state
    lm_decode_step(params, tokens_t, state, config=, xp=None)        -> (logits (b, v), state)

Step t (the state's ``pos``) returns what the full forward returns at position t for the prefix
0..t: row t of :func:`flashcore.flash` / :func:`flashcore.transformer_block`, and the last row of
:func:`flashcore.gau` on the prefix. A state is a flat dict of arrays (a pytree in JAX, a dict of
tensors in torch and TF); every function uses array operations only (no Python branching on
values), so a step runs eagerly, under ``jax.jit`` / ``lax.scan``, ``torch.compile`` and
``tf.function`` alike. Decoding takes no mask or segment ids: each batch row is one sequence,
all positions real (:mod:`flashcore.generation` feeds prompts of different lengths without
padding the model's input). Positions are exact up to :data:`flashcore.ops.ROPE_MAX_POSITION`.

FLASH (``"state"``, constant cost per token, O(C (s + e) + s e)):

    pos      ()         int32   position of the next token (t)
    lin      (b, s, e)  acc     sum over completed chunks of K_lin^T V / C
    pending  (b, s, e)  acc     the same sum over the current (incomplete) chunk
    count    (b,)       acc     completed chunks (for linear_norm='mean')
    qk       (b, C, s)  acc     quad keys of the current chunk (slots < t mod C are filled)
    v        (b, C, e)  acc     values of the current chunk
    prev     (b, d)     dtype   normed input of the previous token (token shift)

At the end of a chunk, ``pending`` moves into ``lin``: exactly the spec's exclusive prefix sum
over chunks, accumulated token by token.

GAU (``"cache"``, O(L (s + e)) per token for a cache of L = ``capacity`` positions):

    pos ()  int32;  k (b, L, s) acc, rotated keys;  v (b, L, e) acc;  prev (b, d) dtype

GAU divides Q K^T by n. At step t the prefix has t + 1 real keys, so n = t + 1 (each
``length_mode``: no padding, no segments) or ``fixed_length``; softmax_plus's log n the same.
That is exactly the last row of the forward on the prefix. Earlier rows of that forward were
computed with their own n, so in an LM of more than one GAU layer (whose later layers read the
earlier rows) the cache is exact only when n does not grow with the sequence: ``fixed_length``,
or ``length_mode='prefix'`` (n = the keys up to the query, the same in the forward).
:func:`decode_method` says ``"recompute"`` otherwise: rerun the forward per token
(:func:`flashcore.generation.recompute`), which is what such a model means.

Transformer++ (``"cache"``): pos (); k, v (b, n_heads, L, d / n_heads) dtype, rotated keys.

A GAU or Transformer++ step is a piece of one row of the block's core with explicit state
(:func:`flashcore.layers.gau_core`, :func:`flashcore.lm.transformer_core`), which also takes a
piece of t rows continuing a cache (streamed prefill). A step at pos >= capacity has no slot
left: its output is NaN (never a silent wrong answer).
acc is float32 for float16 / bfloat16 models, else the model dtype.
"""

from __future__ import annotations

from . import ops
from ._xp import is_low_precision, namespace
from .config import FlashConfig, LMConfig, TransformerConfig
from .layers import flash_core, gau_core, layer_input
from .lm import abs_positions, embed_norm, embed_tokens, final_norm, head, transformer_core
from .params import subtree

__all__ = [
    "decode_method",
    "decode_init",
    "decode_step",
    "lm_decode_init",
    "lm_decode_step",
]


def decode_method(config: FlashConfig | TransformerConfig | LMConfig) -> str:
    """How a causal block or LM decodes, exactly: ``"state"`` (FLASH: constant-size state),
    ``"cache"`` (a key/value cache: Transformer++, GAU layers, GAU LMs whose n does not grow)
    or ``"recompute"`` (an LM of several GAU layers dividing by the growing sequence length:
    rerun the forward per token). ValueError for a non-causal or unknown config."""
    lm = config if isinstance(config, LMConfig) else None
    block = config.block if lm is not None else config
    if not isinstance(block, (FlashConfig, TransformerConfig)):
        raise TypeError(f"decoding takes a flashcore config, got {type(config).__name__}")
    if not block.causal:
        raise ValueError(
            f"incremental decoding needs causal=True (a bidirectional {block.kind} block sees "
            "the future)"
        )
    if isinstance(block, TransformerConfig):
        return "cache"
    if block.kind == "flash":
        return "state"
    grows = block.fixed_length is None and block.length_mode != "prefix"
    return "recompute" if lm is not None and lm.num_layers > 1 and grows else "cache"


def _capacity(config, capacity) -> int:
    if capacity is None:
        if isinstance(config, FlashConfig):
            return config.max_len
        raise ValueError("a Transformer++ key/value cache needs capacity= (the positions to hold)")
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
    return capacity


def decode_init(
    config: FlashConfig | TransformerConfig,
    batch: int,
    *,
    capacity: int | None = None,
    xp,
    dtype,
    device=None,
) -> dict:
    """An empty state (position 0) for one causal block. ``capacity``: the positions a GAU or
    Transformer++ cache holds (GAU default: ``max_len``; ignored by FLASH)."""
    decode_method(config)
    if isinstance(config, FlashConfig) and config.kind == "flash":
        return _flash_init(config, batch, xp=xp, dtype=dtype, device=device)
    cap = _capacity(config, capacity)
    acc = xp.float32 if is_low_precision(dtype) else dtype
    kw = {"device": device} if device is not None else {}
    state = {"pos": xp.zeros((), dtype=xp.int32, **kw)}
    if isinstance(config, TransformerConfig):
        shape = (batch, config.heads, cap, config.head_dim)
        return state | {
            "k": xp.zeros(shape, dtype=dtype, **kw),
            "v": xp.zeros(shape, dtype=dtype, **kw),
        }
    if ops.REL_BIASES[config.rel_bias].bounded and cap > config.bias_span:
        raise ValueError(
            f"capacity={cap} exceeds the learned bias span (max_len={config.max_len}): the "
            "forward could not reach those offsets either"
        )
    s, e, d = config.qk_dim, config.expanded_dim, config.dim
    return state | {
        "k": xp.zeros((batch, cap, s), dtype=acc, **kw),
        "v": xp.zeros((batch, cap, e), dtype=acc, **kw),
        "prev": xp.zeros((batch, d), dtype=dtype, **kw),
    }


def decode_step(
    params: dict, x_t, state: dict, *, config: FlashConfig | TransformerConfig, xp=None
):
    """One token through one causal block. x_t: (b, d) -> (out (b, d), new state)."""
    decode_method(config)
    xp = namespace(x_t, xp=xp)
    if isinstance(config, TransformerConfig):
        return _transformer_step(params, x_t, state, config=config, xp=xp)
    if config.kind == "gau":
        return _gau_step(params, x_t, state, config=config, xp=xp)
    return _flash_step(params, x_t, state, config=config, xp=xp)


def _rope_step(heads: list, pos, config: FlashConfig, xp) -> list:
    return ops.rope_all_at(
        heads, pos, dims=config.rotary_dims, mode=config.rope, base=config.rope_base, xp=xp
    )


def _normed_step(params, x_t, state, config: FlashConfig, xp):
    """(h, h_in): Norm(x_t) (post-norm: x_t) and the same after the token shift (the previous
    token's first ceil(d/2) channels); (b, d) each."""
    h = layer_input(params, x_t, config, xp)
    if not config.token_shift:
        return h, h
    k = (config.dim + 1) // 2
    return h, xp.concat([state["prev"][..., :k], h[..., k:]], axis=-1)


def _flash_init(config: FlashConfig, batch: int, *, xp, dtype, device=None) -> dict:
    """An empty state for one causal FLASH layer: nothing seen yet, position 0."""
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


def _flash_step(params: dict, x_t, state: dict, *, config: FlashConfig, xp):
    """One token through one causal FLASH layer. x_t: (b, d) -> (out (b, d), new state): the
    FLASH core with explicit state at t = 1 (:func:`flashcore.layers.flash_core`), which equals
    row t of :func:`flashcore.flash` on the whole prefix (same formulas, summed in another order).
    """
    out, new_state = flash_core(params, x_t[:, None, :], state, config=config, xp=xp)
    return out[:, 0, :], new_state


def _gau_step(params: dict, x_t, state: dict, *, config: FlashConfig, xp):
    """One token through one causal GAU layer with a key/value cache (module docstring): a piece
    of one row of :func:`flashcore.layers.gau_core`."""
    out, state = gau_core(params, x_t[:, None, :], state, config=config, xp=xp)
    return out[:, 0, :], state


def _transformer_step(params: dict, x_t, state: dict, *, config: TransformerConfig, xp):
    """One token through one causal Transformer++ block with a key/value cache: a piece of one
    row of :func:`flashcore.lm.transformer_core`."""
    out, state = transformer_core(params, x_t[:, None, :], state, config=config, xp=xp)
    return out[:, 0, :], state


def _check_lm(config) -> None:
    if not isinstance(config, LMConfig):
        raise TypeError(f"config must be an LMConfig, got {type(config).__name__}")
    if decode_method(config) == "recompute":
        raise ValueError(
            f"an LM of {config.num_layers} GAU layers with length_mode={config.block.length_mode!r} "
            "cannot decode from a cache exactly: every layer divides by n = the sequence length, "
            "so earlier positions change as the sequence grows. Rerun the forward per token "
            "(flashcore.generation.recompute; flashcore generate does), or train with "
            "length_mode='prefix' or fixed_length"
        )


def lm_decode_init(
    config: LMConfig, batch: int, *, capacity: int | None = None, xp, dtype, device=None
) -> dict:
    """An empty state for a causal LM: ``{"layers.{i}": layer state}`` (``capacity``: see
    :func:`decode_init`)."""
    _check_lm(config)
    return {
        f"layers.{i}": decode_init(
            config.block, batch, capacity=capacity, xp=xp, dtype=dtype, device=device
        )
        for i in range(config.num_layers)
    }


def lm_decode_step(params: dict, tokens_t, state: dict, *, config: LMConfig, xp=None):
    """One token per row through the LM. tokens_t: (b,) ints -> (logits (b, v), new state)."""
    _check_lm(config)
    xp = namespace(tokens_t, xp=xp)
    x = embed_tokens(params, tokens_t, config, xp)  # (b, d), token type 0
    if config.abs_pos == "scaled_sinusoidal":
        pos = state["layers.0"]["pos"]
        cos, sin = ops.angles_at(pos, dims=config.dim, base=10000.0, xp=xp, like=x)  # (1, d/2)
        x = x + abs_positions(params, cos, sin, xp)
    x = embed_norm(params, x, config, xp)
    new_state = {}
    for i in range(config.num_layers):
        key = f"layers.{i}"
        x, new_state[key] = decode_step(
            subtree(params, key + "."), x, state[key], config=config.block, xp=xp
        )
    return head(params, final_norm(params, x, config, xp), config, xp), new_state
