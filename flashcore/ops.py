"""Building blocks shared by every layer: norms, token shift, scale-offset, RoPE, relative bias and
the attention functions.

Einsum letters, used in every shape comment of flashcore:
    b batch    t query position    j key position    d model width    e expanded width (U, V)
    s shared qk width    h scale-offset head    g chunk    c query in chunk    k key in chunk
    n heads of the Transformer++ baseline    f its FFN width    v vocabulary
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import numpy as np

from . import kernels
from ._xp import const, erf, is_low_precision, is_static, tracing
from .checks import concrete

__all__ = [
    "norm",
    "silu",
    "token_shift",
    "scale_offset",
    "rope",
    "rope_tables",
    "rope_rotate",
    "rope_offset",
    "rope_all_offset",
    "rope_at",
    "rope_all_at",
    "rope_all_offset",
    "angles",
    "angles_at",
    "angles_of",
    "rel_bias",
    "t5_bucket",
    "attend",
    "attention_scale",
    "ATTENTIONS",
    "AttentionFunction",
    "ROPES",
    "Rotary",
    "REL_BIASES",
    "RelativeBias",
    "masked_softmax",
]


def norm(p: dict, x, *, kind: str, eps: float, xp, eps_mode: str = "add", affine: bool = True):
    """Normalise the last axis. x: (..., d) -> (..., d).

    scale: x * rsqrt(mean(x^2) + eps) * alpha (paper's ScaleNorm, alpha: (1,));
    rms: x * rsqrt(mean(x^2) + eps) * w (w: (d,));  layer: (x - mu) * rsqrt(var + eps) * w + b.
    eps_mode='clamp' (scale, rms): x / max(sqrt(mean(x^2)), eps) instead (flash-pytorch).
    ``affine=False``: no gain and no bias (``p`` is not read; scale and rms are then one norm).
    ``kind='none'``: x unchanged.
    """
    if kind == "none":
        return x
    if kind == "layer":
        mu = xp.mean(x, axis=-1, keepdims=True)
        xc = x - mu
        var = xp.mean(xc * xc, axis=-1, keepdims=True)
        y = xc / xp.sqrt(var + eps)
        return y * p["weight"] + p["bias"] if affine else y
    ms = xp.mean(x * x, axis=-1, keepdims=True)
    if eps_mode == "clamp":
        rms = xp.sqrt(ms)
        y = x / xp.maximum(rms, xp.full_like(rms, eps))
    else:
        y = x / xp.sqrt(ms + eps)
    if not affine:
        return y
    return y * (p["scale"] if kind == "scale" else p["weight"])


def silu(x, xp):
    """x * sigmoid(x): the backend's ``Kernels.silu`` where it has one (a fused kernel: one pass
    over x forward and backward instead of ~10), the formula otherwise."""
    fused = kernels.of(xp).silu
    if fused is not None:
        return fused(x)
    return x / (1.0 + xp.exp(-x))


def dense(h, kernel, bias, xp):
    """h W + b. h: (..., i); kernel: (i, o); bias: (o,) or None -> (..., o). The backend's
    ``Kernels.dense`` where it has one (a fused matmul-plus-bias, e.g. torch's addmm), the formula
    otherwise."""
    fused = kernels.of(xp).dense
    if fused is not None:
        return fused(h, kernel, bias)
    y = xp.matmul(h, kernel)
    return y if bias is None else y + bias


def split(a, sizes: tuple[int, ...], xp) -> list:
    """``a`` cut along its last axis into pieces of ``sizes`` (summing to a.shape[-1]).
    The backend's ``Kernels.split_last`` where it has one (one backward for all pieces instead of
    one zero-filled gradient per slice), slicing otherwise."""
    if sum(sizes) != a.shape[-1]:
        raise ValueError(f"sizes {sizes} do not add up to the last axis {a.shape[-1]}")
    fused = kernels.of(xp).split_last
    if fused is not None:
        return list(fused(a, sizes))
    out, i = [], 0
    for n in sizes:
        out.append(a[..., i : i + n])
        i += n
    return out


def token_shift(h, keep_prev, xp, prev=None):
    """Shift the first ceil(d/2) channels one step forward in time; zeros where the previous
    position is padding, in another segment, or t = 0.

    h: (b, t, d); keep_prev: (b, t) bool or None (None: all previous positions usable).
    prev: (b, 1, d), the row before h[:, 0] (context parallelism: the previous shard's last
    row), or None for zeros; ``keep_prev[:, 0]`` still decides whether it is read.
    """
    b, t, d = h.shape
    k = (d + 1) // 2
    first, rest = h[..., :k], h[..., k:]
    zero = xp.zeros_like(first[:, :1, :]) if prev is None else prev[..., :k]
    shifted = xp.concat([zero, first[:, :-1, :]], axis=1)  # (b, t, k)
    if keep_prev is not None:
        shifted = xp.where(keep_prev[..., None], shifted, xp.zeros_like(shifted))
    return xp.concat([shifted, rest], axis=-1)


def scale_offset(z, gamma, beta) -> list:
    """Per-dim scale and offset, one per head. z: (b, t, s); gamma: (h, s); beta: (h, s) or
    None (no offset) -> h x (b, t, s)."""
    if beta is None:
        return [z * gamma[i, :] for i in range(gamma.shape[0])]
    return [z * gamma[i, :] + beta[i, :] for i in range(gamma.shape[0])]


def rope_tables(positions: np.ndarray, dims: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of position * theta_k, theta_k = base^(-2k/dims), k < dims/2, in float64.

    positions: (t,) -> cos, sin: (t, dims/2).
    """
    k = np.arange(dims // 2, dtype=np.float64)
    theta = base ** (-2.0 * k / dims)
    ang = np.asarray(positions, dtype=np.float64)[:, None] * theta[None, :]
    return np.cos(ang), np.sin(ang)


def rope(x, positions: np.ndarray, *, dims: int, mode: str, base: float, xp):
    """Rotary position embedding on the first ``dims`` channels. x: (b, t, s) -> (b, t, s).

    half:        [x1 cos - x2 sin, x2 cos + x1 sin] with x1, x2 the two halves of x[..., :dims];
    interleaved: the same on the pairs (x[2i], x[2i+1]). Channels past ``dims`` pass unchanged.
    Angles are computed on the host in float64 from integer ``positions`` (t,); positions given
    as an ``xp`` int array (a symbolic length, :func:`flashcore._xp.iota`) take exact host
    tables split as in :func:`angles_at`.
    """
    if ROPES[mode].rotate is None or dims == 0:
        return x
    cos, sin = angles(positions, dims=dims, base=base, xp=xp, like=x)  # (t, dims/2)
    return rope_rotate(x, cos, sin, dims=dims, mode=mode, xp=xp)


def angles(positions, *, dims: int, base: float, xp, like):
    """cos, sin of p * theta_k (theta_k = base^(-2k/dims)) at positions (t,) -> two (t, dims/2)
    ``xp`` arrays in ``like``'s dtype: from NumPy positions, float64 host tables
    (:func:`rope_tables`); from ``xp`` int positions (a symbolic length), :func:`angles_of`."""
    if isinstance(positions, np.ndarray):
        cos_np, sin_np = rope_tables(positions, dims, base)
        return const(xp, cos_np, like=like), const(xp, sin_np, like=like)
    return angles_of(positions, dims=dims, base=base, xp=xp, like=like)


def rope_offset(x, offset, *, dims: int, mode: str, base: float, xp):
    """RoPE at positions ``offset + arange(t)`` with ``offset`` an integer array of shape ()
    that may be traced (a device's place in a sharded sequence). x: (b, t, s) -> (b, t, s).

    The angle is split as offset * theta + i * theta, both exact float64 host tables (see
    :func:`angles_at`), combined with the angle-sum identity.
    """
    return rope_all_offset([x], offset, dims=dims, mode=mode, base=base, xp=xp)[0]


def rope_all_offset(xs: list, offset, *, dims: int, mode: str, base: float, xp) -> list:
    """:func:`rope_offset` on every array of ``xs`` (each (..., t, s), one dtype and t), the
    angles computed once (a piece continuing a cache rotates its queries and keys alike)."""
    if ROPES[mode].rotate is None or dims == 0 or not xs:
        return list(xs)
    cos, sin = angles_offset(offset, xs[0].shape[-2], dims=dims, base=base, xp=xp, like=xs[0])
    return [rope_rotate(x, cos, sin, dims=dims, mode=mode, xp=xp) for x in xs]


def angles_offset(offset, t: int, *, dims: int, base: float, xp, like):
    """cos, sin of p * theta_k at positions p = ``offset + arange(t)``, ``offset`` an integer
    array of shape () that may be traced -> two (t, dims/2) arrays in ``like``'s dtype.

    offset * theta and i * theta are exact float64 host tables (:func:`angles_at`), combined
    with the angle-sum identity (for t = 1, where i * theta = 0, the offset's angles as they are).
    """
    if is_static(t) and t == 1:
        return angles_at(offset, dims=dims, base=base, xp=xp, like=like)
    cos_np, sin_np = rope_tables(np.arange(t), dims, base)
    cos_l, sin_l = const(xp, cos_np, like=like), const(xp, sin_np, like=like)  # (t, dims/2)
    cos_o, sin_o = angles_at(offset, dims=dims, base=base, xp=xp, like=like)  # (1, dims/2)
    return cos_l * cos_o - sin_l * sin_o, sin_l * cos_o + cos_l * sin_o


def _rotate_half(r, cos, sin, xp):
    """[x1 cos - x2 sin, x2 cos + x1 sin], x1 and x2 the two halves of r (..., dims)."""
    half = r.shape[-1] // 2
    x1, x2 = r[..., :half], r[..., half:]
    return xp.concat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _rotate_pairs(r, cos, sin, xp):
    """The same rotation on the pairs (r[2i], r[2i+1]) of r (..., dims)."""
    pairs = xp.reshape(r, (*r.shape[:-1], r.shape[-1] // 2, 2))  # (..., dims/2, 2)
    x1, x2 = pairs[..., 0], pairs[..., 1]
    return xp.reshape(xp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1), r.shape)


@dataclasses.dataclass(frozen=True)
class Rotary:
    """One RoPE variant: ``rotate(r, cos, sin, xp)`` turns the rotated channels r (..., dims)
    by the angles (cos, sin broadcastable to (..., dims/2)); None: no rotation."""

    rotate: Callable | None
    doc: str


#: The RoPE variants, by ``FlashConfig.rope``: a new one is one entry here (and a conformance
#: case); tests/test_config_params.py checks the entries against the config's choices.
ROPES: dict[str, Rotary] = {
    "half": Rotary(_rotate_half, "[x1 cos - x2 sin, x2 cos + x1 sin] on the two halves"),
    "interleaved": Rotary(_rotate_pairs, "the same on the pairs (x[2i], x[2i+1])"),
    "none": Rotary(None, "no rotation"),
}


def rope_rotate(x, cos, sin, *, dims: int, mode: str, xp):
    """Rotate the first ``dims`` channels of x (..., s) by angles given as cos, sin
    (broadcastable to (..., dims/2)) as the :data:`ROPES` entry ``mode`` says."""
    rotated = ROPES[mode].rotate(x[..., :dims], cos, sin, xp)
    if dims == x.shape[-1]:
        return rotated
    return xp.concat([rotated, x[..., dims:]], axis=-1)


ROPE_BLOCK = 1024  # positions per row of the coarse table used for traced positions
ROPE_MAX_POSITION = 1 << 22  # 4M positions


@functools.lru_cache(maxsize=8)
def _split_tables(dims: int, base: float):
    hc, hs = rope_tables(np.arange(ROPE_MAX_POSITION // ROPE_BLOCK) * ROPE_BLOCK, dims, base)
    lc, ls = rope_tables(np.arange(ROPE_BLOCK), dims, base)
    return hc, hs, lc, ls


def rope_at(x, pos, *, dims: int, mode: str, base: float, xp):
    """RoPE for one step at an integer-array position ``pos`` (shape (), may be traced).

    x: (b, s). The angle pos * theta is split as hi * ROPE_BLOCK * theta + lo * theta with both
    tables computed on the host in float64, and combined with the angle-sum identity, so the
    result is as exact as the whole-sequence path even at millions of positions, where float32
    pos * theta would be off by 1e-2 rad.
    """
    return rope_all_at([x], pos, dims=dims, mode=mode, base=base, xp=xp)[0]


def rope_all_at(xs: list, pos, *, dims: int, mode: str, base: float, xp) -> list:
    """:func:`rope_at` on every array of ``xs`` (each (b, s), one dtype) at the same position,
    the angles looked up once (a decoding step rotates 2-4 heads at one position)."""
    if ROPES[mode].rotate is None or dims == 0 or not xs:
        return list(xs)
    cos, sin = angles_at(pos, dims=dims, base=base, xp=xp, like=xs[0])
    return [rope_rotate(x, cos, sin, dims=dims, mode=mode, xp=xp) for x in xs]


def angles_at(pos, *, dims: int, base: float, xp, like):
    """cos, sin of pos * theta_k (theta_k = base^(-2k/dims)) at an integer-array position ``pos``
    (shape (), may be traced) -> two (1, dims/2) arrays in ``like``'s dtype, exact to
    ROPE_MAX_POSITION (see :func:`rope_at`).

    Where ``pos`` is concrete (eager, ``Kernels.concrete`` gives its value) the angle is taken in
    float64 on the host, and only the (1, dims/2) row moves to the device: an eager decoding step
    then converts two rows instead of the four tables."""
    host = _host_position(xp, pos)
    if host is not None:
        if not 0 <= host < ROPE_MAX_POSITION:
            raise ValueError(f"position {host} is outside [0, {ROPE_MAX_POSITION})")
        cos_np, sin_np = rope_tables(np.asarray([host]), dims, float(base))  # (1, dims/2)
        return const(xp, cos_np, like=like), const(xp, sin_np, like=like)
    return angles_of(xp.reshape(pos, (1,)), dims=dims, base=base, xp=xp, like=like)


def angles_of(positions, *, dims: int, base: float, xp, like):
    """cos, sin of p * theta_k at integer positions (n,) given as an ``xp`` array that may be
    traced (its length too) -> two (n, dims/2) arrays in ``like``'s dtype, exact to
    ROPE_MAX_POSITION: p = hi * ROPE_BLOCK + lo, both angles from float64 host tables, combined
    with the angle-sum identity (see :func:`rope_at`)."""
    hc, hs, lc, ls = _split_tables(dims, float(base))  # (H, dims/2) x2, (B, dims/2) x2
    hi, lo = positions // ROPE_BLOCK, positions % ROPE_BLOCK  # (n,)
    take = lambda table, i: xp.take(const(xp, table, like=like), i, axis=0)  # noqa: E731
    hcos, hsin, lcos, lsin = take(hc, hi), take(hs, hi), take(lc, lo), take(ls, lo)  # (n, dims/2)
    return hcos * lcos - hsin * lsin, hsin * lcos + hcos * lsin


def t5_bucket(rel, *, causal: bool, buckets: int, max_distance: int, xp=np):
    """T5's log-bucketed relative position, rel = key - query (int64) -> bucket ids (int64).

    Distances below buckets/2 (per direction when not causal) are exact; larger ones are
    log-spaced up to ``max_distance``. Computed in float32, as T5 and its PyTorch ports do, so
    that bucket edges match theirs. ``xp``: NumPy on the host (the default), or the namespace of
    an in-graph ``rel`` (a symbolic length).
    """
    # the ndarray method on the host: torch.compile traces it (not NumPy 2's np.astype)
    astype = (lambda a, dtype: a.astype(dtype)) if xp is np else xp.astype  # noqa: E731
    n = -xp.asarray(rel, dtype=xp.int64)
    ret = xp.zeros_like(n)
    if not causal:
        buckets //= 2
        ret = ret + astype(n < 0, xp.int64) * buckets
        n = xp.abs(n)
    else:
        n = xp.maximum(n, xp.zeros_like(n))
    exact = buckets // 2
    ratio = astype(xp.maximum(n, xp.ones_like(n)), xp.float32) / xp.asarray(exact, dtype=xp.float32)
    log_span = xp.asarray(math.log(max_distance / exact), dtype=xp.float32)
    scaled = xp.log(ratio) / log_span * xp.asarray(buckets - exact, dtype=xp.float32)
    large = xp.minimum(exact + astype(scaled, xp.int64), xp.full_like(n, buckets - 1))
    return ret + xp.where(n < exact, n, large)


def rel_bias(w, q_pos: np.ndarray, k_pos: np.ndarray, *, config, xp, like):
    """Relative position bias B[t, j] for query positions ``q_pos`` and key positions ``k_pos``.

    learned: B[t, j] = w[j - t + L - 1], L = config.bias_span; t5: w[bucket(j - t)]. Both are
    multiplied by ``config.bias_scale``. Returns (t, j) in ``like``'s dtype, or None when off.
    """
    if REL_BIASES[config.rel_bias].index is None:
        return None
    host = isinstance(q_pos, np.ndarray) and isinstance(k_pos, np.ndarray)
    if not host:  # in-graph positions (a symbolic length): the same indices, built by xp
        return _rel_bias_traced(w, q_pos, k_pos, config=config, xp=xp, like=like)
    rel = np.asarray(k_pos)[None, :] - np.asarray(q_pos)[:, None]  # (t, j)
    if REL_BIASES[config.rel_bias].bounded:
        span = config.bias_span
        if not tracing(xp) and np.abs(rel).max(initial=0) > span - 1:
            raise ValueError(
                f"relative offsets up to {int(np.abs(rel).max())} exceed the learned bias span "
                f"(max_len/chunk_size = {span}); raise FlashConfig.max_len or use rel_bias='t5'"
            )
    idx = _bias_index(rel, config, np)
    return _bias_rows(w, const(xp, idx, like=like), config, xp, like)


def _rel_bias_traced(w, q_pos, k_pos, *, config, xp, like):
    """:func:`rel_bias` for ``xp`` int64 positions (t,), (j,) of a symbolic length: the indices
    built in the graph (no span check: the export bounds the length instead)."""
    rel = k_pos[None, :] - q_pos[:, None]  # (t, j)
    return _bias_rows(w, _bias_index(rel, config, xp), config, xp, like)


def _bias_index(rel, config, xp):
    """The bias weight row of each relative offset rel = key - query (int64, NumPy or ``xp``),
    as the :data:`REL_BIASES` entry of ``config.rel_bias`` says."""
    return REL_BIASES[config.rel_bias].index(rel, config, xp)


def _learned_index(rel, config, xp):
    return rel + (config.bias_span - 1)


def _t5_index(rel, config, xp):
    buckets, distance = config.t5_buckets, config.t5_max_distance
    return t5_bucket(rel, causal=config.causal, buckets=buckets, max_distance=distance, xp=xp)


@dataclasses.dataclass(frozen=True)
class RelativeBias:
    """One relative position bias B[t, j] = w[index(j - t)] * bias_scale: ``rows(config)``, the
    length of its weight w; ``index(rel, config, xp)``, the row of each offset rel = key - query
    (int64, NumPy or ``xp``); ``bounded``: offsets past the rows are an error (else they share
    the last row). None fields: no bias."""

    rows: Callable | None
    index: Callable | None
    bounded: bool
    doc: str


#: The relative position biases, by ``FlashConfig.rel_bias``: a new one is one entry here (and a
#: conformance case); tests/test_config_params.py checks the entries against the config's choices.
REL_BIASES: dict[str, RelativeBias] = {
    "learned": RelativeBias(
        lambda c: 2 * c.bias_span - 1, _learned_index, True, "B[i, j] = w[j - i + L - 1]"
    ),
    "t5": RelativeBias(lambda c: c.t5_buckets, _t5_index, False, "one weight per T5 bucket"),
    "none": RelativeBias(None, None, False, "no bias"),
}


def _bias_rows(w, idx, config, xp, like):
    """w[idx] * bias_scale in ``like``'s dtype; idx: (t, j) ints -> (t, j)."""
    flat = xp.take(w, xp.reshape(idx, (-1,)), axis=0)
    bias = xp.reshape(flat, idx.shape)
    if config.bias_scale != 1.0:
        bias = bias * config.bias_scale
    return xp.astype(bias, like.dtype)


_LAPLACE_MU = math.sqrt(0.5)
_LAPLACE_SIGMA = 1.0 / math.sqrt(4.0 * math.pi)


def masked_softmax(logits, allowed, xp):
    """Softmax over the last axis restricted to ``allowed`` (bool, broadcastable, or None).

    A row with nothing allowed gives zeros, not NaN. float16 / bfloat16 logits are normalised in
    float32 (and the weights returned in the input dtype), so masking and exp cannot overflow.
    """
    dtype = logits.dtype
    if is_low_precision(dtype):
        logits = xp.astype(logits, xp.float32)
    if allowed is not None:
        logits = xp.where(allowed, logits, xp.full_like(logits, -1e30))
    m = xp.max(logits, axis=-1, keepdims=True)
    p = xp.exp(logits - m)
    if allowed is not None:
        p = xp.where(allowed, p, xp.zeros_like(p))
    denom = xp.sum(p, axis=-1, keepdims=True)
    return xp.astype(p / xp.maximum(denom, xp.full_like(denom, 1e-30)), dtype)


def _relu2(scores, allowed, length, xp):
    r = xp.maximum(scores, xp.zeros_like(scores))
    return _allowed_only(r * r, allowed, xp)


def _laplace(scores, allowed, length, xp):
    a = 0.5 * (1.0 + erf(xp, (scores - _LAPLACE_MU) / (_LAPLACE_SIGMA * math.sqrt(2.0))))
    return _allowed_only(a, allowed, xp)


def _softmax_plus(scores, allowed, length, xp):
    log_n = math.log(length) if np.isscalar(length) else xp.log(length)
    return masked_softmax(scores * (log_n / math.log(512.0)), allowed, xp)


def _allowed_only(a, allowed, xp):
    return a if allowed is None else xp.where(allowed, a, xp.zeros_like(a))


@dataclasses.dataclass(frozen=True)
class AttentionFunction:
    """One attention function of GAU / FLASH: ``weights(logits, allowed, length, xp)`` -> the
    weights (disallowed entries exactly 0), and ``scale(n, qk_dim)``, the factor Q K^T is
    multiplied by before the bias (n: the layer's divisor, a number or an array)."""

    weights: Callable
    scale: Callable
    doc: str


#: The attention functions, by ``FlashConfig.attention``: a new one is one entry here (and a
#: conformance case); tests/test_config_params.py checks the entries against the config's choices.
ATTENTIONS: dict[str, AttentionFunction] = {
    "relu2": AttentionFunction(_relu2, lambda n, s: 1.0 / n, "relu(S)^2, S = Q K^T / n"),
    "laplace": AttentionFunction(
        _laplace,
        lambda n, s: 1.0 / n,
        "0.5 (1 + erf((S - mu) / (sigma sqrt 2))), mu = sqrt(1/2), sigma = 1/sqrt(4 pi)",
    ),
    "softmax_plus": AttentionFunction(
        _softmax_plus,
        lambda n, s: 1.0 / math.sqrt(s),
        "softmax(S log(n) / log(512)), S = Q K^T / sqrt(s)",
    ),
}


def attention_scale(kind: str, n, qk_dim: int):
    """The factor Q K^T is multiplied by for attention ``kind`` with divisor n (the chunk size,
    the number of keys, ... ; a number or an array) and shared width ``qk_dim``."""
    return ATTENTIONS[kind].scale(n, qk_dim)


def attend(scores, allowed, *, kind: str, length, xp):
    """Attention weights from scores. scores: (..., t, j); allowed: bool broadcastable or None.

    The function of :data:`ATTENTIONS` named ``kind``: relu2: relu(S)^2; laplace:
    0.5 (1 + erf((S - mu) / (sigma sqrt 2))), mu = sqrt(1/2), sigma = 1/sqrt(4 pi);
    softmax_plus: softmax(S * log(n) / log(512)) with n = ``length`` (a number or an array
    broadcastable to (..., t, 1)). Disallowed entries are exactly 0.
    """
    return ATTENTIONS[kind].weights(scores, allowed, length, xp)


def _host_position(xp, pos) -> int | None:
    """``pos`` (an integer array of shape ()) as a Python int when its value is known now
    (:func:`flashcore.checks.concrete`: eager arrays), None while tracing."""
    if tracing(xp):
        return None
    try:
        value = concrete(pos, xp)
    except Exception:  # a wrapped tensor (torch.func transforms) that refuses a host copy
        return None
    if value is None or np.ndim(value) != 0:
        return None
    return int(value)
