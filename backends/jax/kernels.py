"""A Pallas kernel for FLASH's mixed-chunk attention core, and the Transformer++ attention core on
``jax.nn.dot_product_attention``, each behind a guard.

It replaces :func:`flashcore.layers.attention_core_flash` (same signature; the ``flash`` fast core
of :data:`flashcore.jax.xp.KERNELS`, behind :func:`flash_unsupported`) for the paper's configuration: relu^2 attention, linear_norm='sum',
no packed segments (masks and any T are fine). One program per batch row walks the chunks in order
and keeps the linear state M = sum K_lin^T V / C in registers, so the (g, s, e) per-chunk states the
spec materializes never exist:

    quad_g = (tril) relu(Q_g K_g^T * scale + B)^2 V_g        scale = 1/C (bias before scale:
    lin_g  = Q^lin_g  sum_{h<g} M_h   (causal)                 (Q K^T + B) / C)
           = Q^lin_g  sum_h M_h       (non-causal)

The backward pass is a second kernel (``jax.custom_vjp``): one pass in chunk order for the local
part and dQ^lin, and for causal layers a pass in reverse order for dK^lin and the linear part of dV.

:func:`flash_core` is the dispatcher: the kernel when :func:`can_use_kernel` says so (a GPU or TPU
backend and a supported config), else the spec's core, which is also the oracle in the tests
(``interpret=True`` runs the kernel on CPU). The kernel is checked here only in interpret mode;
the first run on real hardware should be ``tests/backend_jax/test_jax_kernel.py``, whose compiled
test runs only where a GPU or TPU is present.

:func:`softmax_core` has the signature of :func:`flashcore.lm.attention_core_softmax` and is what
the ``softmax`` fast core of :data:`flashcore.jax.xp.KERNELS` (behind :func:`softmax_unsupported`).
It runs ``jax.nn.dot_product_attention`` (``implementation=None``: XLA's, on every platform
today; logits and softmax in float32 for bfloat16 / float16 inputs) behind the guard
:func:`can_use_fused_attention`, which sends to the spec's core what that call does not compute
the same way: a dropout keep-mask of the probabilities (``attn_keep``: it has no dropout), and
float64 (its softmax runs in float32). Inside ``jit``, ``grad`` and ``vmap`` it is the same call.
A padding mask or segment_ids become its boolean ``mask`` with every query's own key allowed
(:func:`flashcore.lm.fused_softmax_allowed`): it averages every value on a row with no allowed
key where the spec gives zeros, and the block zeroes padded rows afterwards. XLA materialises
the (b, n, T, T) scores of one call; past :data:`QUERY_BLOCK` positions the core runs one call
per block of query rows against every key, in a ``lax.map`` (one block after the other) of a
``jax.checkpoint``-ed body, so the scores held, forward and backward, are (b, n, block, T); the
price is one more evaluation of each block's scores in the backward pass. (A Python loop over the
blocks lets XLA's CPU scheduler keep several blocks' scores alive at once; the map does not.)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from flashcore.config import FlashConfig
from flashcore.kernels import Call
from flashcore.layers import attention_core_flash, fused_core_unsupported
from flashcore.lm import attention_core_softmax, fused_softmax_allowed

__all__ = [
    "can_use_kernel",
    "flash_core",
    "pallas_core",
    "can_use_fused_attention",
    "softmax_core",
    "softmax_core_path",
    "flash_unsupported",
    "softmax_unsupported",
    "QUERY_BLOCK",
]


def can_use_kernel(
    v, config: FlashConfig, mask=None, segment_ids=None, attn_keep=None, *, backend=None
) -> bool:
    """True when the Pallas kernel computes this core call on this JAX backend (the signature of
    ``flashcore.torch.kernels.can_use_kernel``; ``backend`` overrides ``jax.default_backend()``).

    v: (b, t, e) floating array (or None: the config alone); mask: (b, t) or None. Needs a GPU
    or TPU backend (on CPU Pallas only interprets, slower than XLA's fusion of the spec) and a
    call the spec's fused-core table gives the 'pallas' core
    (:func:`flashcore.layers.fused_core_unsupported`: relu^2 attention, linear_norm='sum', no
    segment ids, no dropout keep-mask ``attn_keep`` of the attention weights).
    """
    backend = backend or jax.default_backend()
    if backend not in ("gpu", "cuda", "rocm", "tpu"):
        return False
    if v is not None and not jnp.issubdtype(v.dtype, jnp.floating):
        return False
    reason = fused_core_unsupported("pallas", config, segment_ids=segment_ids, attn_keep=attn_keep)
    return reason is None


def flash_core(
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
    attn_keep=None,
):
    """The mixed-chunk core: the Pallas kernel when :func:`can_use_kernel`, else the spec's.

    qq, qk, lq, lk: (b, t, s); v: (b, t, e); bias: (C, C) or None -> (b, t, e).
    attn_keep: (b, g, c, k) bool dropout keep-mask or None; given, the spec's core runs.
    """
    if can_use_kernel(v, config, mask, segment_ids, attn_keep):
        return pallas_core(qq, qk, lq, lk, v, bias=bias, config=config, mask=mask)
    spec = dict(config=config, mask=mask, segment_ids=segment_ids, xp=xp, attn_keep=attn_keep)
    return attention_core_flash(qq, qk, lq, lk, v, bias=bias, **spec)


def flash_unsupported(config: FlashConfig, call: Call) -> str | None:
    """The guard of the Pallas core in :data:`flashcore.jax.xp.KERNELS`: None when
    :func:`can_use_kernel` passes, else why not."""
    if can_use_kernel(call.x, config, call.mask, call.segment_ids, call.attn_keep):
        return None
    return "the Pallas core needs a GPU or TPU and a call the 'pallas' table gives it"


def pallas_core(
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
    interpret: bool = False,
):
    """The core through the Pallas kernel (no dispatch). Shapes as :func:`flash_core`.

    Raises NotImplementedError for what the kernel does not cover (see :func:`can_use_kernel`).
    """
    reason = fused_core_unsupported("pallas", config, segment_ids=segment_ids)
    if reason is not None:
        raise NotImplementedError(f"the Pallas core does not cover this call: {reason}")
    b, t, _ = v.shape
    c = config.chunk_size
    pad = -t % c
    if mask is not None:  # a padded key or value reaches no query (as in the spec)
        keep = mask[..., None]
        qk, lk, v = (jnp.where(keep, a, jnp.zeros_like(a)) for a in (qk, lk, v))
    if pad:  # right-pad to whole chunks with zero keys and values
        qq, qk, lq, lk, v = (jnp.pad(a, ((0, 0), (0, pad), (0, 0))) for a in (qq, qk, lq, lk, v))
    if bias is None:
        bias = jnp.zeros((c, c), v.dtype)
    static = (c, config.causal, config.bias_before_scale, interpret)
    out = _core(qq, qk, lq, lk, v, bias.astype(v.dtype), static)
    return out[:, :t, :]


# --- the kernels ---------------------------------------------------------------------------------
# Shapes inside a program (one batch row): qq, qk, lq, lk (T, s); v, o (T, e); bias (C, C);
# T = g * C. Letters as in flashcore.ops.


def _dot(a, b):  # a @ b in float32
    return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _dot_t(a, b):  # a^T @ b
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _dot_nt(a, b):  # a @ b^T
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _scores(qq, qk, bias, c, causal, before):
    """Pre-activation S (C, C) and the relu^2 weights A (masked to the lower triangle if causal)."""
    p = _dot_nt(qq, qk)  # (c, k)
    s = (p + bias) / c if before else p / c + bias
    r = jnp.maximum(s, 0.0)
    if causal:
        row = jax.lax.broadcasted_iota(jnp.int32, (c, c), 0)
        col = jax.lax.broadcasted_iota(jnp.int32, (c, c), 1)
        r = jnp.where(col <= row, r, 0.0)
    return r, r * r  # relu(S) (masked), A


def _fwd_kernel(qq_ref, qk_ref, lq_ref, lk_ref, v_ref, bias_ref, o_ref, *, c, causal, before):
    g = qq_ref.shape[0] // c
    s, e = lk_ref.shape[1], v_ref.shape[1]
    bias = bias_ref[...].astype(jnp.float32)

    def chunk(j):
        return pl.ds(pl.multiple_of(j * c, c), c)

    def state_of(j, m):  # m + K^lin_j^T V_j / C
        return m + _dot_t(lk_ref[chunk(j), :], v_ref[chunk(j), :]) / c

    m0 = jnp.zeros((s, e), jnp.float32)
    total = m0 if causal else jax.lax.fori_loop(0, g, state_of, m0)

    def body(j, m):
        _, a = _scores(qq_ref[chunk(j), :], qk_ref[chunk(j), :], bias, c, causal, before)
        quad = _dot(a, v_ref[chunk(j), :].astype(jnp.float32))
        lin = _dot(lq_ref[chunk(j), :], m if causal else total)
        o_ref[chunk(j), :] = (quad + lin).astype(o_ref.dtype)
        return state_of(j, m) if causal else m

    jax.lax.fori_loop(0, g, body, m0)


def _bwd_kernel(
    qq_ref, qk_ref, lq_ref, lk_ref, v_ref, bias_ref, do_ref,
    dqq_ref, dqk_ref, dlq_ref, dlk_ref, dv_ref, dbias_ref, *, c, causal, before,
):  # fmt: skip
    g = qq_ref.shape[0] // c
    s, e = lk_ref.shape[1], v_ref.shape[1]
    bias = bias_ref[...].astype(jnp.float32)

    def chunk(j):
        return pl.ds(pl.multiple_of(j * c, c), c)

    def state_of(j, m):  # m + K^lin_j^T V_j / C
        return m + _dot_t(lk_ref[chunk(j), :], v_ref[chunk(j), :]) / c

    def dstate_of(j, dm):  # dm + Q^lin_j^T dO_j
        return dm + _dot_t(lq_ref[chunk(j), :], do_ref[chunk(j), :])

    m0 = jnp.zeros((s, e), jnp.float32)
    total = m0 if causal else jax.lax.fori_loop(0, g, state_of, m0)
    dtotal = m0 if causal else jax.lax.fori_loop(0, g, dstate_of, m0)

    # Pass 1, chunk order: the local part, dQ^lin, and (non-causal) dK^lin and V's linear part.
    def forward(j, carry):
        m, dbias = carry
        qq, qk, v, do = (
            qq_ref[chunk(j), :],
            qk_ref[chunk(j), :],
            v_ref[chunk(j), :],
            do_ref[chunk(j), :],
        )
        r, a = _scores(qq, qk, bias, c, causal, before)
        ds = _dot_nt(do, v) * 2.0 * r  # dL/dS (c, k)
        dqq_ref[chunk(j), :] = (_dot(ds, qk) / c).astype(dqq_ref.dtype)
        dqk_ref[chunk(j), :] = (_dot_t(ds, qq) / c).astype(dqk_ref.dtype)
        dv = _dot_t(a, do)  # (k, e)
        dlq_ref[chunk(j), :] = _dot_nt(do, m if causal else total).astype(dlq_ref.dtype)
        if not causal:
            lk = lk_ref[chunk(j), :]
            dlk_ref[chunk(j), :] = (_dot_nt(v, dtotal) / c).astype(dlk_ref.dtype)
            dv = dv + _dot(lk, dtotal) / c
        dv_ref[chunk(j), :] = dv.astype(dv_ref.dtype)
        dbias = dbias + (ds / c if before else ds)
        return (state_of(j, m) if causal else m), dbias

    _, dbias = jax.lax.fori_loop(0, g, forward, (m0, jnp.zeros((c, c), jnp.float32)))
    dbias_ref[...] = dbias.astype(dbias_ref.dtype)

    if causal:  # Pass 2, reverse order: chunk h's state reaches every later chunk's queries.

        def backward(i, dm):  # dm = sum over later chunks of Q^lin^T dO
            j = g - 1 - i
            v, lk = v_ref[chunk(j), :], lk_ref[chunk(j), :]
            dlk_ref[chunk(j), :] = (_dot_nt(v, dm) / c).astype(dlk_ref.dtype)
            dv_ref[chunk(j), :] = (dv_ref[chunk(j), :] + _dot(lk, dm) / c).astype(dv_ref.dtype)
            return dstate_of(j, dm)

        jax.lax.fori_loop(0, g, backward, m0)


def _row(shape):
    """BlockSpec: one batch row of a (b, T, n) array, the batch axis squeezed."""
    return pl.BlockSpec((None, *shape), lambda i: (i, 0, 0))


def _call_fwd(qq, qk, lq, lk, v, bias, static):
    c, causal, before, interpret = static
    b, tp, s = qq.shape
    e = v.shape[-1]
    kernel = functools.partial(_fwd_kernel, c=c, causal=causal, before=before)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((b, tp, e), v.dtype),
        grid=(b,),
        in_specs=[_row((tp, s))] * 4 + [_row((tp, e)), pl.BlockSpec((c, c), lambda i: (0, 0))],
        out_specs=_row((tp, e)),
        interpret=interpret,
    )(qq, qk, lq, lk, v, bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _core(qq, qk, lq, lk, v, bias, static):
    return _call_fwd(qq, qk, lq, lk, v, bias, static)


def _core_fwd(qq, qk, lq, lk, v, bias, static):
    return _call_fwd(qq, qk, lq, lk, v, bias, static), (qq, qk, lq, lk, v, bias)


def _core_bwd(static, res, do):
    c, causal, before, interpret = static
    qq, qk, lq, lk, v, bias = res
    b, tp, s = qq.shape
    e = v.shape[-1]
    kernel = functools.partial(_bwd_kernel, c=c, causal=causal, before=before)
    grads = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (qq, qk, lq, lk, v)]
        + [jax.ShapeDtypeStruct((b, c, c), jnp.float32)],
        grid=(b,),
        in_specs=[_row((tp, s))] * 4
        + [_row((tp, e)), pl.BlockSpec((c, c), lambda i: (0, 0)), _row((tp, e))],
        out_specs=[_row((tp, s))] * 4 + [_row((tp, e)), _row((c, c))],
        interpret=interpret,
    )(qq, qk, lq, lk, v, bias, do)
    *dqkv, dbias = grads
    return (*dqkv, jnp.sum(dbias, axis=0).astype(bias.dtype))


_core.defvjp(_core_fwd, _core_bwd)


# ---- the Transformer++ softmax core -------------------------------------------------------------

QUERY_BLOCK = 512
"""Query rows per ``jax.nn.dot_product_attention`` call in :func:`softmax_core` (longer inputs
run block by block; fwd + bwd at T = 1024, 8 heads of 64, under XLA on this CPU: 271-316 ms in
one block of 1024, 176-201 ms in blocks of 512, 298-303 ms the spec's)."""

FUSED_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def can_use_fused_attention(q, config, mask=None, segment_ids=None, attn_keep=None) -> bool:
    """Whether :func:`softmax_core` runs ``jax.nn.dot_product_attention`` for these inputs (else
    the spec's core): no dropout keep-mask ``attn_keep`` and q (b, n, t, hd) in float32, bfloat16
    or float16 (its softmax runs in float32, so float64 goes to the spec). Masks, segments, jit,
    grad and vmap are all fine."""
    return attn_keep is None and q.dtype in FUSED_DTYPES


def softmax_core_path(q, config, mask=None, segment_ids=None, attn_keep=None) -> str:
    """'fused' or 'spec': which core :func:`softmax_core` takes."""
    return "fused" if can_use_fused_attention(q, config, mask, segment_ids, attn_keep) else "spec"


def softmax_unsupported(config, call: Call) -> str | None:
    """The guard of :func:`softmax_core` in :data:`flashcore.jax.xp.KERNELS`: None when
    :func:`can_use_fused_attention` passes, else why not."""
    if can_use_fused_attention(call.x, config, call.mask, call.segment_ids, call.attn_keep):
        return None
    return "jax.nn.dot_product_attention takes no attn_keep and no float64"


def softmax_core(
    q,
    k,
    v,
    *,
    config,
    mask=None,
    segment_ids=None,
    attn_keep=None,
    xp=None,
    block: int | None = None,
):
    """q, k, v: (b, n, t, hd) -> (b, n, t, hd); see :func:`flashcore.lm.attention_core_softmax`.

    ``jax.nn.dot_product_attention`` when :func:`can_use_fused_attention` (and k, v share q's
    dtype), else the spec's core. ``block``: query rows per call (None: :data:`QUERY_BLOCK`).
    """
    same = k.dtype == q.dtype and v.dtype == q.dtype
    if not (same and can_use_fused_attention(q, config, mask, segment_ids, attn_keep)):
        return attention_core_softmax(
            q,
            k,
            v,
            config=config,
            mask=mask,
            segment_ids=segment_ids,
            attn_keep=attn_keep,
            xp=xp,
        )
    b, n, t, hd = q.shape
    block = QUERY_BLOCK if block is None else int(block)
    if block < 1:
        raise ValueError(f"block must be a positive number of query rows, got {block}")
    qt, kt, vt = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))  # (b, t, n, hd)
    k_pos = jnp.arange(t)
    attend = functools.partial(
        _attend, kt=kt, vt=vt, k_pos=k_pos, mask=mask, segment_ids=segment_ids, config=config
    )
    if t <= block:
        return jnp.swapaxes(attend(qt, k_pos, segment_ids, square=True), 1, 2)

    def one(start):  # the block of query rows start .. start + block - 1
        qb = jax.lax.dynamic_slice_in_dim(qt, start, block, axis=1)  # (b, block, n, hd)
        sb = None
        if segment_ids is not None:
            sb = jax.lax.dynamic_slice_in_dim(segment_ids, start, block, axis=1)  # (b, block)
        return attend(qb, start + jnp.arange(block), sb)

    full = t // block * block
    outs = jax.lax.map(jax.checkpoint(one), jnp.arange(0, full, block))  # (t // block, b, ...)
    out = jnp.reshape(jnp.moveaxis(outs, 0, 1), (b, full, n, hd))
    if full < t:  # the last rows, fewer than a block
        seg = None if segment_ids is None else segment_ids[:, full:]
        rest = jax.checkpoint(lambda qb, s: attend(qb, jnp.arange(full, t), s))(qt[:, full:], seg)
        out = jnp.concatenate([out, rest], axis=1)
    return jnp.swapaxes(out, 1, 2)


def _attend(qb, q_pos, q_seg, *, kt, vt, k_pos, mask, segment_ids, config, square=False):
    """Queries qb (b, r, n, hd) at positions q_pos (r,), segments q_seg (b, r) or None, against
    every key: kt, vt (b, t, n, hd) -> (b, r, n, hd). ``square``: the queries are the keys."""
    scale = 1.0 / math.sqrt(qb.shape[-1])
    if mask is None and segment_ids is None and (square or not config.causal):
        return jax.nn.dot_product_attention(qb, kt, vt, scale=scale, is_causal=config.causal)
    allowed = fused_softmax_allowed(
        config, q_pos, k_pos, mask, segment_ids, q_seg, xp=jnp
    )  # (b or 1, 1, r, t)
    return jax.nn.dot_product_attention(qb, kt, vt, mask=allowed, scale=scale)
