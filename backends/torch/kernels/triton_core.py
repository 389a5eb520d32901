"""Fused Triton kernels for the mixed-chunk attention core (forward and backward).

Importing this module imports Triton. On a machine without a GPU the kernels run in Triton's
interpreter when ``TRITON_INTERPRET=1`` is set before Triton is first imported (that is how the
tests check them against :func:`flashcore.layers.attention_core_flash`).

Layout: qq, qk, lq, lk: (b, t, s); v: (b, t, e), contiguous; chunk g holds rows [gC, gC + C).
Nothing is padded: rows at or past t are masked in every load and store.

Forward (one launch each):
  1. ``_states_kernel``: M[b, g] = Lk_g^T V_g (s, e) in float32, masked keys zeroed.
  2. ``_scan_kernel``: P[b, g] = w[b, g] * sum_{h<g} M[b, h] (causal, exclusive prefix) or
     P[b] = w[b] * sum_h M[b, h] (non-causal), float32; w is
     :func:`flashcore.torch.kernels._common.state_weights` (1/C for linear_norm='sum').
  3. ``_fwd_kernel``: per (chunk, query block, e block): S = Q K^T / C + B over the key blocks
     the causal triangle allows, R = relu(S) (masked), out = R^2 V + Lq P_g. R is stored
     (float32, (b, g, C, C)) for the backward.
Backward:
  1. ``_states_kernel`` on (Lq, dO): dP[b, g] = Lq_g^T dO_g; ``_scan_kernel`` reversed:
     dM[b, h] = sum_{g>h} w[b, g] dP[b, g] (causal) or w[b] sum_g dP[b, g].
  2. ``_ds_kernel``: dS = 2 R * (dO V^T) per (C, C) tile, float32 (zero above the diagonal).
  3. ``_dq_kernel``: dQq = dS K / C, dLq = dO P_g^T.
  4. ``_dk_kernel``: dQk = dS^T Qq / C, dLk = V dM_g^T (zero at masked keys).
  5. ``_dv_kernel``: dV = (R^2)^T dO + Lk dM_g (zero at masked keys).
  dB = the sum of dS over (b, g), in torch.
Scores, R, dS and the linear states are float32; tiles are cast to the input dtype for the
matmuls (tl.dot accumulates in float32). float32 inputs use IEEE matmuls (no TF32), so that the
kernel matches the spec to float32 rounding.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ._common import check_core_args, state_weights

__all__ = ["attention_core_triton", "TRITON_DTYPES"]

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(int(n)))


@triton.jit
def _mm(a, b, PREC: tl.constexpr, UP: tl.constexpr):
    """tl.dot with float32 accumulation; UP computes in float32 (only used under the
    interpreter, whose tl.dot mishandles bfloat16)."""
    if UP:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a, b, input_precision=PREC)
    return out


@triton.jit
def _states_kernel(
    a_ptr, b_ptr, keep_ptr, m_ptr, T, S, E, C, G,
    HAS_MASK: tl.constexpr, BK: tl.constexpr, BS: tl.constexpr, BE: tl.constexpr,
    PREC: tl.constexpr, UP: tl.constexpr,
):  # fmt: skip
    """M[b, g, s, e] = sum over the rows k of chunk g of a[b, k, s] * keep[b, k] * b[b, k, e]."""
    pid_bg = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_e = tl.program_id(2)
    bi = (pid_bg // G).to(tl.int64)
    g = pid_bg % G
    offs_s = pid_s * BS + tl.arange(0, BS)
    offs_e = pid_e * BE + tl.arange(0, BE)
    s_ok = offs_s < S
    e_ok = offs_e < E
    acc = tl.zeros((BS, BE), dtype=tl.float32)
    for k0 in range(0, C, BK):
        k_in = k0 + tl.arange(0, BK)
        rows = g * C + k_in
        r_ok = (k_in < C) & (rows < T)
        a = tl.load(
            a_ptr + (bi * T + rows)[:, None] * S + offs_s[None, :],
            mask=r_ok[:, None] & s_ok[None, :],
            other=0.0,
        )
        if HAS_MASK:
            kp = tl.load(keep_ptr + bi * T + rows, mask=r_ok, other=0)
            a = tl.where((kp != 0)[:, None], a, tl.zeros_like(a))
        bb = tl.load(
            b_ptr + (bi * T + rows)[:, None] * E + offs_e[None, :],
            mask=r_ok[:, None] & e_ok[None, :],
            other=0.0,
        )
        acc += _mm(tl.trans(a), bb, PREC, UP)
    out = m_ptr + ((pid_bg.to(tl.int64) * S + offs_s)[:, None]) * E + offs_e[None, :]
    tl.store(out, acc, mask=s_ok[:, None] & e_ok[None, :])


@triton.jit
def _scan_kernel(
    m_ptr, w_ptr, p_ptr, G, N,
    CAUSAL: tl.constexpr, REVERSE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Causal forward: P[g] = w[g] * sum_{h<g} M[h]; causal reverse: P[h] = sum_{g>h} w[g] M[g];
    non-causal: P = w * sum_h M[h]. M, P: (b, G, N) / (b, 1, N) float32; w: (b, G) / (b, 1)."""
    bi = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    run = tl.zeros((BLOCK,), dtype=tl.float32)
    if CAUSAL:
        for i in range(0, G):
            if REVERSE:
                g = G - 1 - i
            else:
                g = i
            mg = tl.load(m_ptr + (bi * G + g) * N + offs, mask=ok, other=0.0)
            wg = tl.load(w_ptr + bi * G + g)
            if REVERSE:
                tl.store(p_ptr + (bi * G + g) * N + offs, run, mask=ok)
                run += wg * mg
            else:
                tl.store(p_ptr + (bi * G + g) * N + offs, wg * run, mask=ok)
                run += mg
    else:
        for g in range(0, G):
            run += tl.load(m_ptr + (bi * G + g) * N + offs, mask=ok, other=0.0)
        wb = tl.load(w_ptr + bi)
        tl.store(p_ptr + bi * N + offs, wb * run, mask=ok)


@triton.jit
def _fwd_kernel(
    qq_ptr, qk_ptr, lq_ptr, v_ptr, keep_ptr, bias_ptr, p_ptr, out_ptr, r_ptr,
    T, S, E, C, G, inv_c,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE_R: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BS: tl.constexpr, BE: tl.constexpr,
    PREC: tl.constexpr, UP: tl.constexpr,
):  # fmt: skip
    pid0 = tl.program_id(0)
    pid_e = tl.program_id(1)
    bi = tl.program_id(2).to(tl.int64)
    nm = tl.cdiv(C, BM)
    g = pid0 // nm
    mb = pid0 % nm
    m_in = mb * BM + tl.arange(0, BM)
    rows = g * C + m_in
    m_ok = m_in < C
    r_ok = m_ok & (rows < T)
    offs_s = tl.arange(0, BS)
    s_ok = offs_s < S
    offs_e = pid_e * BE + tl.arange(0, BE)
    e_ok = offs_e < E
    q = tl.load(
        qq_ptr + (bi * T + rows)[:, None] * S + offs_s[None, :],
        mask=r_ok[:, None] & s_ok[None, :],
        other=0.0,
    )
    acc = tl.zeros((BM, BE), dtype=tl.float32)
    hi = C
    if CAUSAL:
        hi = tl.minimum(C, (mb + 1) * BM)
    for n0 in range(0, hi, BN):
        n_in = n0 + tl.arange(0, BN)
        cols = g * C + n_in
        n_ok = n_in < C
        c_ok = n_ok & (cols < T)
        if HAS_MASK:
            kp = tl.load(keep_ptr + bi * T + cols, mask=c_ok, other=0)
            c_ok = c_ok & (kp != 0)
        k = tl.load(
            qk_ptr + (bi * T + cols)[:, None] * S + offs_s[None, :],
            mask=c_ok[:, None] & s_ok[None, :],
            other=0.0,
        )
        sc = _mm(q, tl.trans(k), PREC, UP) * inv_c
        if HAS_BIAS:
            sc += tl.load(
                bias_ptr + m_in[:, None] * C + n_in[None, :],
                mask=m_ok[:, None] & n_ok[None, :],
                other=0.0,
            ).to(tl.float32)
        allowed = r_ok[:, None] & c_ok[None, :]
        if CAUSAL:
            allowed = allowed & (n_in[None, :] <= m_in[:, None])
        r = tl.where(allowed, tl.maximum(sc, 0.0), 0.0)
        if SAVE_R:
            if pid_e == 0:
                tl.store(
                    r_ptr + ((bi * G + g) * C + m_in)[:, None] * C + n_in[None, :],
                    r,
                    mask=m_ok[:, None] & n_ok[None, :],
                )
        vv = tl.load(
            v_ptr + (bi * T + cols)[:, None] * E + offs_e[None, :],
            mask=c_ok[:, None] & e_ok[None, :],
            other=0.0,
        )
        acc += _mm((r * r).to(vv.dtype), vv, PREC, UP)
    lqb = tl.load(
        lq_ptr + (bi * T + rows)[:, None] * S + offs_s[None, :],
        mask=r_ok[:, None] & s_ok[None, :],
        other=0.0,
    )
    if CAUSAL:
        pidx = bi * G + g
    else:
        pidx = bi
    pt = tl.load(
        p_ptr + (pidx * S + offs_s)[:, None] * E + offs_e[None, :],
        mask=s_ok[:, None] & e_ok[None, :],
        other=0.0,
    )
    acc += _mm(lqb, pt.to(lqb.dtype), PREC, UP)
    tl.store(
        out_ptr + (bi * T + rows)[:, None] * E + offs_e[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=r_ok[:, None] & e_ok[None, :],
    )


@triton.jit
def _ds_kernel(
    do_ptr, v_ptr, r_ptr, ds_ptr, T, E, C, G,
    CAUSAL: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BE: tl.constexpr,
    PREC: tl.constexpr, UP: tl.constexpr,
):  # fmt: skip
    """dS = 2 R * (dO V^T) for one (BM, BN) tile of chunk g (float32)."""
    pid0 = tl.program_id(0)
    nb = tl.program_id(1)
    bi = tl.program_id(2).to(tl.int64)
    nm = tl.cdiv(C, BM)
    g = pid0 // nm
    mb = pid0 % nm
    last = C  # the last key column this query block may read
    if CAUSAL:
        last = mb * BM + BM - 1
    if nb * BN <= last:  # causal: tiles above the diagonal stay zero
        m_in = mb * BM + tl.arange(0, BM)
        n_in = nb * BN + tl.arange(0, BN)
        rows = g * C + m_in
        cols = g * C + n_in
        m_ok = m_in < C
        n_ok = n_in < C
        r_ok = m_ok & (rows < T)
        c_ok = n_ok & (cols < T)
        da = tl.zeros((BM, BN), dtype=tl.float32)
        for e0 in range(0, E, BE):
            offs_e = e0 + tl.arange(0, BE)
            e_ok = offs_e < E
            d = tl.load(
                do_ptr + (bi * T + rows)[:, None] * E + offs_e[None, :],
                mask=r_ok[:, None] & e_ok[None, :],
                other=0.0,
            )
            vv = tl.load(
                v_ptr + (bi * T + cols)[:, None] * E + offs_e[None, :],
                mask=c_ok[:, None] & e_ok[None, :],
                other=0.0,
            )
            da += _mm(d, tl.trans(vv), PREC, UP)
        tile = ((bi * G + g) * C + m_in)[:, None] * C + n_in[None, :]
        tmask = m_ok[:, None] & n_ok[None, :]
        r = tl.load(r_ptr + tile, mask=tmask, other=0.0)
        tl.store(ds_ptr + tile, 2.0 * r * da, mask=tmask)


@triton.jit
def _dq_kernel(
    ds_ptr, qk_ptr, do_ptr, p_ptr, dqq_ptr, dlq_ptr, T, S, E, C, G, inv_c,
    CAUSAL: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BS: tl.constexpr,
    BE: tl.constexpr, PREC: tl.constexpr, UP: tl.constexpr,
):  # fmt: skip
    """dQq = dS K / C and dLq = dO P_g^T for one query block."""
    pid0 = tl.program_id(0)
    bi = tl.program_id(1).to(tl.int64)
    nm = tl.cdiv(C, BM)
    g = pid0 // nm
    mb = pid0 % nm
    m_in = mb * BM + tl.arange(0, BM)
    rows = g * C + m_in
    m_ok = m_in < C
    r_ok = m_ok & (rows < T)
    offs_s = tl.arange(0, BS)
    s_ok = offs_s < S
    acc = tl.zeros((BM, BS), dtype=tl.float32)
    hi = C
    if CAUSAL:
        hi = tl.minimum(C, (mb + 1) * BM)
    for n0 in range(0, hi, BN):
        n_in = n0 + tl.arange(0, BN)
        cols = g * C + n_in
        n_ok = n_in < C
        c_ok = n_ok & (cols < T)
        ds = tl.load(
            ds_ptr + ((bi * G + g) * C + m_in)[:, None] * C + n_in[None, :],
            mask=m_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        k = tl.load(
            qk_ptr + (bi * T + cols)[:, None] * S + offs_s[None, :],
            mask=c_ok[:, None] & s_ok[None, :],
            other=0.0,
        )
        acc += _mm(ds.to(k.dtype), k, PREC, UP)
    dst = (bi * T + rows)[:, None] * S + offs_s[None, :]
    smask = r_ok[:, None] & s_ok[None, :]
    tl.store(dqq_ptr + dst, (acc * inv_c).to(dqq_ptr.dtype.element_ty), mask=smask)
    if CAUSAL:
        pidx = bi * G + g
    else:
        pidx = bi
    acc2 = tl.zeros((BM, BS), dtype=tl.float32)
    for e0 in range(0, E, BE):
        offs_e = e0 + tl.arange(0, BE)
        e_ok = offs_e < E
        d = tl.load(
            do_ptr + (bi * T + rows)[:, None] * E + offs_e[None, :],
            mask=r_ok[:, None] & e_ok[None, :],
            other=0.0,
        )
        pt = tl.load(
            p_ptr + (pidx * S + offs_s)[:, None] * E + offs_e[None, :],
            mask=s_ok[:, None] & e_ok[None, :],
            other=0.0,
        )
        acc2 += _mm(d, tl.trans(pt.to(d.dtype)), PREC, UP)
    tl.store(dlq_ptr + dst, acc2.to(dlq_ptr.dtype.element_ty), mask=smask)


@triton.jit
def _dk_kernel(
    ds_ptr, qq_ptr, v_ptr, dm_ptr, keep_ptr, dqk_ptr, dlk_ptr, T, S, E, C, G, inv_c,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    BS: tl.constexpr, BE: tl.constexpr, PREC: tl.constexpr, UP: tl.constexpr,
):  # fmt: skip
    """dQk = dS^T Qq / C and dLk = V dM_g^T for one key block, zero at masked keys."""
    pid0 = tl.program_id(0)
    bi = tl.program_id(1).to(tl.int64)
    nn = tl.cdiv(C, BN)
    g = pid0 // nn
    nb = pid0 % nn
    n_in = nb * BN + tl.arange(0, BN)
    cols = g * C + n_in
    n_ok = n_in < C
    c_ok = n_ok & (cols < T)
    offs_s = tl.arange(0, BS)
    s_ok = offs_s < S
    acc = tl.zeros((BN, BS), dtype=tl.float32)
    lo = 0
    if CAUSAL:
        lo = (nb * BN // BM) * BM
    for m0 in range(lo, C, BM):
        m_in = m0 + tl.arange(0, BM)
        rows = g * C + m_in
        m_ok = m_in < C
        r_ok = m_ok & (rows < T)
        ds = tl.load(
            ds_ptr + ((bi * G + g) * C + m_in)[:, None] * C + n_in[None, :],
            mask=m_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        q = tl.load(
            qq_ptr + (bi * T + rows)[:, None] * S + offs_s[None, :],
            mask=r_ok[:, None] & s_ok[None, :],
            other=0.0,
        )
        acc += _mm(tl.trans(ds.to(q.dtype)), q, PREC, UP)
    acc = acc * inv_c
    if CAUSAL:
        pidx = bi * G + g
    else:
        pidx = bi
    acc2 = tl.zeros((BN, BS), dtype=tl.float32)
    for e0 in range(0, E, BE):
        offs_e = e0 + tl.arange(0, BE)
        e_ok = offs_e < E
        vv = tl.load(
            v_ptr + (bi * T + cols)[:, None] * E + offs_e[None, :],
            mask=c_ok[:, None] & e_ok[None, :],
            other=0.0,
        )
        dm = tl.load(
            dm_ptr + (pidx * S + offs_s)[:, None] * E + offs_e[None, :],
            mask=s_ok[:, None] & e_ok[None, :],
            other=0.0,
        )
        acc2 += _mm(vv, tl.trans(dm.to(vv.dtype)), PREC, UP)
    keep = c_ok
    if HAS_MASK:
        kp = tl.load(keep_ptr + bi * T + cols, mask=c_ok, other=0)
        keep = keep & (kp != 0)
    acc = tl.where(keep[:, None], acc, 0.0)
    acc2 = tl.where(keep[:, None], acc2, 0.0)
    dst = (bi * T + cols)[:, None] * S + offs_s[None, :]
    smask = c_ok[:, None] & s_ok[None, :]
    tl.store(dqk_ptr + dst, acc.to(dqk_ptr.dtype.element_ty), mask=smask)
    tl.store(dlk_ptr + dst, acc2.to(dlk_ptr.dtype.element_ty), mask=smask)


@triton.jit
def _dv_kernel(
    r_ptr, do_ptr, lk_ptr, dm_ptr, keep_ptr, dv_ptr, T, S, E, C, G,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    BS: tl.constexpr, BE: tl.constexpr, PREC: tl.constexpr, UP: tl.constexpr,
):  # fmt: skip
    """dV = (R^2)^T dO + Lk dM_g for one (key block, e block), zero at masked keys."""
    pid0 = tl.program_id(0)
    pid_e = tl.program_id(1)
    bi = tl.program_id(2).to(tl.int64)
    nn = tl.cdiv(C, BN)
    g = pid0 // nn
    nb = pid0 % nn
    n_in = nb * BN + tl.arange(0, BN)
    cols = g * C + n_in
    n_ok = n_in < C
    c_ok = n_ok & (cols < T)
    offs_e = pid_e * BE + tl.arange(0, BE)
    e_ok = offs_e < E
    offs_s = tl.arange(0, BS)
    s_ok = offs_s < S
    acc = tl.zeros((BN, BE), dtype=tl.float32)
    lo = 0
    if CAUSAL:
        lo = (nb * BN // BM) * BM
    for m0 in range(lo, C, BM):
        m_in = m0 + tl.arange(0, BM)
        rows = g * C + m_in
        m_ok = m_in < C
        r_ok = m_ok & (rows < T)
        r = tl.load(
            r_ptr + ((bi * G + g) * C + m_in)[:, None] * C + n_in[None, :],
            mask=m_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        d = tl.load(
            do_ptr + (bi * T + rows)[:, None] * E + offs_e[None, :],
            mask=r_ok[:, None] & e_ok[None, :],
            other=0.0,
        )
        acc += _mm(tl.trans((r * r).to(d.dtype)), d, PREC, UP)
    if CAUSAL:
        pidx = bi * G + g
    else:
        pidx = bi
    lk = tl.load(
        lk_ptr + (bi * T + cols)[:, None] * S + offs_s[None, :],
        mask=c_ok[:, None] & s_ok[None, :],
        other=0.0,
    )
    dm = tl.load(
        dm_ptr + (pidx * S + offs_s)[:, None] * E + offs_e[None, :],
        mask=s_ok[:, None] & e_ok[None, :],
        other=0.0,
    )
    acc += _mm(lk, dm.to(lk.dtype), PREC, UP)
    keep = c_ok
    if HAS_MASK:
        kp = tl.load(keep_ptr + bi * T + cols, mask=c_ok, other=0)
        keep = keep & (kp != 0)
    acc = tl.where(keep[:, None], acc, 0.0)
    tl.store(
        dv_ptr + (bi * T + cols)[:, None] * E + offs_e[None, :],
        acc.to(dv_ptr.dtype.element_ty),
        mask=c_ok[:, None] & e_ok[None, :],
    )


def _blocks(c: int, s: int, e: int) -> dict:
    bm = min(64, _pow2(c))
    return dict(BM=bm, BN=bm, BS=_pow2(s), BE=min(64, _pow2(e)))


class _TritonCore(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qq, qk, lq, lk, v, bias, keep, w, c, causal):
        qq, qk, lq, lk, v = (a.contiguous() for a in (qq, qk, lq, lk, v))
        b, t, s = qq.shape
        e = v.shape[-1]
        g = -(-t // c)
        dev = v.device
        blk = _blocks(c, s, e)
        bm, bs, be = blk["BM"], blk["BS"], blk["BE"]
        prec = "ieee" if v.dtype == torch.float32 else "tf32"
        up = _interpreted() and v.dtype == torch.bfloat16
        has_mask = keep is not None
        keep_arg = keep if has_mask else torch.zeros(1, dtype=torch.int8, device=dev)
        f32 = dict(dtype=torch.float32, device=dev)
        # Chunk states and their prefix sums.
        m = torch.empty((b, g, s, e), **f32)
        _states_kernel[(b * g, triton.cdiv(s, bs), triton.cdiv(e, be))](
            lk, v, keep_arg, m, t, s, e, c, g,
            HAS_MASK=has_mask, BK=bm, BS=bs, BE=be, PREC=prec, UP=up,
        )  # fmt: skip
        p = torch.empty((b, g if causal else 1, s, e), **f32)
        scan_block = min(1024, _pow2(s * e))
        _scan_kernel[(b, triton.cdiv(s * e, scan_block))](
            m, w, p, g, s * e, CAUSAL=causal, REVERSE=False, BLOCK=scan_block
        )
        del m
        need_grad = any(ctx.needs_input_grad[:6])
        r = torch.empty((b, g, c, c), **f32) if need_grad else torch.empty(1, **f32)
        out = torch.empty((b, t, e), dtype=v.dtype, device=dev)
        bias_arg = bias.contiguous() if bias is not None else torch.zeros(1, **f32)
        _fwd_kernel[(g * triton.cdiv(c, bm), triton.cdiv(e, be), b)](
            qq, qk, lq, v, keep_arg, bias_arg, p, out, r, t, s, e, c, g, 1.0 / c,
            CAUSAL=causal, HAS_MASK=has_mask, HAS_BIAS=bias is not None, SAVE_R=need_grad,
            PREC=prec, UP=up, **blk,
        )  # fmt: skip
        if need_grad:
            ctx.save_for_backward(qq, qk, lq, lk, v, keep_arg, w, r, p)
        ctx.dims = (b, t, s, e, c, g, causal, has_mask, prec, up)
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        qq, qk, lq, lk, v, keep_arg, w, r, p = ctx.saved_tensors
        b, t, s, e, c, g, causal, has_mask, prec, up = ctx.dims
        dout = dout.to(v.dtype).contiguous()
        dev = v.device
        blk = _blocks(c, s, e)
        bm, bn, bs, be = blk["BM"], blk["BN"], blk["BS"], blk["BE"]
        f32 = dict(dtype=torch.float32, device=dev)
        dp = torch.empty((b, g, s, e), **f32)
        _states_kernel[(b * g, triton.cdiv(s, bs), triton.cdiv(e, be))](
            lq, dout, keep_arg, dp, t, s, e, c, g,
            HAS_MASK=False, BK=bm, BS=bs, BE=be, PREC=prec, UP=up,
        )  # fmt: skip
        dm = torch.empty_like(p)
        scan_block = min(1024, _pow2(s * e))
        _scan_kernel[(b, triton.cdiv(s * e, scan_block))](
            dp, w, dm, g, s * e, CAUSAL=causal, REVERSE=True, BLOCK=scan_block
        )
        del dp
        nm, nn = triton.cdiv(c, bm), triton.cdiv(c, bn)
        ds = torch.zeros((b, g, c, c), **f32)
        _ds_kernel[(g * nm, nn, b)](
            dout, v, r, ds, t, e, c, g, CAUSAL=causal, BM=bm, BN=bn, BE=be, PREC=prec, UP=up
        )
        dqq, dqk, dlq, dlk = (torch.empty_like(a) for a in (qq, qk, lq, lk))
        dv = torch.empty_like(v)
        _dq_kernel[(g * nm, b)](
            ds, qk, dout, p, dqq, dlq, t, s, e, c, g, 1.0 / c,
            CAUSAL=causal, PREC=prec, UP=up, **blk,
        )  # fmt: skip
        _dk_kernel[(g * nn, b)](
            ds, qq, v, dm, keep_arg, dqk, dlk, t, s, e, c, g, 1.0 / c,
            CAUSAL=causal, HAS_MASK=has_mask, PREC=prec, UP=up, **blk,
        )  # fmt: skip
        _dv_kernel[(g * nn, triton.cdiv(e, be), b)](
            r, dout, lk, dm, keep_arg, dv, t, s, e, c, g,
            CAUSAL=causal, HAS_MASK=has_mask, PREC=prec, UP=up, **blk,
        )  # fmt: skip
        dbias = None
        if ctx.bias_dtype is not None:
            dbias = ds.sum(dim=(0, 1)).to(ctx.bias_dtype)
        return dqq, dqk, dlq, dlk, dv, dbias, None, None, None, None


def attention_core_triton(qq, qk, lq, lk, v, *, bias, config, mask=None, segment_ids=None, xp=None):
    """The fused Triton core; same signature and result as
    :func:`flashcore.layers.attention_core_flash` for the supported configuration.

    qq, qk, lq, lk: (b, t, s); v: (b, t, e); bias: (C, C) or None; mask: (b, t) bool or None;
    segment_ids must be None. Returns (b, t, e) in the dtype of v. Under autocast float32 inputs
    run in the autocast dtype (the result is cast back to float32). Runs on any device Triton
    can target, or on the CPU under ``TRITON_INTERPRET=1``; the dispatcher only sends CUDA
    tensors here.
    """
    check_core_args(qq, qk, lq, lk, v, bias, config, mask, segment_ids, "triton")
    if v.dtype not in TRITON_DTYPES:
        raise TypeError(f"the Triton core runs float16, bfloat16 and float32, not {v.dtype}")
    dev = v.device.type
    odt = cdt = v.dtype
    if cdt == torch.float32 and torch.is_autocast_enabled(dev):
        cdt = torch.get_autocast_dtype(dev)
    b, t, _ = v.shape
    with torch.autocast(dev, enabled=False):
        args = [a.to(cdt) for a in (qq, qk, lq, lk, v)]
        if bias is not None and config.bias_before_scale:  # (Q K^T + B) / C
            bias = bias * (1.0 / config.chunk_size)
        keep = mask.to(torch.int8).contiguous() if mask is not None else None
        w = state_weights(mask, b, t, config, device=v.device).to(torch.float32).contiguous()
        out = _TritonCore.apply(*args, bias, keep, w, config.chunk_size, config.causal)
        return out.to(odt)
