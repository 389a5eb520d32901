"""The GAU (FLASH-Quad) and FLASH (mixed-chunk) layers as pure array-API functions.

    gau(params, x, config=..., mask=None, segment_ids=None, xp=None, dropout=None)   -> (b, t, d)
    flash(params, x, config=..., mask=None, segment_ids=None, xp=None, dropout=None) -> (b, t, d)

x: (b, t, d) floating. mask: (b, t) bool, True at real positions (any pattern). segment_ids:
(b, t) ints, each id one contiguous run (packed sequences). A padded or foreign-segment key never
reaches a query in either branch; outputs at padded positions are 0. In float16 / bfloat16 the
attention core (scores, relu^2, the linear state) runs in float32. A NaN / Inf input reaches only
the outputs that depend on it (:mod:`flashcore.nonfinite`); the core only ever sees finite values.
dropout: None, or keep-masks {"attn", "out"} (:mod:`flashcore.dropout`; drawn by the caller).

Letters: see :mod:`flashcore.ops`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import dropout as drop
from . import kernels, kvcache, nonfinite, ops
from ._xp import const, device_of, iota, is_low_precision, is_static, namespace, size_as
from .checks import check_mask, check_segments, check_x
from .config import FlashConfig
from .params import subtree

__all__ = [
    "gau",
    "gau_math",
    "flash",
    "project",
    "normed_input",
    "layer_input",
    "hidden",
    "attention_core_flash",
    "attention_core_gau",
    "gau_core",
    "gau_divisor",
    "gau_attend",
    "flash_core",
    "summary",
    "checked_call",
    "core_dtype",
    "in_dtype",
    "causal_mask",
    "causal_allowed",
    "FUSED_CORE_FIELDS",
    "FUSED_CORE_LINEAR_NORMS",
    "fused_core_unsupported",
    "fused_gau_unsupported",
]

# -- what the backends' fused attention cores cover (the one table they and the tests read) -----

#: FlashConfig fields whose meaning for the attention core the fused cores account for. Fields
#: that only act outside the core (norms, RoPE, the bias table, token shift, dropout, ...) are
#: listed too; the core-relevant ones are kind, chunk_size, causal, attention, linear_norm,
#: length_mode and bias_before_scale. A field not listed makes every fused core decline, so that
#: a new spec option is never silently ignored by a kernel.
FUSED_CORE_FIELDS = frozenset(
    {
        "dim", "kind", "expansion", "qk_dim", "chunk_size", "causal", "attention", "rope",
        "rope_dims", "rope_base", "rel_bias", "max_len", "t5_buckets", "t5_max_distance",
        "bias_scale", "norm", "norm_eps", "norm_eps_mode", "linear_norm", "fixed_length",
        "length_mode", "bias_before_scale", "token_shift", "dropout", "norm_position",
        "norm_affine", "use_bias", "init",
    }
)  # fmt: skip

#: The linear_norm values each fused core implements ('triton' and 'torch': flashcore.torch's
#: kernels; 'pallas': flashcore.jax's). Every one: kind='flash', attention='relu2', any relative
#: bias (before or after the 1/C scale), causal or not, a key mask, no segment ids, no dropout
#: keep-mask of the attention weights.
FUSED_CORE_LINEAR_NORMS = {
    "triton": ("sum", "mean", "length"),
    "torch": ("sum", "mean", "length"),
    "pallas": ("sum",),
}


def fused_core_unsupported(core: str, config, *, segment_ids=None, attn_keep=None) -> str | None:
    """None when the fused core ``core`` (a key of :data:`FUSED_CORE_LINEAR_NORMS`) implements
    :func:`attention_core_flash` for ``config`` with these arguments, else why not.

    segment_ids: (b, t) ints or None; attn_keep: (b, g, c, k) bool dropout keep-mask or None."""
    reason = _fused_common(config, "flash", attn_keep)
    if reason is not None:
        return reason
    norms = FUSED_CORE_LINEAR_NORMS[core]
    if config.linear_norm not in norms:
        return f"linear_norm={config.linear_norm!r} (the {core} core covers {list(norms)})"
    if segment_ids is not None:
        return "segment_ids (packed sequences) are not fused"
    return None


def _fused_common(config, kind: str, attn_keep) -> str | None:
    """What every fused core needs: no attention dropout mask, no FlashConfig field new to the
    table, this layer kind, relu2 attention; None, or why not."""
    if attn_keep is not None:
        return "dropout on the attention weights (attn_keep) is not fused"
    if dataclasses.is_dataclass(config):
        unknown = sorted({f.name for f in dataclasses.fields(config)} - FUSED_CORE_FIELDS)
        if unknown:
            return f"FlashConfig fields {unknown} are new to the fused cores"
    if getattr(config, "kind", None) != kind:
        return f"config.kind must be {kind!r}, got {getattr(config, 'kind', None)!r}"
    if config.attention != "relu2":
        return f"attention={config.attention!r} (only 'relu2' is fused)"
    return None


def fused_gau_unsupported(config, *, masked: bool, segment_ids=None, attn_keep=None) -> str | None:
    """None when a fused GAU core (one that computes relu(Q K^T / t + B)^2 V, causal or not, with
    masked keys zeroed) implements :func:`attention_core_gau` for this call, else why not.

    The scale must be 1 / t for every query: no ``fixed_length``, no ``length_mode='prefix'``,
    and with a key mask (``masked``) only ``length_mode='array'`` (with 'real' n is each row's
    number of real keys). segment_ids: (b, t) ints or None; attn_keep: dropout keep-mask or None.
    """
    reason = _fused_common(config, "gau", attn_keep)
    if reason is not None:
        return reason
    if config.fixed_length is not None:
        return "fixed_length (a scale other than 1 / t) is not fused"
    if config.length_mode == "prefix":
        return "length_mode='prefix' (a scale per query) is not fused"
    if masked and config.length_mode != "array":
        return "a key mask with length_mode='real' (a scale per row) is not fused"
    if segment_ids is not None:
        return "segment_ids (packed sequences) are not fused"
    return None


def checked_call(config, kind: str | None, x, mask, segment_ids, xp, dropout):
    """Every check of a layer or block call, made once before its math: the config (a
    FlashConfig of ``kind``; None: any config), x (b, t, d) floating, mask, segment_ids and the
    dropout keep-masks. -> (xp: the namespace, dropout: the checked keep-masks or None)."""
    if kind is not None:
        if not isinstance(config, FlashConfig):
            raise TypeError(f"config must be a FlashConfig, got {type(config).__name__}")
        if config.kind != kind:
            raise ValueError(f"this is the {kind} layer but FlashConfig.kind={config.kind!r}")
    xp = namespace(x, xp=xp)
    b, t = check_x(x, config.dim)
    check_mask(mask, b, t)
    check_segments(segment_ids, b, t, xp)
    return xp, drop.check_dropout(dropout, config, b, t)


def core_dtype(x, xp, v=None):
    """The dtype the attention cores compute in (the low-precision policy): float32 for a
    float16 / bfloat16 layer, else ``v``'s where given (under torch autocast: the autocast dtype
    of the projections), x's otherwise."""
    if is_low_precision(x.dtype):
        return xp.float32
    return x.dtype if v is None else v.dtype


def in_dtype(xp, dtype, *arrays) -> list:
    """``arrays`` in ``dtype`` (no copy where they are already)."""
    return [xp.astype(a, dtype, copy=False) for a in arrays]


def _same_segment(seg_q, seg_k):
    """(…, t) and (…, j) ints -> (…, t, j) bool."""
    return seg_q[..., :, None] == seg_k[..., None, :]


def _and(*masks):
    """Logical and of bool masks, skipping None; None when all are None."""
    out = None
    for m in masks:
        if m is not None:
            out = m if out is None else (out & m)
    return out


def layer_norm(params: dict, x, config: FlashConfig, xp):
    """The layer's norm (``norm.*`` weights, none when ``norm_affine`` is False): of the input
    (``norm_position='pre'``) or of the residual sum (``'post'``). x: (..., d) -> (..., d)."""
    return ops.norm(
        subtree(params, "norm."),
        x,
        kind=config.norm,
        eps=config.norm_eps,
        eps_mode=config.norm_eps_mode,
        affine=config.norm_affine,
        xp=xp,
    )


def layer_input(params: dict, x, config: FlashConfig, xp):
    """What the layer's projections read: Norm(x) (pre-norm) or x itself (post-norm).
    x: (..., d) -> (..., d)."""
    return layer_norm(params, x, config, xp) if config.norm_position == "pre" else x


def scores_to_logits(scores, bias, scale, config: FlashConfig):
    """Scale Q K^T (by 1/n, 1/C or 1/sqrt(s)) and add the relative bias, before or after the
    scaling as ``config.bias_before_scale`` says. scale: a number or an array broadcastable
    to ``scores``."""
    if bias is None:
        return scores * scale
    if config.bias_before_scale:
        return (scores + bias) * scale
    return scores * scale + bias


def normed_input(
    params: dict, x, config: FlashConfig, mask, segment_ids, xp, prev=None, normed=None
):
    """h = Norm(x) (post-norm: x, see :func:`layer_input`), then the optional token shift.
    x: (b, t, d) -> (b, t, d).

    prev: (b, d), :func:`layer_input` of the row before x[:, 0] (a carried state's ``prev``,
    zero where that row may not be read), or None: position 0 reads nothing. normed: (b, t, d),
    :func:`layer_input` of x where the caller has it already, or None.
    """
    h = layer_input(params, x, config, xp) if normed is None else normed
    if not config.token_shift:
        return h
    keep = None  # (b, t): may position t read position t - 1?
    if mask is not None or segment_ids is not None:
        prev_real = mask[:, :-1] if mask is not None else None
        prev_same = None
        if segment_ids is not None:
            prev_same = segment_ids[:, 1:] == segment_ids[:, :-1]
        rest = _and(prev_real, prev_same)
        first = (xp.zeros if prev is None else xp.ones)(
            (x.shape[0], 1), dtype=xp.bool, device=device_of(x)
        )
        keep = xp.concat([first, rest], axis=1)
    return ops.token_shift(h, keep, xp, prev=None if prev is None else prev[:, None, :])


def hidden(params: dict, h, config: FlashConfig, xp):
    """[U | V | Z] = SiLU(h W + b), then scale-offset of Z (no RoPE yet); no b and no offset
    beta when ``config.use_bias`` is False.

    h: (..., d) -> u, v: (..., e); heads: list of h arrays (..., s).
    """
    e, s = config.expanded_dim, config.qk_dim
    uvz = ops.silu(
        ops.dense(h, params["hidden.kernel"], params.get("hidden.bias"), xp), xp
    )  # (…, 2e+s)
    u, v, z = ops.split(uvz, (e, e, s), xp)
    return u, v, ops.scale_offset(z, params["qk.gamma"], params.get("qk.beta"))


def project(
    params: dict,
    x,
    config: FlashConfig,
    mask,
    segment_ids,
    xp,
    position_offset=0,
    prev=None,
    normed=None,
):
    """Norm, optional token shift, the fused dense layer, SiLU, scale-offset and RoPE.

    x: (b, t, d) -> u, v: (b, t, e); heads: list of h arrays (b, t, s). x may be one piece of a
    longer sequence, at positions ``position_offset + arange(t)`` (an int, or an integer array
    of shape () that may be traced); ``prev``, ``normed``: see :func:`normed_input`.
    """
    h = normed_input(params, x, config, mask, segment_ids, xp, prev=prev, normed=normed)
    u, v, heads = hidden(params, h, config, xp)
    rope = dict(dims=config.rotary_dims, mode=config.rope, base=config.rope_base, xp=xp)
    if isinstance(position_offset, int):
        heads = [ops.rope(q, positions(x.shape[1], xp, x, position_offset), **rope) for q in heads]
    else:
        heads = ops.rope_all_offset(heads, position_offset, **rope)
    return u, v, heads


def causal_mask(n: int) -> np.ndarray:
    """(n, n) bool, True where key j <= query t (the diagonal included)."""
    return np.tril(np.ones((n, n), bool))


def positions(t, xp, like, offset: int = 0):
    """The positions offset .. offset + t - 1: (t,) NumPy int64 on the host for a static ``t``
    (the exact float64 RoPE tables, :func:`flashcore.ops.rope`), an in-graph ``xp`` array for a
    symbolic one (a deployment export at a dynamic length)."""
    if is_static(t):
        return np.arange(offset, offset + t, dtype=np.int64)
    return iota(xp, t, like) + offset


def causal_allowed(t, xp, like):
    """:func:`causal_mask` (t, t) as an ``xp`` bool array on ``like``'s device; built in the graph
    when ``t`` is symbolic."""
    if is_static(t):
        return const(xp, causal_mask(t), like=like)
    i = iota(xp, t, like)
    return i[None, :] <= i[:, None]


def finish(params, x, u, att, mask, config: FlashConfig, xp, keep=None):
    """out = (U * att) W_o + b_o + x (post-norm: Norm of that), zero at padded positions.
    att: (b, t, e) -> (b, t, d).

    keep: (b, t, d) bool or None, the dropout keep-mask of the output before the residual (rate
    ``config.dropout``).
    """
    y = ops.dense(
        u * xp.astype(att, u.dtype, copy=False), params["out.kernel"], params.get("out.bias"), xp
    )
    if keep is not None:
        y = drop.apply_keep(y, keep, config.dropout, xp)
    out = y + x
    if config.norm_position == "post":
        out = layer_norm(params, out, config, xp)
    if mask is not None:
        out = xp.where(mask[..., None], out, xp.zeros_like(out))
    return out


def gau(
    params: dict, x, *, config: FlashConfig, mask=None, segment_ids=None, xp=None, dropout=None
):
    """Gated attention unit (FLASH-Quad). x: (b, t, d) -> (b, t, d).

    A = f(Q K^T / n + B) over all t x j pairs (lower triangle if causal), n = the number of real
    keys in the query's segment (``length_mode``: or the array's t, or the keys up to the query;
    or ``config.fixed_length``); softmax_plus uses Q K^T / sqrt(s).
    out = (U * (A V)) W_o + b_o + x. dropout: None or keep-masks {"attn": (b, t, j), "out":
    (b, t, d)} bool, applied to A and to the output before the residual (scaled by 1 / (1 - p)).
    """
    xp, dropout = checked_call(config, "gau", x, mask, segment_ids, xp, dropout)
    x, bad = nonfinite.contain(x, xp)  # bad: (b, t) rows that held NaN / Inf, now 0
    out = gau_math(params, x, config, mask, segment_ids, xp, dropout)
    return nonfinite.poison_reached(out, bad, mask, segment_ids, causal=config.causal, xp=xp)


def gau_math(params: dict, x, config: FlashConfig, mask, segment_ids, xp, dropout):
    """:func:`gau` on checked, finite input: the formulas and nothing else. x: (b, t, d) ->
    (b, t, d)."""
    t = x.shape[1]
    u, v, (q, k) = project(params, x, config, mask, segment_ids, xp)
    q, k, v = in_dtype(xp, core_dtype(x, xp), q, k, v)
    pos = positions(t, xp, q)
    bias = ops.rel_bias(params.get("rel_bias.weight"), pos, pos, config=config, xp=xp, like=q)
    attn_keep = None if dropout is None else dropout["attn"]
    call = kernels.Call(v, mask, segment_ids, attn_keep)
    core = kernels.of(xp).core("gau", config, call) or attention_core_gau  # a backend's, or ours
    att = core(
        q, k, v, bias=bias, config=config, mask=mask, segment_ids=segment_ids, xp=xp,
        attn_keep=attn_keep,
    )  # fmt: skip
    out_keep = None if dropout is None else dropout["out"]
    return finish(params, x, u, att, mask, config, xp, keep=out_keep)


def attention_core_gau(
    q, k, v, *, bias, config: FlashConfig, mask=None, segment_ids=None, xp=None, attn_keep=None
):
    """GAU's quadratic attention after the projections and RoPE: A V with A = f(Q K^T / n + B).

    q, k: (b, t, s); v: (b, t, e), all in the accumulation dtype (float32 for float16 /
    bfloat16 layers); bias: (t, t) or None; mask, segment_ids: (b, t) or None; attn_keep:
    (b, t, j) bool dropout keep-mask or None. Returns (b, t, e). This is the piece a backend's
    fused core replaces (``Kernels.gau``, same signature); it is that core's oracle.
    """
    xp = namespace(v, xp=xp)
    b, t, _ = v.shape
    if mask is not None:
        k = xp.where(mask[..., None], k, xp.zeros_like(k))
        v = xp.where(mask[..., None], v, xp.zeros_like(v))
    causal = causal_allowed(t, xp, v) if config.causal else None
    key_ok = mask[:, None, :] if mask is not None else None  # (b, 1, j)
    same = _same_segment(segment_ids, segment_ids) if segment_ids is not None else None
    member = _and(key_ok, same)  # keys that count towards n
    if config.length_mode == "prefix":  # the keys the query attends to (causal)
        counted = _and(causal, member)
    else:  # 'real': the query's real keys; 'array': t
        counted = None if config.length_mode == "array" else member
    seen = None  # the keys that count, per query
    if counted is not None and config.fixed_length is None:
        seen = xp.sum(
            xp.astype(xp.broadcast_to(counted, (b, t, t)), v.dtype), axis=-1, keepdims=True
        )
    n = gau_divisor(config, seen, t, v, xp)
    scores = xp.matmul(q, xp.permute_dims(k, (0, 2, 1)))  # (b, t, j)
    return gau_attend(scores, v, bias, _and(causal, member), n, config, xp, attn_keep=attn_keep)


def gau_divisor(config: FlashConfig, seen, j, like, xp):
    """GAU's n (Q K^T / n; softmax_plus: its log n): ``config.fixed_length``, else per query the
    number of keys that count (``seen``, at least 1), or all j keys where ``seen`` is None.

    seen: (..., t, 1) in ``like``'s dtype (the core's), or None -> a number or (..., t, 1)."""
    if config.fixed_length is not None:
        return float(config.fixed_length)
    if seen is None:
        return size_as(xp, j, like)
    return xp.maximum(seen, xp.ones_like(seen))


def gau_attend(scores, v, bias, allowed, n, config: FlashConfig, xp, attn_keep=None):
    """A V with A = f(Q K^T / n + B) (``config.attention``; the bias before or after the scale).

    scores: Q K^T (b, t, j); v: (b, j, e); bias: (t, j) or None; allowed: bool broadcastable
    to (b, t, j) or None (disallowed weights are exactly 0); n: :func:`gau_divisor`'s; attn_keep:
    (b, t, j) bool dropout keep-mask or None -> (b, t, e)."""
    scale = ops.attention_scale(config.attention, n, config.qk_dim)
    scores = scores_to_logits(scores, bias, scale, config)
    a = ops.attend(scores, allowed, kind=config.attention, length=n, xp=xp)
    if attn_keep is not None:
        a = drop.apply_keep(a, attn_keep, config.dropout, xp)
    return xp.matmul(a, v)  # (b, t, e)


def gau_core(params: dict, x, cache=None, *, config: FlashConfig, xp=None):
    """The GAU layer with explicit state, in :func:`flash_core`'s protocol: x (b, t, d), the
    positions that follow ``cache`` -> (out (b, t, d), the cache after x; None for ``cache=None``).

    cache None: the whole sequence (:func:`gau` without mask, segments or dropout). Otherwise a
    key/value cache of :func:`flashcore.decode.decode_init` (causal GAU): pos () int, the position
    of x[:, 0]; k (b, L, s) the rotated keys and v (b, L, e) of positions 0 .. pos - 1 (the core's
    dtype); prev (b, d) the normed row before x[:, 0] (token shift). Row i is the last row of
    :func:`gau` on the prefix 0 .. pos + i: its query attends to the cached keys and the piece's
    own up to it, with the relative bias and RoPE at global positions, and n = ``fixed_length``
    or the keys up to the query (``length_mode='prefix'``; for a single layer whatever the mode,
    the prefix being the whole sequence of its last row). Rows past the capacity L are NaN. A
    NaN / Inf row of x makes its own and every later row NaN, in this piece and the next.
    """
    xp = namespace(x, xp=xp)
    if cache is None:
        x, bad = nonfinite.contain(x, xp)
        out = gau_math(params, x, config, None, None, xp, None)
        return nonfinite.poison_reached(out, bad, None, None, causal=config.causal, xp=xp), None
    pos, acc = cache["pos"], cache["k"].dtype
    t, cap = x.shape[1], cache["k"].shape[1]
    bad = None
    if t > 1:  # one row alone needs no containment: NaN there reaches what NaN reaches
        x, bad = nonfinite.contain(x, xp)
    h = layer_input(params, x, config, xp)  # (b, t, d); its last row is the next piece's prev
    h_in = ops.token_shift(h, None, xp, prev=cache["prev"][:, None, :]) if config.token_shift else h
    u, v, heads = hidden(params, h_in, config, xp)
    rope = dict(dims=config.rotary_dims, mode=config.rope, base=config.rope_base, xp=xp)
    q, k, v = in_dtype(xp, acc, *ops.rope_all_offset(heads, pos, **rope), v)
    positions, slots, allowed = kvcache.reads(pos, t, cap, xp)  # (t,), (L,), (t, L)
    k_buf = kvcache.write(cache["k"], 1, pos, k, slots, xp)  # (b, L, s)
    v_buf = kvcache.write(cache["v"], 1, pos, v, slots, xp)  # (b, L, e)
    bias = _cache_bias(params.get("rel_bias.weight"), positions, slots, config, xp, like=q)
    seen = xp.reshape(xp.astype(positions + 1, acc), (1, t, 1))  # the keys up to each query
    n = gau_divisor(config, seen, cap, q, xp)
    # Q K^T as (K Q^T)^T: the cache is read in its own layout (a transposed cache operand is a
    # copy of the whole cache per step under XLA); the transpose is of the small (b, L, t).
    scores = xp.permute_dims(xp.matmul(k_buf, xp.permute_dims(q, (0, 2, 1))), (0, 2, 1))
    att = gau_attend(scores, v_buf, bias, allowed[None], n, config, xp)  # (b, t, e)
    out = finish(params, x, u, att, None, config, xp)
    if bad is not None:  # later pieces read NaN values from the bad rows' slots
        out = nonfinite.poison_reached(out, bad, None, None, causal=True, xp=xp)
        nan = const(xp, np.full((1, 1, 1), np.nan), like=v)
        v_buf = kvcache.write(cache["v"], 1, pos, xp.where(bad[..., None], nan, v), slots, xp)
    out = kvcache.nan_when_full(out, positions, cap, xp)
    return out, {"pos": pos + t, "k": k_buf, "v": v_buf, "prev": h[:, -1, :]}


def _cache_bias(w, positions, slots, config: FlashConfig, xp, like):
    """The relative bias of queries at ``positions`` (t,) over cache slots (L,) -> (t, L) or None:
    the bias column of offsets 0 .. L - 1 before the query (:func:`flashcore.ops.rel_bias` on the
    host), gathered by each pair's traced offset (future slots, masked anyway, read offset 0; a
    full cache's last one)."""
    cap = slots.shape[0]
    column = ops.rel_bias(w, np.arange(cap), np.zeros(1, np.int64), config=config, xp=xp, like=like)
    if column is None:
        return None
    dist = positions[:, None] - slots[None, :]  # (t, L): key dist positions before the query
    dist = xp.where(dist < 0, xp.zeros_like(dist), dist)
    dist = xp.where(dist > cap - 1, xp.zeros_like(dist) + (cap - 1), dist)
    t = positions.shape[0]
    return xp.reshape(xp.take(column[:, 0], xp.reshape(dist, (t * cap,)), axis=0), (t, cap))


def _pad_chunks(a, pad: int, g: int, c: int, xp, fill=None):
    """(b, t, ...) -> (b, g, c, ...), right-padded along t by ``pad`` (zeros or ``fill``; a
    symbolic ``pad`` may be 0)."""
    if not is_static(pad) or pad:
        rows = pad if is_static(pad) else c  # a symbolic pad: C rows cut to pad (0 <= pad < C)
        tail_shape = (a.shape[0], rows, *a.shape[2:])
        if fill is None:
            tail = xp.zeros(tail_shape, dtype=a.dtype, device=device_of(a))
        else:
            tail = xp.broadcast_to(fill, tail_shape)
        a = xp.concat([a, tail if is_static(pad) else tail[:, :pad, ...]], axis=1)
    return xp.reshape(a, (a.shape[0], g, c, *a.shape[2:]))


def flash(
    params: dict,
    x,
    *,
    config: FlashConfig,
    mask=None,
    segment_ids=None,
    xp=None,
    core=None,
    dropout=None,
):
    """Mixed-chunk attention (FLASH). x: (b, t, d) -> (b, t, d).

    Right-pad t to g = ceil(t / C) chunks; quad = local relu^2 attention per chunk; lin = the
    linear attention across chunks; out = (U * (quad + lin)) W_o + b_o + x. The whole sequence
    is one call of :func:`flash_core` with no carried state.

    The mixed-chunk core is the backend's ``Kernels.flash`` where it takes the call
    (:mod:`flashcore.kernels`), else :func:`attention_core_flash`. ``core``: deprecated, a
    function taken for every call instead (:func:`flashcore.kernels.override`). dropout: None or keep-masks {"attn":
    (b, g, c, k), "out": (b, t, d)} bool, applied to the local quadratic weights of each chunk
    and to the output before the residual (scaled by 1 / (1 - p)); the core then receives
    ``attn_keep=`` (a core that cannot apply it must hand the call to the spec's core).
    """
    xp, dropout = checked_call(config, "flash", x, mask, segment_ids, xp, dropout)
    xp = kernels.override(xp, flash=core)
    out, _ = flash_core(
        params, x, None, config=config, mask=mask, segment_ids=segment_ids, xp=xp, dropout=dropout
    )
    return out


def flash_core(
    params: dict,
    x,
    state=None,
    *,
    config: FlashConfig,
    mask=None,
    segment_ids=None,
    xp=None,
    dropout=None,
):
    """The one FLASH core with explicit state: x (b, t, d), the positions that follow ``state``
    -> (out (b, t, d), the state after x, or None when ``state`` is None).

    Like fla's ops (``initial_state`` in, the final state out), one function serves the whole
    sequence (``state=None``), streamed prefill (:mod:`flashcore.stream`: each piece continues
    the state the previous one returned), context parallelism (:mod:`flashcore.context_parallel`:
    a shard's initial state is the gathered prefix of the shards before it) and decoding
    (:func:`flashcore.decode.decode_step` is this function at t = 1). No input checks here
    (:func:`flash` makes them); dropout: checked keep-masks or None.

    state: None, or a dict with
        pos    ()        int    global position of x[:, 0] (context parallelism: a multiple of C)
        prev   (b, d)           layer_input of the row before x[:, 0] (zero where it may not be
                                read), for the token shift
    and the carried linear-attention state, either
        lin    (b, s, e)        the sum of the chunk states K^T V / C so far (NaN: a NaN / Inf row
                                was read), count (b,): the chunks so far with a real key, and
                                the partial chunk at pos: pending, qk, v (a decoding state,
                                :func:`flashcore.decode.decode_init`'s layout), or
        gather own -> carried   (context parallelism) this piece's own summary (:func:`summary`)
                                -> the carried state of :func:`attention_core_flash` plus "bad"
                                (b,) bool, and "after" likewise (non-causal).

    A decoding state may stop mid-chunk (p = pos mod C > 0): x's first min(C - p, t) positions
    complete that chunk (:func:`_continue_chunk`: local attention to the chunk's buffered keys and
    their own, h x C scores), the rest starts at a chunk boundary. One position (t = 1, a decoding
    step) always goes that way, with ``pos`` concrete or traced (under jit); a longer piece needs
    a concrete ``pos``, or one that is a multiple of C (a traced ``pos`` that is not gives NaN
    outputs: it cannot be checked in Python), and no mask, segment ids or dropout when it starts
    mid-chunk. The returned state continues at pos + t, its last, partial chunk held in pending,
    qk and v.
    """
    xp = namespace(x, xp=xp)
    decoding = state is not None and "gather" not in state
    t = x.shape[1]
    if decoding and is_static(t) and t == 1:
        bad = None  # one row: its NaN flows into its output and the state, as in the forward
    else:
        x, bad = nonfinite.contain(x, xp)  # bad: (b, t) rows that held NaN / Inf, now 0
    pos, prev = (0, None) if state is None else (state["pos"], state.get("prev"))
    normed = layer_input(params, x, config, xp) if decoding else None
    u, v, heads = project(
        params,
        x,
        config,
        mask,
        segment_ids,
        xp,
        position_offset=pos,
        prev=prev if config.token_shift else None,
        normed=normed,
    )
    heads = in_dtype(xp, core_dtype(x, xp, v), *heads, v)  # qq, qk, lq, lk, v
    chunk_pos = np.arange(config.chunk_size)
    bias = ops.rel_bias(
        params.get("rel_bias.weight"), chunk_pos, chunk_pos, config=config, xp=xp, like=heads[-1]
    )
    args = dict(bias=bias, config=config, mask=mask, segment_ids=segment_ids, xp=xp)
    attn_keep = None if dropout is None else dropout["attn"]
    reads = new_state = None  # reads: (b, t) positions that read a poisoned carried state
    if decoding:
        att, new_state, reads = _decoding_core(heads, bad, normed, state, args, attn_keep)
    else:
        call = kernels.Call(heads[-1], mask, segment_ids, attn_keep)
        core = kernels.of(xp).core("flash", config, call)
        if state is None:
            kw = {} if attn_keep is None else {"attn_keep": attn_keep}
            att = (core or attention_core_flash)(*heads, **args, **kw)
        else:
            lk, v = heads[3], heads[4]
            own = summary(lk, v, bad, config=config, mask=mask, segment_ids=segment_ids, xp=xp)
            carried = state["gather"](own)
            att = _core_with_state(core, *heads, args, carried, attn_keep)
            for part in (carried, carried.get("after")):
                if part is not None:
                    read = _reads(part, segment_ids, xp)
                    reads = read if reads is None else reads | read
    out_keep = None if dropout is None else dropout["out"]
    out = finish(params, x, u, att, mask, config, xp, keep=out_keep)
    if bad is not None:
        causal = config.causal
        out = nonfinite.poison_reached(
            out, bad, mask, segment_ids, causal=causal, xp=xp, reads=reads
        )
    return out, new_state


def _decoding_core(heads: list, bad, normed, state: dict, args: dict, attn_keep):
    """The mixed-chunk core on a piece that continues a decoding state (see :func:`flash_core`).

    heads: qq, qk, lq, lk (b, t, s), v (b, t, e); bad: (b, t) bool rows that held NaN / Inf
    (zeroed), or None (t = 1, not contained); normed: (b, t, d), layer_input of the piece.
    -> (att (b, t, e), the decoding state after the piece, reads: (b, t) bool or None, the
    positions that read a poisoned carried state)."""
    config, xp, mask, segment_ids = args["config"], args["xp"], args["mask"], args["segment_ids"]
    c = config.chunk_size
    t = heads[-1].shape[1]
    h, r = _head_length(state["pos"], t, c, xp)
    att, reads = [], None
    if h:
        if mask is not None or segment_ids is not None or attn_keep is not None:
            raise ValueError(
                f"a piece that starts mid-chunk (its position mod chunk_size={c} is "
                f"{'unknown' if r is None else r}) takes no mask, segment_ids or dropout: a "
                "decoding state holds one sequence per row, every position real; start such a "
                "piece at a multiple of chunk_size"
            )
        hit = None if bad is None else bad[:, :h]
        part, state = _continue_chunk([a[:, :h] for a in heads], hit, state, r, args)
        att.append(part)
    if h < t:
        qq, qk, lq, lk, v = (a[:, h:] for a in heads)
        bad_rest = bad[:, h:]
        own = summary(lk, v, bad_rest, config=config, mask=mask, segment_ids=segment_ids, xp=xp)
        carried = _carried(state, v.dtype, xp)
        if r is None:  # a traced pos: only a chunk boundary can be right, else NaN
            carried["bad"] = carried["bad"] | (state["pos"] % c != 0)
        core = kernels.of(xp).core("flash", config, kernels.Call(v, mask, segment_ids, attn_keep))
        att.append(_core_with_state(core, qq, qk, lq, lk, v, args, carried, attn_keep))
        reads = _reads(carried, segment_ids, xp)  # (b, 1); the first h positions read no lin
        if h:  # but the state's own chunk (NaN flows through there)
            b = reads.shape[0]
            no = xp.zeros((b, h), dtype=xp.bool, device=device_of(v))
            reads = xp.concat([no, xp.broadcast_to(reads, (b, t - h))], axis=1)
        state = _next_state(bad_rest, state, own, carried, (qk, lk, v), mask, config, xp)
    last = normed[:, -1, :]  # the token shift's row for the next piece
    if mask is not None:
        last = xp.where(mask[:, -1:], last, xp.zeros_like(last))
    state["prev"] = last
    return (att[0] if len(att) == 1 else xp.concat(att, axis=1)), state, reads


def _head_length(pos, t, c: int, xp) -> tuple[int, int | None]:
    """(h, p): a piece of t positions that continues a decoding state at ``pos`` completes the
    state's partial chunk with its first h positions; p = pos mod C as a Python int, None where
    ``pos`` is traced (then h = 1 for one position, else 0: the piece must start at a boundary)."""
    host = ops._host_position(xp, pos)
    p = None if host is None else host % c
    if is_static(t) and t == 1:
        return 1, p
    if not p:
        return 0, p
    if not is_static(t):
        raise ValueError(
            f"a piece of symbolic length cannot start mid-chunk (position {host}, chunk_size={c})"
        )
    return min(c - p, t), p


def _continue_chunk(heads: list, hit, state: dict, p: int | None, args: dict):
    """The first h positions of a piece that continues a decoding state's partial chunk: its
    slots p .. p + h - 1 (p = pos mod C, p + h <= C). Each query attends locally to the chunk's
    keys up to its own (the state's buffered qk / v, then the piece's) and linearly to lin, the
    completed chunks: h x C scores, no C x C block.

    heads: qq, qk, lq, lk (b, h, s), v (b, h, e); hit: (b, h) bool, rows that held NaN / Inf
    (zeroed), or None (a row's NaN flows through); p: a Python int where pos is concrete, else
    None (traced; h = 1, its slot found by comparisons). -> (att (b, h, e), the decoding state
    after these positions: the chunk written into qk / v, its part of K^T V / C into pending,
    and pending moved into lin when the chunk is complete).
    """
    config, xp, bias = args["config"], args["xp"], args["bias"]
    c = config.chunk_size
    pos, lin, count = state["pos"], state["lin"], state["count"]
    qq, qk, lq, lk, v = in_dtype(xp, lin.dtype, *heads)
    h = v.shape[1]
    if p is None:  # one row at a traced slot
        row = xp.reshape(pos % c, (1,))
        slots = const(xp, np.arange(c), like=pos, dtype=pos.dtype)  # (C,)
        allowed = slots[None, :] <= row[:, None]  # (1, C)

        def put(buf, new):  # buf (b, C, .) with new (b, 1, .) at the row's slot
            return xp.where((slots == row)[None, :, None], new, buf)

        if bias is not None:
            bias = xp.take(bias, row, axis=0)  # (1, C)
        full = row[0] == c - 1
    else:
        allowed = const(xp, causal_mask(c)[p : p + h], like=v)  # (h, C)

        def put(buf, new):
            return xp.concat([buf[:, :p], new, buf[:, p + h :]], axis=1)

        if bias is not None:
            bias = bias[p : p + h]  # (h, C)
        full = p + h == c
    qk_buf, v_buf = put(state["qk"], qk), put(state["v"], v)  # (b, C, s), (b, C, e)
    scores = xp.matmul(qq, xp.permute_dims(qk_buf, (0, 2, 1)))  # (b, h, C)
    a = _local_weights(scores, bias, allowed, config, xp)
    quad = xp.matmul(a, v_buf)  # (b, h, e)
    att = quad + _read_lin(lq, lin, count[:, None, None], config, xp)
    part, v_held = _chunk_part(lk, v, hit, c, xp)
    pending = state["pending"] + part
    new = dict(state, pos=pos + h, qk=qk_buf, v=v_buf if hit is None else put(state["v"], v_held))
    if full is True:
        new.update(lin=lin + pending, pending=xp.zeros_like(pending), count=count + 1.0)
    elif full is False:
        new["pending"] = pending
    else:
        new.update(
            lin=xp.where(full, lin + pending, lin),
            pending=xp.where(full, xp.zeros_like(pending), pending),
            count=xp.where(full, count + 1.0, count),
        )
    return att, new


def _local_weights(scores, bias, allowed, config: FlashConfig, xp):
    """The local quadratic weights within a chunk: f(Q K^T / C + B) (scale and f by
    ``config.attention``), exactly 0 where ``allowed`` (bool, broadcastable, or None) is False.
    scores: (..., q, k) -> (..., q, k)."""
    c = float(config.chunk_size)
    scale = ops.attention_scale(config.attention, c, config.qk_dim)
    logits = scores_to_logits(scores, bias, scale, config)
    return ops.attend(logits, allowed, kind=config.attention, length=c, xp=xp)


def _read_lin(lq, lin, count, config: FlashConfig, xp):
    """The linear branch's read: lq @ lin, divided by the number of chunks summed (at least 1)
    for linear_norm='mean'. lq: (..., q, s); lin: (..., s, e); count: broadcastable to
    (..., q, 1) -> (..., q, e)."""
    out = xp.matmul(lq, lin)
    if config.linear_norm == "mean":
        out = out / xp.maximum(count, xp.ones_like(count))
    return out


def _chunk_part(lk, v, hit, c: int, xp):
    """What h positions of one chunk add to a decoding state: their K^T V / C (b, s, e) for
    ``pending``, and v (b, h, e) as the state's buffer holds it. Both NaN where ``hit`` (b, h)
    bool marks a row that held NaN / Inf (zeroed in lk and v): later positions of the chunk and
    the chunks after it read it; hit None: no row is marked. lk: (b, h, s)."""
    kt = xp.permute_dims(lk, (0, 2, 1))  # (b, s, h)
    part = (kt * v if v.shape[1] == 1 else xp.matmul(kt, v)) / float(c)  # (b, s, e)
    if hit is None:
        return part, v
    nan = const(xp, np.full((1, 1, 1), np.nan), like=part)
    any_hit = xp.sum(xp.astype(hit, xp.int32), axis=1) > 0  # (b,)
    return xp.where(any_hit[:, None, None], nan, part), xp.where(hit[..., None], nan, v)


def _core_with_state(core, qq, qk, lq, lk, v, args: dict, carried: dict, attn_keep):
    """The mixed-chunk core on a piece with a carried state: the backend's fast ``core`` (which
    takes none; None: none takes this call) where lin is linear in the state (linear_norm='sum',
    no mask, no segments, no dropout, causal): core's output + lq S_in; else the spec's core
    with the state."""
    config, xp = args["config"], args["xp"]
    fused = (
        core is not None
        and config.linear_norm == "sum"
        and args["mask"] is None
        and args["segment_ids"] is None
        and attn_keep is None
        and carried.get("after") is None
    )
    if fused:
        return core(qq, qk, lq, lk, v, **args) + _read_lin(lq, carried["lin"], None, config, xp)
    kw = {} if attn_keep is None else {"attn_keep": attn_keep}
    return attention_core_flash(qq, qk, lq, lk, v, **args, state=carried, **kw)


def _carried(state: dict, dtype, xp) -> dict:
    """A decoding state's carried linear part as :func:`attention_core_flash` takes it: its lin
    made finite, with "bad" (b,) bool where it held NaN / Inf (a poisoned earlier row)."""
    lin = state["lin"]  # (b, s, e)
    b = lin.shape[0]
    bad = ~xp.isfinite(xp.sum(xp.reshape(lin, (b, lin.shape[1] * lin.shape[2])), axis=-1))
    lin = xp.where(bad[:, None, None], xp.zeros_like(lin), lin)
    lin = xp.astype(lin, dtype, copy=False)
    return {"lin": lin, "count": state["count"], "bad": bad, "seg": None, "keys": None}


def _reads(part: dict, segment_ids, xp):
    """(b, t) bool: the positions that read a carried part flagged "bad" (its segment's)."""
    bad = part["bad"][:, None]  # (b, 1)
    if segment_ids is None:
        return bad
    return bad & (segment_ids == part["seg"][:, None])


def _next_state(bad, state, own, carried, keys, mask, config, xp) -> dict:
    """The decoding state after a piece at a chunk boundary (see :func:`flash_core`), but its
    ``prev``. bad: (b, t) rows of the piece that held NaN / Inf; keys: the core's qk, lk
    (b, t, s) and v (b, t, e)."""
    qk, lk, v = keys
    t = v.shape[1]
    c = config.chunk_size
    done = t // c * c  # positions in completed chunks
    tail = own["tail"]
    lin = carried["lin"] + tail["lin"]
    poisoned = carried["bad"] | tail["bad"]
    nan = const(xp, np.full((1, 1, 1), np.nan), like=lin)
    new = dict(state)
    new.update(
        pos=state["pos"] + t,
        lin=xp.astype(xp.where(poisoned[:, None, None], nan, lin), state["lin"].dtype),
        count=carried["count"] + tail["count"],
    )
    if done < t:  # the partial last chunk, as decode_step holds it
        k, hit = lk[:, done:], bad[:, done:]
        if mask is not None:
            k = xp.where(mask[:, done:, None], k, xp.zeros_like(k))
            hit = hit & mask[:, done:]
        new["pending"], vp = _chunk_part(k, v[:, done:], hit, c, xp)
        pad = c - (t - done)
        new["qk"] = _pad_chunks(qk[:, done:], pad, 1, c, xp)[:, 0]  # (b, C, s)
        new["v"] = _pad_chunks(vp, pad, 1, c, xp)[:, 0]  # (b, C, e)
    return new


def summary(lk, v, bad, *, config: FlashConfig, mask=None, segment_ids=None, xp=None) -> dict:
    """What a piece hands the pieces after it (and, non-causal, before it): {"tail": part,
    "head": part}, the keys of the segment open at its end and at its start (the same part
    without segments). Only completed chunks count.

    lk: (b, t, s), v: (b, t, e) (the core's dtype); bad: (b, t) bool, rows that held NaN / Inf;
    mask, segment_ids: (b, t) or None. A part: lin (b, s, e) = sum of K^T V / C over its keys,
    count (b,) = chunks with one of its keys, keys (b, 1, 1) = their number / C ('length' only),
    seg (b,) = its segment id (None without segments), bad (b,) = one of its real rows was bad.
    """
    b, t, _ = lk.shape
    c = config.chunk_size
    done = t // c * c
    lk, v, bad = lk[:, :done], v[:, :done], bad[:, :done]
    real = None if mask is None else mask[:, :done]
    if real is not None:
        bad = bad & real

    def part(member, seg):  # member: (b, t) bool or None (every position)
        if member is None:
            w, k, flag = None, lk, bad
        else:
            w, flag = xp.astype(member, v.dtype), bad & member
            k = lk * w[..., None]
        flag = xp.sum(xp.astype(flag, xp.int32), axis=1) > 0  # (b,)
        out = {"lin": xp.matmul(xp.permute_dims(k, (0, 2, 1)), v) / float(c), "seg": seg}
        out["bad"] = flag
        if w is None:
            ones = xp.ones((b,), dtype=v.dtype, device=device_of(v))
            out["count"] = ones * float(done // c)
            keys = xp.reshape(ones, (b, 1, 1)) * (float(done) / c)
        else:
            has = xp.sum(xp.reshape(w, (b, done // c, c)), axis=-1) > 0  # (b, g)
            out["count"] = xp.sum(xp.astype(has, v.dtype), axis=1)
            keys = xp.reshape(xp.sum(w, axis=1), (b, 1, 1)) / float(c)
        out["keys"] = keys if config.linear_norm == "length" else None
        return out

    if segment_ids is None:
        tail = part(real, None)
        return {"tail": tail, "head": tail}
    seg = segment_ids[:, :done]
    last, first = segment_ids[:, t - 1], segment_ids[:, 0]
    return {
        "tail": part(_and(real, seg == last[:, None]), last),
        "head": part(_and(real, seg == first[:, None]), first),
    }


def attention_core_flash(
    qq,
    qk,
    lq,
    lk,
    v,
    *,
    bias,
    config: FlashConfig,
    mask=None,
    segment_ids=None,
    xp=None,
    state=None,
    attn_keep=None,
):
    """The mixed-chunk attention core, after projections and RoPE: quad + lin.

    qq, qk, lq, lk: (b, t, s); v: (b, t, e); bias: (C, C) or None; mask, segment_ids: (b, t) or
    None. Returns (b, t, e). This is the piece accelerated kernels replace; it is their oracle.
    ``state``: None for a whole sequence, or the carried linear state of the positions before
    x (see :func:`_linear`): {"lin": (b, s, e), "count": (b,), "keys": (b, 1, 1) or None,
    "seg": (b,) or None, "after": the same from the positions after x (non-causal context
    parallelism) or None}. ``attn_keep``: (b, g, c, k) bool or None, the dropout keep-mask of
    the local quadratic weights (rate ``config.dropout``); the linear branch takes no dropout.
    """
    xp = namespace(v, xp=xp)
    b, t, _ = v.shape
    c = config.chunk_size
    g = (t + c - 1) // c  # ceil(t / C), in non-negative floor divisions (exports truncate)
    pad = g * c - t
    valid = None  # (b, g, c) bool, False at padding; None when every position is real
    if not is_static(pad) or pad:
        real = xp.ones((b, t), dtype=xp.bool, device=device_of(v)) if mask is None else mask
        valid = _pad_chunks(real, pad, g, c, xp)
    elif mask is not None:
        valid = xp.reshape(mask, (b, g, c))
    seg = None
    if segment_ids is not None:
        seg = _pad_chunks(segment_ids, pad, g, c, xp, fill=segment_ids[:, t - 1 : t])  # (b, g, c)

    def chunked(a):
        return _pad_chunks(a, pad, g, c, xp)

    qq, qk, lq, lk, v = (chunked(a) for a in (qq, qk, lq, lk, v))  # (b, g, c, ·)
    if valid is not None:
        vk = valid[..., None]
        qk = xp.where(vk, qk, xp.zeros_like(qk))
        lk = xp.where(vk, lk, xp.zeros_like(lk))
        v = xp.where(vk, v, xp.zeros_like(v))

    # Local quadratic attention within each chunk.
    scores = xp.matmul(qq, xp.permute_dims(qk, (0, 1, 3, 2)))  # (b, g, c, k)
    causal = const(xp, causal_mask(c), like=v) if config.causal else None
    key_ok = valid[:, :, None, :] if valid is not None else None  # (b, g, 1, k)
    same = _same_segment(seg, seg) if seg is not None else None  # (b, g, c, k)
    a = _local_weights(scores, bias, _and(causal, key_ok, same), config, xp)
    if attn_keep is not None:
        a = drop.apply_keep(a, attn_keep, config.dropout, xp)
    quad = xp.matmul(a, v)  # (b, g, c, e)

    lin = _linear(lq, lk, v, valid, seg, same, config, xp, state)
    if config.linear_norm == "length":  # the sum of K^T V / n instead of / C (non-causal only)
        if config.length_mode == "array":
            n = size_as(xp, t, v)
        else:  # real keys of the query's segment: the same linear machinery with q = k = v = 1
            one = xp.ones((b, g, c, 1), dtype=v.dtype, device=device_of(v))
            one_k = one if valid is None else one * xp.astype(valid, v.dtype)[..., None]
            keys = _as_keys(state)
            count = _linear(one, one_k, one_k, valid, seg, same, config, xp, keys) * float(c)
            n = xp.maximum(count, xp.ones_like(count))  # (b, g, c, 1)
        lin = lin * (float(c) / n)
    out = xp.reshape(quad + lin, (b, g * c, v.shape[-1]))
    return out[:, :t, :]


def _as_keys(state):
    """A carried state's key counts as a carried state of the q = k = v = 1 linear branch."""
    if state is None:
        return None
    after = state.get("after")
    return {
        "lin": state.get("keys"),
        "count": None,
        "seg": state.get("seg"),
        "after": None if after is None else _as_keys(after),
    }


def _linear(lq, lk, v, valid, seg, same, config: FlashConfig, xp, state=None):
    """Global linear attention across chunks. lq, lk: (b, g, c, s), lk already zero at padding;
    v: (b, g, c, e); valid: (b, g, c) or None; seg: (b, g, c) or None -> (b, g, c, e).

    Chunk state M_h = K_h^T V_h / C. Causal: query in chunk g reads the sum of M_h, h < g, over
    keys of its own segment; non-causal: over all chunks. 'mean' divides by the number of chunks
    that hold a real key of the query's segment.

    ``state``: the carried state of the positions before these (see
    :func:`attention_core_flash`): its lin and count are added to what every chunk reads (with
    segments: the chunks whose first segment is ``state["seg"]``); its "after" part, from the
    positions after these (non-causal), likewise (with segments: the chunks whose last segment
    is ``after["seg"]``).
    """
    b, g, c, s = lk.shape
    e = v.shape[-1]
    inv_c = 1.0 / float(c)
    mean = config.linear_norm == "mean"
    kt = xp.permute_dims(lk, (0, 1, 3, 2))  # (b, g, s, k)
    if valid is None:
        has = xp.ones((b, g), dtype=v.dtype, device=device_of(v))
    else:
        has = xp.astype(xp.sum(xp.astype(valid, v.dtype), axis=-1) > 0, v.dtype)  # (b, g)
    parts = [] if state is None else [p for p in (state, state.get("after")) if p is not None]

    if seg is None:
        m = xp.matmul(kt, v) * inv_c  # (b, g, s, e)
        if config.causal:
            state_g = xp.cumulative_sum(m, axis=1, include_initial=True)[:, :g, ...]  # exclusive
            count = xp.cumulative_sum(has, axis=1, include_initial=True)[:, :g]
        else:
            state_g = xp.broadcast_to(xp.sum(m, axis=1, keepdims=True), m.shape)
            count = xp.broadcast_to(xp.sum(has, axis=1, keepdims=True), has.shape)
        for part in parts:
            state_g = state_g + part["lin"][:, None, ...]  # (b, g, s, e)
            count = count + part["count"][:, None] if mean else count
        return _read_lin(lq, state_g, count[:, :, None, None], config, xp)  # (b, g, c, e)

    # Packed segments. Each id is one contiguous run, so only the segment that is open at a
    # chunk's first position can have keys in earlier chunks, and only the one open at its last
    # position can have keys in later chunks.
    first, last = seg[:, :, :1], seg[:, :, c - 1 :]  # (b, g, 1)
    valid_f = xp.ones_like(lk[..., 0]) if valid is None else xp.astype(valid, v.dtype)  # (b, g, c)
    tail_w = xp.astype(seg == last, v.dtype) * valid_f  # keys of the segment open at the end
    m_tail = xp.matmul(kt * tail_w[:, :, None, :], v) * inv_c  # (b, g, s, e)
    gi = iota(xp, g, v)  # (g,)
    earlier = gi[None, :] < gi[:, None]  # (g, h): h < g
    before = earlier & (last[:, None, :, 0] == first[:, :, None, 0])  # (b, g, h)
    before_f = xp.astype(before, v.dtype)
    s_before = xp.reshape(xp.matmul(before_f, xp.reshape(m_tail, (b, g, s * e))), (b, g, s, e))
    tail_has = xp.astype(xp.sum(tail_w, axis=-1) > 0, v.dtype)  # (b, g)
    n_before = xp.sum(before_f * tail_has[:, None, :], axis=-1)  # (b, g)
    if state is not None:  # the carried keys of the segment open at this piece's start
        if state.get("seg") is None:
            raise ValueError(
                "packed segment_ids cannot continue a carried state that has no segment id (a "
                "decoding state holds one sequence per row)"
            )
        reads = xp.astype(first[:, :, 0] == state["seg"][:, None], v.dtype)  # (b, g)
        s_before = s_before + reads[..., None, None] * state["lin"][:, None, ...]
        if mean:
            n_before = n_before + reads * state["count"][:, None]
    q_first = xp.astype(seg == first, v.dtype)[..., None]  # (b, g, c, 1)
    lin = q_first * xp.matmul(lq, s_before)
    count = q_first[..., 0] * n_before[..., None]
    if not config.causal:
        head_w = xp.astype(seg == first, v.dtype) * valid_f
        m_head = xp.matmul(kt * head_w[:, :, None, :], v) * inv_c
        later = gi[None, :] > gi[:, None]
        after_f = xp.astype(later & (first[:, None, :, 0] == last[:, :, None, 0]), v.dtype)
        s_after = xp.reshape(xp.matmul(after_f, xp.reshape(m_head, (b, g, s * e))), (b, g, s, e))
        head_has = xp.astype(xp.sum(head_w, axis=-1) > 0, v.dtype)
        n_after = xp.sum(after_f * head_has[:, None, :], axis=-1)  # (b, g)
        after = None if state is None else state.get("after")
        if after is not None:  # the carried keys of the segment open at this piece's end
            reads = xp.astype(last[:, :, 0] == after["seg"][:, None], v.dtype)  # (b, g)
            s_after = s_after + reads[..., None, None] * after["lin"][:, None, ...]
            if mean:
                n_after = n_after + reads * after["count"][:, None]
        q_last = xp.astype(seg == last, v.dtype)[..., None]
        lin = lin + q_last * xp.matmul(lq, s_after)
        # The query's own chunk: keys of its segment, in quadratic form within the chunk.
        own = xp.astype(same, v.dtype) * valid_f[:, :, None, :]  # (b, g, c, k)
        lin = lin + xp.matmul(xp.matmul(lq, kt) * own, v) * inv_c
        count = (
            count
            + q_last[..., 0] * n_after[..., None]
            + xp.astype(xp.sum(own, axis=-1) > 0, v.dtype)
        )
    if mean:
        lin = lin / xp.maximum(count, xp.ones_like(count))[..., None]
    return lin
