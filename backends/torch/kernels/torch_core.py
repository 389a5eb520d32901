"""The mixed-chunk attention core as one autograd Function over blocked torch matmuls.

This is the CPU fast path (it runs on any torch device). It computes exactly what
:func:`flashcore.layers.attention_core_flash` computes for the supported configuration (see
:func:`flashcore.torch.kernels._common.unsupported_reason`), with a hand-written backward:

    per chunk g (b and g flattened):  S = Q_g K_g^T / C + B,  R = relu(S) (lower triangle if
    causal),  quad_g = R^2 V_g;   M_g = Lk_g^T V_g,  P_g = w_g * (the sum of M_h over h < g when
    causal, over all h when not), w from :func:`._common.state_weights` (1 / C for 'sum');
    out_g = quad_g + Lq_g P_g.

    dV_g = (R^2)^T dO_g + Lk_g dM_g;  dS = 2 R * (dO_g V_g^T);  dQ = dS K / C;  dK = dS^T Q / C;
    dB = sum_g dS;  dLq_g = dO_g P_g^T;  dM_h = the sum of w_g Lq_g^T dO_g over the chunks g whose
    state includes h;  dLk_g = V_g dM_g^T.

Only R (one (C, C) matrix per chunk) and the chunk states are saved for the backward; the
quadratic part runs block by block (a few chunks at a time) so that S, R^2 and their gradients
stay in cache. Masked keys are handled by zeroing K, Lk and V there (R may then be nonzero at a
masked key, but it multiplies a zero value and its gradient is zero, so every result is equal to
the spec's). Matmuls run in the input dtype; in bfloat16 / float16 they accumulate in float32
inside the BLAS kernel, and the cross-chunk state is summed in float32. Under CPU or CUDA
autocast the float32 inputs are cast to the autocast dtype first, which is what the spec does
under autocast for its own matmuls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import check_core_args, state_weights

__all__ = ["attention_core_torch", "gau_core_torch", "BLOCK_TOKENS", "GAU_BLOCK"]

#: Query rows per block of the quadratic part (rounded to whole chunks, at least one chunk).
BLOCK_TOKENS = 1024


def _chunked(a, pad: int, c: int):
    """(b, t, x) -> (b * g, c, x), right-padded with zeros along t."""
    if pad:
        a = F.pad(a, (0, 0, 0, pad))
    return a.reshape(-1, c, a.shape[-1])


def _compute_dtype(v):
    """The dtype a core computes in: v's, or under autocast on v's device the autocast dtype for
    float32 inputs (what the spec's own matmuls would run in there)."""
    dev = v.device.type
    if v.dtype == torch.float32 and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return v.dtype


def _acc_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _target(dst, scratch, i0: int, i1: int):
    """Where a block result is computed: dst's slice when dtypes agree, else scratch."""
    return dst[i0:i1] if scratch is None else scratch[: i1 - i0]


def _store(dst, res, scratch, i0: int, i1: int) -> None:
    if scratch is not None:
        dst[i0:i1].copy_(res)


def core_forward(qq, qk, lq, lk, v, bias, keep, wts, c, causal, block, cdt, need_grad):
    """The forward of :class:`_MixedChunkCore` (also run by the fused layer of
    :mod:`.torch_layer`): (out (b, t, e) in v's dtype, saved, dims); ``saved`` and ``dims`` are
    what :func:`core_backward` takes (``saved`` is None without ``need_grad``)."""
    b, t, s = qq.shape
    e = v.shape[-1]
    g = -(-t // c)
    pad = g * c - t
    odt = v.dtype  # dtype of the output and of the input gradients
    acc = _acc_dtype(cdt)
    dev = v.device
    inv_c = 1.0 / c
    keep = keep.to(cdt) if keep is not None else None  # (b, t, 1) 0/1

    def prep(a, masked):  # (b, t, x) -> (b*g, c, x) in cdt, zero at masked keys
        a = a.to(cdt)
        if masked and keep is not None:
            a = a * keep
        return _chunked(a, pad, c)

    qq_, lq_ = prep(qq, False), prep(lq, False)
    qk_, lk_, v_ = prep(qk, True), prep(lk, True), prep(v, True)
    keep_ = _chunked(keep, pad, c) if keep is not None else None

    nb = max(1, min(g, block // c))
    rbuf = torch.empty((b * g if need_grad else nb, c, c), dtype=cdt, device=dev)
    abuf = torch.empty((nb, c, c), dtype=cdt, device=dev)
    out = torch.empty((b * g, c, e), dtype=odt, device=dev)
    obuf = torch.empty((nb, c, e), dtype=cdt, device=dev) if odt != cdt else None
    bias_ = bias.to(cdt).expand(nb, c, c) if bias is not None else None
    if causal:  # one state per chunk, saved for the backward
        pbuf = torch.empty((b * g if need_grad else nb, s, e), dtype=cdt, device=dev)
    else:  # one state per batch row: sum over all chunks of Lk^T V / C
        lk2, v2 = lk_.view(b, g * c, s), v_.view(b, g * c, e)
        pbuf = torch.empty((b, s, e), dtype=cdt, device=dev)
        for bi in range(b):
            st = torch.mm(lk2[bi].t(), v2[bi]).to(acc)
            pbuf[bi].copy_(st.mul_(wts[bi][0]))
    for bi in range(b):
        run = torch.zeros((s, e), dtype=acc, device=dev) if causal else None
        for g0 in range(0, g, nb):
            g1 = min(g, g0 + nb)
            n = g1 - g0
            i0, i1 = bi * g + g0, bi * g + g1
            q_b, k_b, v_b = qq_[i0:i1], qk_[i0:i1], v_[i0:i1]
            r = rbuf[i0:i1] if need_grad else rbuf[:n]
            if bias_ is not None:
                torch.baddbmm(bias_[:n], q_b, k_b.transpose(1, 2), alpha=inv_c, out=r)
            else:
                torch.bmm(q_b, k_b.transpose(1, 2), out=r).mul_(inv_c)
            r.relu_()
            if causal:
                r.tril_()
            a = torch.mul(r, r, out=abuf[:n])
            o = _target(out, obuf, i0, i1)
            if causal:
                p = pbuf[i0:i1] if need_grad else pbuf[:n]
                m = torch.bmm(lk_[i0:i1].transpose(1, 2).contiguous(), v_b)  # (n, s, e)
                for j in range(n):
                    p[j].copy_(run * wts[bi][g0 + j])
                    run.add_(m[j])
                torch.bmm(lq_[i0:i1], p, out=o)
            else:
                torch.mm(lq_[i0:i1].reshape(-1, s), pbuf[bi], out=o.view(-1, e))
            o.baddbmm_(a, v_b)
            _store(out, o, obuf, i0, i1)
    del abuf, obuf
    saved = (qq_, qk_, lq_, lk_, v_, rbuf, pbuf, keep_) if need_grad else None
    dims = (b, t, s, e, c, g, pad, causal, block, wts, bias.dtype if bias is not None else None)
    out = out.view(b, g * c, e)
    return (out[:, :t] if pad else out), saved, dims


def core_backward(saved, dims, dout, out=None):
    """The backward of :class:`_MixedChunkCore`: (dqq, dqk, dlq, dlk, dv, dbias) from
    :func:`core_forward`'s ``saved`` and ``dims`` and dout (b, t, e), in dout's dtype. ``out``:
    None, or for each of qq, qk, lq, lk, v where its gradient is written, a (b * g, c, x) tensor
    in dout's dtype (a view with rows of any stride) or None."""
    qq_, qk_, lq_, lk_, v_, rbuf, pbuf, keep_ = saved
    b, t, s, e, c, g, pad, causal, block, wts, bias_dtype = dims
    has_bias = bias_dtype is not None
    cdt = v_.dtype
    odt = dout.dtype
    acc = _acc_dtype(cdt)
    dev = v_.device
    inv_c = 1.0 / c
    two_c = 2.0 * inv_c
    do_ = _chunked(dout.to(cdt), pad, c)  # (b*g, c, e)
    if not do_.is_contiguous():
        do_ = do_.contiguous()
    nb = max(1, min(g, block // c))
    conv = odt != cdt
    dsbuf = torch.empty((nb, c, c), dtype=cdt, device=dev)
    grads, scratch = [], []
    for a, o in zip((qq_, qk_, lq_, lk_, v_), out or [None] * 5):
        grads.append(torch.empty(a.shape, dtype=odt, device=dev) if o is None else o)
        scratch.append(torch.empty((nb, c, a.shape[-1]), dtype=cdt, device=dev) if conv else None)
    dqq, dqk, dlq, dlk, dv = grads
    sqq, sqk, slq, slk, sv = scratch
    dbias = torch.zeros((c, c), dtype=acc, device=dev) if has_bias else None
    if causal:
        dmbuf = torch.empty((nb, s, e), dtype=cdt, device=dev)
    else:  # dM = sum over all chunks of Lq^T dO / C, one per batch row
        lq2, do2 = lq_.view(b, g * c, s), do_.view(b, g * c, e)
        dmbuf = torch.empty((b, s, e), dtype=cdt, device=dev)
        for bi in range(b):
            st = torch.mm(lq2[bi].t(), do2[bi]).to(acc)
            dmbuf[bi].copy_(st.mul_(wts[bi][0]))
    for bi in range(b):
        drun = torch.zeros((s, e), dtype=acc, device=dev) if causal else None
        starts = list(range(0, g, nb))
        for g0 in reversed(starts) if causal else starts:
            g1 = min(g, g0 + nb)
            n = g1 - g0
            i0, i1 = bi * g + g0, bi * g + g1
            r, do, v_b = rbuf[i0:i1], do_[i0:i1], v_[i0:i1]
            if causal:  # dM_h = sum over g > h of dP_g, walking the chunks backwards
                dp = torch.bmm(lq_[i0:i1].transpose(1, 2).contiguous(), do)  # (n, s, e)
                dm = dmbuf[:n]
                for j in reversed(range(n)):
                    dm[j].copy_(drun)
                    drun.add_(dp[j], alpha=wts[bi][g0 + j])
                p = pbuf[i0:i1]
            else:
                dm = dmbuf[bi]
                p = pbuf[bi]
            ds = torch.bmm(do, v_b.transpose(1, 2), out=dsbuf[:n])  # dA
            ds.mul_(r)  # dS / 2 (zero where R is)
            if dbias is not None:
                dbias += ds.sum(dim=0, dtype=acc)
            o = _target(dqq, sqq, i0, i1)
            torch.bmm(ds, qk_[i0:i1], out=o).mul_(two_c)
            _store(dqq, o, sqq, i0, i1)
            o = _target(dqk, sqk, i0, i1)
            torch.bmm(ds.transpose(1, 2), qq_[i0:i1], out=o).mul_(two_c)
            if keep_ is not None:
                o.mul_(keep_[i0:i1])
            _store(dqk, o, sqk, i0, i1)
            rt = r.transpose(1, 2)
            at = torch.mul(rt, rt, out=ds)  # (R^2)^T, reusing the buffer
            o = _target(dv, sv, i0, i1)
            torch.bmm(at, do, out=o)
            if causal:
                o.baddbmm_(lk_[i0:i1], dm)
            else:
                o.view(-1, e).addmm_(lk_[i0:i1].reshape(-1, s), dm)
            if keep_ is not None:
                o.mul_(keep_[i0:i1])
            _store(dv, o, sv, i0, i1)
            o = _target(dlk, slk, i0, i1)
            if causal:
                torch.bmm(v_b, dm.transpose(1, 2), out=o)
            else:
                torch.mm(v_b.reshape(-1, e), dm.t(), out=o.view(-1, s))
            if keep_ is not None:
                o.mul_(keep_[i0:i1])
            _store(dlk, o, slk, i0, i1)
            o = _target(dlq, slq, i0, i1)
            if causal:
                torch.bmm(do, p.transpose(1, 2), out=o)
            else:
                torch.mm(do.reshape(-1, e), p.t(), out=o.view(-1, s))
            _store(dlq, o, slq, i0, i1)
    del dsbuf, scratch

    def unchunk(a):
        a = a.view(b, g * c, a.shape[-1])
        return a[:, :t] if pad else a

    grads = [unchunk(a) for a in grads]
    if dbias is not None:
        dbias = (2.0 * dbias).to(bias_dtype)
    return (*grads, dbias)


class _MixedChunkCore(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qq, qk, lq, lk, v, bias, keep, wts, c, causal, block, cdt):
        need_grad = any(ctx.needs_input_grad[:6])
        args = (qq, qk, lq, lk, v, bias, keep, wts, c, causal, block, cdt, need_grad)
        out, saved, ctx.dims = core_forward(*args)
        if saved is not None:
            ctx.save_for_backward(*saved)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        grads = core_backward(ctx.saved_tensors, ctx.dims, dout)
        return (*grads, None, None, None, None, None, None)


def attention_core_torch(
    qq, qk, lq, lk, v, *, bias, config, mask=None, segment_ids=None, xp=None, block_tokens=None
):
    """The mixed-chunk core with a hand-written backward (see the module docstring).

    qq, qk, lq, lk: (b, t, s); v: (b, t, e); bias: (C, C) or None; mask: (b, t) bool or None;
    segment_ids must be None. Returns (b, t, e) in v's dtype. Under autocast (on the inputs'
    device) float32 inputs are computed in the autocast dtype and the result is float32.
    ``block_tokens``: query rows per block (default :data:`BLOCK_TOKENS`). ``xp`` is accepted
    for signature compatibility with :func:`flashcore.layers.attention_core_flash` and ignored.
    """

    check_core_args(qq, qk, lq, lk, v, bias, config, mask, segment_ids, "torch")
    dev, cdt = v.device.type, _compute_dtype(v)
    with torch.autocast(dev, enabled=False):
        keep = mask[..., None] if mask is not None else None
        if bias is not None and config.bias_before_scale:  # (Q K^T + B) / C = Q K^T / C + B / C
            bias = bias * (1.0 / config.chunk_size)
        return _MixedChunkCore.apply(
            qq,
            qk,
            lq,
            lk,
            v,
            bias,
            keep,
            state_weights(mask, v.shape[0], v.shape[1], config, device="cpu").tolist(),
            config.chunk_size,
            config.causal,
            BLOCK_TOKENS if block_tokens is None else int(block_tokens),
            cdt,
        )


#: Query rows per block of GAU's blocked quadratic core.
GAU_BLOCK = 512


def gau_forward(q, k, v, bias, keep, scale, causal, block, cdt, need_grad):
    """The forward of :class:`_BlockedQuadCore` (also run by the fused layer of
    :mod:`.torch_layer`): (out (b, t, e) in v's dtype, saved, dims) for :func:`gau_backward`
    (``saved`` is None without ``need_grad``)."""
    b, t, _ = q.shape
    e = v.shape[-1]
    odt, acc, dev = v.dtype, _acc_dtype(cdt), v.device
    keep_ = keep.to(cdt) if keep is not None else None  # (b, t, 1) 0/1
    q_ = q.to(cdt)
    k_ = k.to(cdt) if keep_ is None else k.to(cdt) * keep_
    v_ = v.to(cdt) if keep_ is None else v.to(cdt) * keep_
    bias_ = bias.to(cdt) if bias is not None else None
    out = torch.empty((b, t, e), dtype=odt, device=dev)
    tri = {}  # the causal mask of a diagonal block, by its shape
    for bi in range(b):
        for i0 in range(0, t, block):
            i1 = min(t, i0 + block)
            j1 = i1 if causal else t
            r = _block_scores(q_[bi, i0:i1], k_[bi, :j1], bias_, i0, i1, j1, scale)
            r.relu_()
            if causal:
                r[:, i0:].mul_(_diag_mask(tri, i1 - i0, r.dtype, dev))
            a = r.mul_(r)
            out[bi, i0:i1].copy_(torch.mm(a, v_[bi, :j1]))
    saved = (q_, k_, v_, bias_, keep_) if need_grad else None
    dims = (scale, causal, block, odt, acc, bias.dtype if bias is not None else None)
    return out, saved, dims


def gau_backward(saved, dims, dout):
    """The backward of :class:`_BlockedQuadCore`: (dq, dk, dv, dbias) from :func:`gau_forward`'s
    ``saved`` and ``dims`` and dout (b, t, e); dq, dk, dv in the forward's v dtype."""
    q_, k_, v_, bias_, keep_ = saved
    scale, causal, block, odt, acc, bias_dtype = dims
    b, t, _ = q_.shape
    cdt, dev = q_.dtype, q_.device
    do_ = dout.to(cdt)
    dq = torch.empty(q_.shape, dtype=odt, device=dev)
    dk = torch.zeros(k_.shape, dtype=acc, device=dev)
    dv = torch.zeros(v_.shape, dtype=acc, device=dev)
    dbias = torch.empty((t, t), dtype=acc, device=dev) if bias_ is not None else None
    tri = {}
    for bi in range(b):
        for i0 in range(0, t, block):
            i1 = min(t, i0 + block)
            j1 = i1 if causal else t
            qb, kb, vb, dob = q_[bi, i0:i1], k_[bi, :j1], v_[bi, :j1], do_[bi, i0:i1]
            r = _block_scores(qb, kb, bias_, i0, i1, j1, scale).relu_()
            if causal:
                r[:, i0:].mul_(_diag_mask(tri, i1 - i0, r.dtype, dev))
            dv[bi, :j1] += torch.mm(torch.mul(r, r).t(), dob)  # A^T dO
            ds = torch.mm(dob, vb.t()).mul_(r).mul_(2.0)  # dS = 2 R * (dO V^T)
            if dbias is not None:  # each block owns its rows: set by batch row 0, then summed
                if bi == 0:
                    dbias[i0:i1, :j1].copy_(ds)
                    dbias[i0:i1, j1:].zero_()
                else:
                    dbias[i0:i1, :j1] += ds
            dq[bi, i0:i1].copy_(torch.mm(ds, kb).mul_(scale))
            dk[bi, :j1] += torch.mm(ds.t(), qb).mul_(scale)
    if keep_ is not None:
        dk.mul_(keep_)
        dv.mul_(keep_)
    dk, dv = dk.to(odt), dv.to(odt)
    if dbias is not None:
        dbias = dbias.to(bias_dtype)
    return dq, dk, dv, dbias


class _BlockedQuadCore(torch.autograd.Function):
    """GAU's attention relu(S)^2 V, S = Q K^T * scale + B, block by block of query rows: a causal
    block reads only the keys up to its last row (half the work of the full t x t), and the
    backward recomputes each block's S instead of saving it (memory: one block, not t x t)."""

    @staticmethod
    def forward(ctx, q, k, v, bias, keep, scale, causal, block, cdt):
        need_grad = any(ctx.needs_input_grad[:4])
        out, saved, ctx.dims = gau_forward(
            q, k, v, bias, keep, scale, causal, block, cdt, need_grad
        )
        if saved is not None:
            ctx.save_for_backward(*saved)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        grads = gau_backward(ctx.saved_tensors, ctx.dims, dout)
        return (*grads, None, None, None, None, None)


def _block_scores(qb, kb, bias, i0: int, i1: int, j1: int, scale: float):
    """S = qb kb^T * scale + bias[i0:i1, :j1] for one block: (rows, s), (j1, s) -> (rows, j1)."""
    if bias is None:
        return torch.mm(qb, kb.t()).mul_(scale)
    return torch.addmm(bias[i0:i1, :j1], qb, kb.t(), alpha=scale)


def _diag_mask(cache: dict, n: int, dtype, device):
    """(n, n) lower-triangular 0/1 in ``dtype``: the causal mask of a diagonal block."""
    if n not in cache:
        cache[n] = torch.tril(torch.ones((n, n), dtype=dtype, device=device))
    return cache[n]


def gau_core_torch(q, k, v, *, bias, config, mask=None, block: int | None = None):
    """GAU's quadratic attention, relu(Q K^T / t + B)^2 V (lower triangle if causal), one autograd
    Function over blocks of query rows (:class:`_BlockedQuadCore`): a causal block reads only the
    keys up to its last row, and the backward recomputes each block's scores.

    q, k: (b, t, s); v: (b, t, e), one floating dtype; bias: (t, t) or None; mask: (b, t) bool
    or None (masked keys zeroed; the caller zeroes masked rows). The configuration must pass
    :func:`flashcore.layers.fused_gau_unsupported`. Returns (b, t, e) in v's dtype; under
    autocast float32 inputs are computed in the autocast dtype (bf16 matmuls with float32
    accumulation inside them; dK, dV and dB summed in float32). ``block``: query rows per block
    (default :data:`GAU_BLOCK`)."""
    b, t, _ = q.shape
    for name, a in (("q", q), ("k", k)):
        if a.shape != q.shape or a.dtype != v.dtype:
            raise ValueError(f"{name} must be (b, t, s) = {tuple(q.shape)} in {v.dtype}")
    if v.dim() != 3 or v.shape[:2] != q.shape[:2]:
        raise ValueError(f"v must be (b, t, e) with (b, t) = {(b, t)}, got {tuple(v.shape)}")
    if bias is not None and tuple(bias.shape) != (t, t):
        raise ValueError(f"bias must be (t, t) = {(t, t)}, got {tuple(bias.shape)}")
    dev, cdt = v.device.type, _compute_dtype(v)
    with torch.autocast(dev, enabled=False):
        keep = mask[..., None] if mask is not None else None
        if bias is not None:
            bias = bias.to(v.dtype)
            if config.bias_before_scale:  # (Q K^T + B) / t = Q K^T / t + B / t
                bias = bias * (1.0 / t)
        blk = GAU_BLOCK if block is None else int(block)
        return _BlockedQuadCore.apply(q, k, v, bias, keep, 1.0 / t, config.causal, blk, cdt)
