"""The Transformer++ baseline block and the language model, as pure array-API functions.

    transformer_block(params, x, config=TransformerConfig, mask=None, segment_ids=None) -> (b, t, d)
    lm_logits(params, tokens, config=LMConfig, mask=None, segment_ids=None)            -> (b, t, v)
    lm_loss(params, inputs, targets, config=LMConfig, mask=None, segment_ids=None,
            loss_mask=None)                                                            -> ()

The LM functions also take ``token_type_ids`` (b, t) ints when ``LMConfig.type_vocab_size`` > 0
(None: type 0 everywhere).
The loss runs the head chunk by chunk (:mod:`flashcore.loss`); ``cross_entropy`` (re-exported
from there) takes logits that exist already.

Each also takes ``dropout``: None, or keep-masks (:mod:`flashcore.dropout`; an LM's are named
``layers.{i}.<site>``).

Letters: see :mod:`flashcore.ops`.
"""

from __future__ import annotations

import functools
import math

from . import dropout as drop
from . import kernels, kvcache, ops
from ._xp import namespace
from .checks import check_mask, check_tokens
from .config import FlashConfig, LMConfig, TransformerConfig
from .layers import causal_allowed, checked_call, flash, gau, positions
from .loss import counted, cross_entropy, head, linear_cross_entropy
from .params import subtree

__all__ = [
    "transformer_block",
    "transformer_core",
    "attention_core_softmax",
    "softmax_attend",
    "attn_heads",
    "attn_finish",
    "fused_softmax_allowed",
    "attn_qkv",
    "ffn",
    "block_fn",
    "lm_hidden",
    "head",
    "final_norm",
    "embed_tokens",
    "embed_norm",
    "abs_positions",
    "lm_logits",
    "lm_loss",
    "cross_entropy",
]


def transformer_block(
    params: dict,
    x,
    *,
    config: TransformerConfig,
    mask=None,
    segment_ids=None,
    xp=None,
    dropout=None,
    core=None,
):
    """Pre-norm multi-head softmax attention with RoPE, then a SwiGLU FFN. x: (b, t, d) -> (b, t, d).

    a = x + softmax(Q K^T / sqrt(d/n) + mask) V W_o with Q, K, V = split(norm(x) W_qkv);
    out = a + (silu(norm(a) W_gate) * norm(a) W_up) W_down. Outputs at padded positions are 0.
    dropout: None or keep-masks {"attn": (b, n, t, j), "attn_out": (b, t, d), "ffn_out":
    (b, t, d)} bool: the softmax probabilities, and each branch's output before its residual
    (scaled by 1 / (1 - p)). The attention core is the backend's ``Kernels.softmax`` where it
    takes the call (:mod:`flashcore.kernels`), else :func:`attention_core_softmax`. ``core``:
    deprecated, a function taken for every call instead.
    """
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
    xp, dropout = checked_call(config, None, x, mask, segment_ids, xp, dropout)
    q, k, v = attn_heads(params, x, config, xp)  # (b, n, t, hd) each
    pos = positions(x.shape[1], xp, x)
    q = ops.rope(q, pos, dims=config.head_dim, mode="half", base=config.rope_base, xp=xp)
    k = ops.rope(k, pos, dims=config.head_dim, mode="half", base=config.rope_base, xp=xp)
    attn_keep = None if dropout is None else dropout["attn"]
    call = kernels.Call(q, mask, segment_ids, attn_keep)
    fast = core or kernels.of(xp).core("softmax", config, call)
    o = (fast or attention_core_softmax)(
        q, k, v, config=config, mask=mask, segment_ids=segment_ids, attn_keep=attn_keep, xp=xp
    )  # (b, n, t, hd)
    x = attn_finish(params, x, o, config, xp, dropout=dropout)
    if mask is not None:
        x = xp.where(mask[..., None], x, xp.zeros_like(x))
    return x


def attn_heads(params: dict, x, config: TransformerConfig, xp):
    """Q, K, V of a Transformer++ block, per head and before RoPE: x (b, t, d) -> three
    (b, n, t, d / n)."""
    b, t, _ = x.shape
    d, n, hd = config.dim, config.heads, config.head_dim

    def heads(a):  # (b, t, d) -> (b, n, t, hd)
        return xp.permute_dims(xp.reshape(a, (b, t, n, hd)), (0, 2, 1, 3))

    return [heads(a) for a in ops.split(attn_qkv(params, x, config, xp), (d, d, d), xp)]


def attn_finish(params: dict, x, o, config: TransformerConfig, xp, dropout=None):
    """The rest of a Transformer++ block after its attention: x + O W_o, then the FFN
    (:func:`ffn`). x: (b, t, d); o: (b, n, t, d / n) -> (b, t, d). dropout: the block's checked
    keep-masks ("attn_out", "ffn_out") or None."""
    b, t, d = x.shape
    o = xp.reshape(xp.permute_dims(o, (0, 2, 1, 3)), (b, t, d))
    y = xp.matmul(o, params["attn.out.kernel"])  # (b, t, d)
    if dropout is not None:
        y = drop.apply_keep(y, dropout["attn_out"], config.dropout, xp)
    keep = None if dropout is None else dropout["ffn_out"]
    return ffn(params, x + y, config, xp, keep=keep)


def transformer_core(params: dict, x, cache=None, *, config: TransformerConfig, xp=None):
    """The Transformer++ block with explicit state, in :func:`flashcore.layers.flash_core`'s
    protocol: x (b, t, d), the positions that follow ``cache`` -> (out (b, t, d), the cache after
    x; None for ``cache=None``).

    cache None: the whole sequence (:func:`transformer_block` without mask, segments or
    dropout). Otherwise a key/value cache of :func:`flashcore.decode.decode_init` (causal): pos
    () int, the position of x[:, 0]; k, v (b, n, L, d / n), the rotated keys and the values of
    positions 0 .. pos - 1. The t queries attend to the cached keys and the piece's own, causally,
    with RoPE at global positions: row i equals row pos + i of :func:`transformer_block` on the
    whole sequence. Rows past the capacity L are NaN.
    """
    xp = namespace(x, xp=xp)
    if cache is None:
        return transformer_block(params, x, config=config, xp=xp), None
    pos, cap, t = cache["pos"], cache["k"].shape[2], x.shape[1]
    q, k, v = attn_heads(params, x, config, xp)  # (b, n, t, hd) each
    rope = dict(dims=config.head_dim, mode="half", base=config.rope_base, xp=xp)
    q, k = ops.rope_all_offset([q, k], pos, **rope)
    positions_, slots, allowed = kvcache.reads(pos, t, cap, xp)  # (t,), (L,), (t, L)
    k_buf = kvcache.write(cache["k"], 2, pos, k, slots, xp)  # (b, n, L, hd)
    v_buf = kvcache.write(cache["v"], 2, pos, v, slots, xp)
    o = softmax_attend(q, k_buf, v_buf, allowed[None, None], config, xp)  # (b, n, t, hd)
    out = kvcache.nan_when_full(attn_finish(params, x, o, config, xp), positions_, cap, xp)
    return out, {"pos": pos + t, "k": k_buf, "v": v_buf}


def attention_core_softmax(
    q, k, v, *, config: TransformerConfig, mask=None, segment_ids=None, attn_keep=None, xp=None
):
    """softmax(Q K^T / sqrt(hd) + mask) V per head, the Transformer++ attention core.

    q, k, v: (b, n, t, hd); mask: (b, t) bool, True at real keys; segment_ids: (b, t) ints (a
    query sees the keys of its own segment); causal per ``config.causal``; attn_keep: (b, n, t, j)
    bool dropout keep-mask of the probabilities (rate ``config.dropout``) or None -> (b, n, t, hd).
    A query row with no allowed key gets zeros.
    """
    xp = namespace(q, xp=xp)
    t = q.shape[2]
    allowed = causal_allowed(t, xp, q) if config.causal else None
    if mask is not None:
        key_ok = mask[:, None, None, :]
        allowed = key_ok if allowed is None else (allowed & key_ok)
    if segment_ids is not None:
        same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
        allowed = same if allowed is None else (allowed & same)
    return softmax_attend(q, k, v, allowed, config, xp, attn_keep=attn_keep)


def softmax_attend(q, k, v, allowed, config: TransformerConfig, xp, attn_keep=None):
    """softmax(Q K^T / sqrt(hd)) V per head over the ``allowed`` keys (a row with none: zeros).

    q: (b, n, t, hd); k, v: (b, n, j, hd); allowed: bool broadcastable to (b, n, t, j) or None;
    attn_keep: (b, n, t, j) bool dropout keep-mask or None -> (b, n, t, hd)."""
    b, n, t, hd = q.shape
    j = k.shape[2]
    fold = lambda a, rows: xp.reshape(a, (b * n, rows, hd))  # noqa: E731
    scores = xp.matmul(fold(q, t), xp.permute_dims(fold(k, j), (0, 2, 1)))  # (b * n, t, j)
    scores = xp.reshape(scores, (b, n, t, j)) / math.sqrt(hd)
    a = ops.masked_softmax(scores, allowed, xp)  # (b, n, t, j)
    if attn_keep is not None:
        a = drop.apply_keep(a, attn_keep, config.dropout, xp)
    o = xp.matmul(xp.reshape(a, (b * n, t, j)), fold(v, j))  # (b * n, t, hd)
    return xp.reshape(o, (b, n, t, hd))


def fused_softmax_allowed(
    config: TransformerConfig,
    q_pos,
    k_pos,
    mask=None,
    segment_ids=None,
    q_segment_ids=None,
    *,
    xp,
):
    """The boolean mask a fused softmax attention kernel gets in place of
    :func:`attention_core_softmax`'s: (b or 1, 1, r, j) bool, True where a query may see a key;
    or None when every key is allowed (not causal, no mask, no segments).

    q_pos: (r,) int array, the queries' positions; k_pos: (j,) those of the keys (a block of
    queries against the keys it needs); mask: (b, j) bool, True at real keys; segment_ids: (b, j)
    ints of the keys, q_segment_ids: (b, r) those of the queries (None: segment_ids, when the
    queries are the keys). Allowed: key position <= query position when causal, a real key, the
    same segment; and, with a mask, each query's own key as well. A real query sees itself
    already, so nothing changes for it; a padded query (whose output the block zeroes, so that
    nothing flows back from it) then has one key instead of possibly none. Fused kernels give an
    empty row NaN or the mean of every value where the spec gives zeros; with this mask no row of
    a real position is empty.
    """
    qp, kp = q_pos[:, None], k_pos[None, :]  # (r, 1), (1, j)
    allowed = (kp <= qp)[None, None] if config.causal else None  # (1, 1, r, j)
    if mask is not None:
        key_ok = mask[:, None, None, :]  # (b, 1, 1, j)
        allowed = key_ok if allowed is None else (allowed & key_ok)
    if segment_ids is not None:
        q_seg = segment_ids if q_segment_ids is None else q_segment_ids
        same = q_seg[:, None, :, None] == segment_ids[:, None, None, :]  # (b, 1, r, j)
        allowed = same if allowed is None else (allowed & same)
    if mask is not None:
        allowed = allowed | (kp == qp)[None, None]
    return allowed


def attn_qkv(params: dict, x, config: TransformerConfig, xp):
    """The attention input of a Transformer++ block: norm(x) W_qkv. x: (..., d) -> (..., 3d),
    [Q | K | V] with heads of width d / n side by side in each."""
    h = ops.norm(subtree(params, "attn_norm."), x, kind=config.norm, eps=config.norm_eps, xp=xp)
    return xp.matmul(h, params["attn.qkv.kernel"])


def ffn(params: dict, x, config: TransformerConfig, xp, keep=None):
    """The SwiGLU half of a Transformer++ block, residual included. x: (..., d) -> (..., d).

    keep: a bool keep-mask of x's shape for dropout on the branch output (None: no dropout)."""
    h = ops.norm(subtree(params, "ffn_norm."), x, kind=config.norm, eps=config.norm_eps, xp=xp)
    gate = ops.silu(xp.matmul(h, params["ffn.gate.kernel"]), xp)
    y = xp.matmul(gate * xp.matmul(h, params["ffn.up.kernel"]), params["ffn.down.kernel"])
    if keep is not None:
        y = drop.apply_keep(y, keep, config.dropout, xp)
    return x + y


def block_fn(config: FlashConfig | TransformerConfig):
    """The layer function for a block config: flash, gau or transformer_block."""
    if isinstance(config, TransformerConfig):
        return transformer_block
    return flash if config.kind == "flash" else gau


def lm_hidden(
    params: dict,
    tokens,
    *,
    config: LMConfig,
    mask=None,
    segment_ids=None,
    xp=None,
    core=None,
    attn_core=None,
    dropout=None,
    blocks=None,
    token_type_ids=None,
    remat=None,
):
    """Embedding (token, token type, positions, the embedding norm), the blocks and the final
    norm. tokens: (b, t) ints -> (b, t, d).

    The blocks take the backend's fast cores from its namespace (:mod:`flashcore.kernels`);
    ``core`` / ``attn_core``: deprecated, functions taken instead for every FLASH layer's
    mixed-chunk core / every Transformer++ block's softmax core.
    dropout: None or keep-masks ``layers.{i}.<site>`` (:func:`flashcore.dropout.dropout_shapes`).
    ``blocks``: None, or a backend's own block i as ``blocks[i](x, mask=, segment_ids=)`` ->
    (b, t, d), computing :func:`block_fn` with the weights ``layers.{i}.*`` (a fused layer that
    the backend tests against it); used for the calls without dropout masks.
    ``token_type_ids``: (b, t) ints in [0, ``config.type_vocab_size``) or None (type 0).
    ``remat``: None, or activation checkpointing as ``remat(fn, p, x)`` -> ``fn(p, x)`` with
    block i's activations recomputed in the backward pass instead of kept (``p``: the weights
    ``layers.{i}.*`` as a dict, passed so that the gradient reaches them; the backend's
    ``torch.utils.checkpoint`` / ``jax.checkpoint`` / ``tf.recompute_grad``). The value is the
    same with or without it.
    """
    if not isinstance(config, LMConfig):
        raise TypeError(f"config must be an LMConfig, got {type(config).__name__}")
    xp = kernels.override(namespace(tokens, xp=xp), flash=core, softmax=attn_core)
    b, t = check_tokens(tokens, config.vocab_size, xp)
    dropout = drop.check_dropout(dropout, config, b, t)
    x = embed_tokens(params, tokens, config, xp, token_type_ids=token_type_ids)  # (b, t, d)
    if config.abs_pos == "scaled_sinusoidal":
        pos = positions(t, xp, x)
        cos, sin = ops.angles(pos, dims=config.dim, base=10000.0, xp=xp, like=x)  # (t, d/2) each
        x = x + abs_positions(params, cos, sin, xp)
    x = embed_norm(params, x, config, xp)
    layer = block_fn(config.block)
    extra = {}
    for i in range(config.num_layers):
        if blocks is not None and dropout is None:  # the backend's module holds the weights
            run = functools.partial(_module_block, blocks[i], mask=mask, segment_ids=segment_ids)
        else:
            if dropout is not None:
                extra["dropout"] = subtree(dropout, f"layers.{i}.")
            run = functools.partial(
                layer, config=config.block, mask=mask, segment_ids=segment_ids, xp=xp, **extra
            )
        p = subtree(params, f"layers.{i}.")
        x = run(p, x) if remat is None else remat(run, p, x)  # (b, t, d)
    return final_norm(params, x, config, xp)


def _module_block(block, p: dict, x, *, mask, segment_ids):
    """A backend's block module (weights of its own; ``p`` unused) as ``fn(p, x)``.
    x: (b, t, d) -> (b, t, d)."""
    return block(x, mask=mask, segment_ids=segment_ids)


def embed_tokens(params: dict, tokens, config: LMConfig, xp, token_type_ids=None):
    """The token embedding plus, with ``config.type_vocab_size`` > 0, the token-type embedding
    (row 0 where ``token_type_ids`` is None). tokens: (...) ints -> (..., d)."""
    shape = tuple(tokens.shape)

    def rows(table, ids):
        return xp.reshape(xp.take(table, xp.reshape(ids, (-1,)), axis=0), (*shape, config.dim))

    x = rows(params["embed.weight"], tokens)
    if not config.type_vocab_size:
        if token_type_ids is not None:
            raise ValueError("token_type_ids were given but LMConfig.type_vocab_size is 0")
        return x
    types = params["type_embed.weight"]  # (n, d)
    if token_type_ids is None:
        return x + types[0, :]
    if tuple(token_type_ids.shape) != shape:
        raise ValueError(
            f"token_type_ids {tuple(token_type_ids.shape)} must have the tokens' shape {shape}"
        )
    if len(shape) == 2:
        try:
            check_tokens(token_type_ids, config.type_vocab_size, xp)
        except (ValueError, TypeError) as err:
            raise type(err)(f"token_type_ids: {err}") from None
    return x + rows(types, token_type_ids)


def _lm_norm(params: dict, x, config: LMConfig, prefix: str, kind: str, xp):
    """An LM-level norm (weights ``prefix*``) of type ``kind`` with the block's eps, eps mode
    and affinity. x: (..., d) -> (..., d)."""
    block = config.block
    return ops.norm(
        subtree(params, prefix),
        x,
        kind=kind,
        eps=block.norm_eps,
        eps_mode=getattr(block, "norm_eps_mode", "add"),
        affine=getattr(block, "norm_affine", True),
        xp=xp,
    )


def embed_norm(params: dict, x, config: LMConfig, xp):
    """The norm on the embedding (``embed_norm.*``; x unchanged for ``embed_norm='none'``).
    x: (..., d) -> (..., d)."""
    return _lm_norm(params, x, config, "embed_norm.", config.embed_norm, xp)


def abs_positions(params: dict, cos, sin, xp):
    """flash-pytorch's scaled sinusoidal positions: [sin | cos] * abs_pos.scale.

    cos, sin: (..., d/2) of p * 10000^(-2i/d) -> (..., d)."""
    return xp.concat([sin, cos], axis=-1) * params["abs_pos.scale"]


def final_norm(params: dict, h, config: LMConfig, xp):
    """The LM's final norm (``final_norm.*``; h unchanged for ``final_norm='none'``).
    h: (..., d) -> (..., d)."""
    return _lm_norm(params, h, config, "final_norm.", config.final_norm_kind, xp)


def lm_logits(
    params: dict,
    tokens,
    *,
    config: LMConfig,
    mask=None,
    segment_ids=None,
    xp=None,
    core=None,
    attn_core=None,
    dropout=None,
    blocks=None,
    token_type_ids=None,
    remat=None,
):
    """Next-token logits (a bidirectional LM: the masked-LM head's). tokens: (b, t) ints
    -> (b, t, v). dropout, blocks, token_type_ids, remat: as :func:`lm_hidden`."""
    xp = namespace(tokens, xp=xp)
    h = lm_hidden(
        params,
        tokens,
        config=config,
        mask=mask,
        segment_ids=segment_ids,
        xp=xp,
        core=core,
        attn_core=attn_core,
        dropout=dropout,
        blocks=blocks,
        token_type_ids=token_type_ids,
        remat=remat,
    )
    return head(params, h, config, xp)


def lm_loss(
    params: dict,
    inputs,
    targets,
    *,
    config: LMConfig,
    mask=None,
    segment_ids=None,
    xp=None,
    core=None,
    attn_core=None,
    dropout=None,
    loss_mask=None,
    blocks=None,
    token_type_ids=None,
    loss_core=None,
    remat=None,
):
    """Mean cross-entropy (nats) of ``targets`` given ``inputs``; both (b, t) ints.

    For next-token prediction, targets are inputs shifted by one and the block must be causal (a
    bidirectional block sees its targets; use that only for masked-token objectives).
    ``mask`` marks real positions of ``inputs``; the loss counts only those. ``loss_mask``:
    (b, t) bool or None, the positions to count among those (e.g. the masked-LM objective's
    chosen positions, :mod:`flashcore.mlm`); attention still sees every real position.
    dropout, blocks, token_type_ids, remat: as :func:`lm_hidden`. The head and the
    cross-entropy run over chunks of tokens (:func:`flashcore.loss.linear_cross_entropy`): the
    (b, t, v) logits are never built whole. ``loss_core``: the backend's chunk loop and gradient
    (:data:`flashcore.loss.LossCore`; None: the spec's loop).
    """
    xp = namespace(inputs, xp=xp)
    b, t = check_tokens(targets, config.vocab_size, xp)
    if tuple(inputs.shape) != (b, t):
        raise ValueError(f"inputs {tuple(inputs.shape)} and targets {(b, t)} must have one shape")
    check_mask(loss_mask, b, t)
    h = lm_hidden(
        params,
        inputs,
        config=config,
        mask=mask,
        segment_ids=segment_ids,
        xp=xp,
        core=core,
        attn_core=attn_core,
        dropout=dropout,
        blocks=blocks,
        token_type_ids=token_type_ids,
        remat=remat,
    )  # (b, t, d)
    return linear_cross_entropy(
        params, h, targets, counted(mask, loss_mask), config=config, xp=xp, core=loss_core
    )
