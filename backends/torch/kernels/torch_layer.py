"""The whole FLASH or GAU layer as one autograd Function: the CPU fast path of
``flashcore.torch.FLASH`` and ``flashcore.torch.GAU``.

It computes what :func:`flashcore.flash` (:func:`flashcore.gau`) computes for the configurations
of :func:`layer_unsupported`, with fewer passes over memory than the spec's op-by-op autograd: no
zero-filled gradient per slice of [U | V | Z], one buffer for that gradient written in place by
each branch, SiLU's derivative in one pass, the scale-offset heads and their RoPE in one
(h, b, t, s) tensor, the norm's backward in two passes. N = b t rows, P = 2e + s, h = 4 heads
(FLASH: quad_q, quad_k, lin_q, lin_k) or 2 (GAU: q, k):

    r = 1 / sqrt(mean(x^2) + eps)                    (b, t, 1)    ScaleNorm / RMSNorm ('add')
    h = x r w                                        (b, t, d)    w: the norm's (1,) or (d,) gain
    pre = h W_h + b_h,  [U | V | Z] = SiLU(pre)      (b, t, P)    views of one buffer; in
                                                                  bfloat16 V has its own
    heads = RoPE(Z gamma_i + beta_i)                 (h, b, t, s)
    att = core(heads, V)                             (b, t, e)    torch_core: core_forward
                                                                  (FLASH), gau_forward (GAU)
    out = (U att) W_o + b_o + x                      (b, t, d)    zero at padded positions

    backward, with g = dout (zero at padded positions):
    db_o = sum g;  dW_o = g^T (U att);  dA = g W_o;  dU = dA att;  datt = dA U
    dheads, dV, dB = the core's backward(datt);  dso = RoPE^T(dheads)   (h, b, t, s)
    dbeta_i = sum dso_i;  dgamma_i = sum dso_i Z;  dZ = sum_i dso_i gamma_i
    dpre = [dU | dV | dZ] SiLU'(pre);  db_h = sum dpre;  dW_h = dpre^T h;  dh = dpre W_h
    dw = sum dh x r (rms; scale: the sum over d too);  dx = g + r w dh - (r^3 / d) (w dh . x) x

Dtypes follow the spec exactly: under CPU autocast (float32 x and parameters) the dense layers,
the activations and the core run in the autocast dtype (the core accumulates in float32 inside
its matmuls), the heads' scale-offset and RoPE in float32, the norm and the residual in float32;
a float16 / bfloat16 layer runs its core in float32 as the spec does (GAU's core output then
comes back in the activations' dtype directly, where the spec casts its float32 result). The spec stays the oracle:
``tests/backend_torch/test_torch_layer.py`` runs both paths on the same inputs.
"""

from __future__ import annotations

import functools

import array_api_compat.torch as xp
import numpy as np
import torch

from flashcore import ops
from flashcore.layers import fused_gau_unsupported

from . import torch_core
from ._common import FLOAT_DTYPES, plain_tensor, state_weights, unsupported_reason
from .torch_core import core_backward, core_forward, gau_backward, gau_forward

__all__ = ["layer_unsupported", "fused_layer_reason", "flash_layer_torch", "gau_layer_torch"]

#: Where :func:`flash_layer_torch` runs: the CPU (on CUDA the spec's layer calls the Triton core).
DEVICES = ("cpu",)


def layer_unsupported(config, masked: bool = False) -> str | None:
    """None when the fused layer implements :func:`flashcore.flash` / :func:`flashcore.gau` for
    ``config`` (on top of the blocked cores' tables, :func:`._common.unsupported_reason` and
    :func:`flashcore.layers.fused_gau_unsupported`; ``masked``: with a key mask), else why not."""
    if getattr(config, "kind", None) == "gau":
        reason = fused_gau_unsupported(config, masked=masked)
    else:
        reason = unsupported_reason(config, None, None)
    if reason is not None:
        return reason
    if config.norm not in ("scale", "rms") or config.norm_eps_mode != "add":
        return f"norm={config.norm!r} with norm_eps_mode={config.norm_eps_mode!r}"
    if config.token_shift:
        return "token_shift"
    if config.norm_position != "pre" or not config.norm_affine or not config.use_bias:
        return "post-norm, a parameter-free norm or bias-free layers (not fused)"
    if config.rope not in ("half", "none"):
        return f"rope={config.rope!r}"
    return None


def fused_layer_reason(layer, x, mask=None, segment_ids=None, dropout=None) -> str | None:
    """None when ``flashcore.torch.FLASH.forward`` (``GAU.forward``) takes :func:`flash_layer_torch`
    (:func:`gau_layer_torch`) for this call, else why not. x: (b, t, d); mask: (b, t) bool or None; dropout: the keep-masks the layer
    drew (None when it draws none). A call the spec would refuse (bad shapes) goes to the spec,
    whose checks name the problem; so does an input with a NaN or Inf (the spec contains it)."""
    config = layer.config
    reason = layer_unsupported(config, masked=mask is not None)
    if reason is not None:
        return reason
    if segment_ids is not None:
        return "segment_ids"
    if dropout is not None:
        return "dropout keep-masks"
    if (
        not plain_tensor(x, compiling=False)
        or x.device.type not in DEVICES
        or x.dtype not in FLOAT_DTYPES
    ):
        return "x is not a plain floating CPU tensor"
    if x.dim() != 3 or x.shape[0] < 1 or x.shape[1] < 1 or x.shape[2] != config.dim:
        return "x is not (b, t, d)"
    if mask is not None and (
        not plain_tensor(mask, compiling=False)
        or mask.dtype != torch.bool
        or tuple(mask.shape) != tuple(x.shape[:2])
    ):
        return "mask is not a (b, t) bool tensor"
    dtypes = {p.dtype for p in layer.parameters()}
    if len(dtypes) != 1 or any(p.device != x.device for p in layer.parameters()):
        return "parameters of several dtypes or on another device"
    (pdt,) = dtypes
    if torch.is_autocast_enabled(x.device.type):
        if x.dtype != torch.float32 or pdt != torch.float32:
            return "autocast with an input or parameters other than float32"
    elif pdt != x.dtype:
        return "parameters in another dtype than x"
    with torch.no_grad():
        acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        if not bool(torch.isfinite(x.sum(dim=-1, dtype=acc)).all()):
            return "x holds NaN or Inf (the spec's containment handles it)"
    return None


@functools.lru_cache(maxsize=4)
def _rope_tables(t: int, dims: int, base: float, dtype: torch.dtype):
    """cos, sin (t, dims/2) in ``dtype``, from the spec's float64 tables."""
    cos, sin = ops.rope_tables(np.arange(t), dims, base)
    return torch.from_numpy(cos).to(dtype), torch.from_numpy(sin).to(dtype)


def _rotate(a, cos, sin, half: int, inverse: bool) -> None:
    """RoPE ('half') in place on the first 2 * half channels of a (..., s): [a1 cos - a2 sin,
    a2 cos + a1 sin]; ``inverse``: its transpose, [a1 cos + a2 sin, a2 cos - a1 sin]."""
    a1, a2 = a[..., :half], a[..., half : 2 * half]
    keep = a1 * sin
    a1.mul_(cos).addcmul_(a2, sin, value=1.0 if inverse else -1.0)
    a2.mul_(cos)
    if inverse:
        a2.sub_(keep)
    else:
        a2.add_(keep)


class _Plan:
    """What one call needs besides its differentiable inputs (dtypes, tables, mask, sizes)."""

    def __init__(self, config, x, mask):
        b, t, _ = x.shape
        self.config = config
        self.ldt = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        low = x.dtype in (torch.float16, torch.bfloat16)
        self.acc = torch.float32 if low else x.dtype  # the norm's and the residual's
        self.cdt = torch.float32 if low else self.ldt  # the core's
        self.hdt = torch.promote_types(self.ldt, x.dtype)  # the heads' scale-offset and RoPE
        self.mask = mask
        self.half = 0 if config.rope == "none" else config.rotary_dims // 2
        if self.half:
            self.cos, self.sin = _rope_tables(t, 2 * self.half, float(config.rope_base), self.hdt)
        if config.kind == "flash":
            self.wts = state_weights(mask, b, t, config, device="cpu").tolist()
        self.scale = 1.0 / (config.chunk_size if config.kind == "flash" else t)  # of Q K^T
        self.bias_dt = self.cdt if config.kind == "flash" else self.acc  # the spec's bias dtype
        self.need_grad = torch.is_grad_enabled()  # False: nothing is saved for a backward


class _FusedLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, norm_w, w_h, b_h, gamma, beta, bias, w_o, b_o, plan):
        cfg = plan.config
        b, t, d = x.shape
        e, s = cfg.expanded_dim, cfg.qk_dim
        ldt, cdt, hdt = plan.ldt, plan.cdt, plan.hdt
        need_grad = plan.need_grad and any(ctx.needs_input_grad)
        x2 = x.reshape(b * t, d)
        # norm: h = x r w, r = 1 / sqrt(mean(x^2) + eps)
        nrm = torch.linalg.vector_norm(x2, dim=-1, keepdim=True, dtype=plan.acc)  # (N, 1)
        r = torch.rsqrt(nrm.square_().div_(d).add_(cfg.norm_eps))
        h = torch.empty((b * t, d), dtype=ldt, device=x.device)
        if norm_w.numel() == 1:  # ScaleNorm
            torch.mul(x2, r * norm_w.to(plan.acc), out=h)
        else:  # RMSNorm
            torch.mul(x2 * r, norm_w.to(plan.acc), out=h)
        # [U | V | Z] = SiLU(h W_h + b_h)
        w_hl, w_ol = w_h.to(ldt), w_o.to(ldt)
        pre = torch.addmm(b_h.to(ldt), h, w_hl.t())  # (N, P)
        if ldt == torch.bfloat16:
            # act = [U | Z] and V in a buffer of its own: oneDNN's bf16 bmm reads a contiguous V
            # faster than a column slice of [U | V | Z] (the core's matmuls with V 6-21%, the
            # step about 1.5%; float32 gains nothing), with the same values and memory
            act = torch.empty((b * t, e + s), dtype=ldt, device=x.device)
            v = torch.empty((b * t, e), dtype=ldt, device=x.device)
            for part, dst in zip(pre.split([e, e, s], dim=1), (act[:, :e], v, act[:, e:])):
                torch.ops.aten.silu.out(part, out=dst)
        else:  # act = [U | V | Z]
            act = torch.nn.functional.silu(pre)
            v = act[:, e : 2 * e]
        u, z = act[:, :e], act[:, -s:]
        # heads: RoPE(Z gamma_i + beta_i), (h, N, s)
        nh = gamma.shape[0]
        so = torch.addcmul(beta[:, None, :].to(hdt), z[None], gamma[:, None, :].to(hdt))
        so = so.view(nh, b, t, s)
        if plan.half:
            _rotate(so, plan.cos, plan.sin, plan.half, inverse=False)
        heads = so.to(cdt)
        keep = plan.mask[..., None] if plan.mask is not None else None
        core_bias = bias
        if bias is not None and cfg.bias_before_scale:  # (Q K^T + B) / n = Q K^T / n + B / n
            core_bias = bias * plan.scale
        if cfg.kind == "flash":
            att, saved, dims = core_forward(
                *heads, v.view(b, t, e), core_bias, keep, plan.wts, cfg.chunk_size, cfg.causal,
                torch_core.BLOCK_TOKENS, cdt, need_grad,
            )  # fmt: skip
        else:
            att, saved, dims = gau_forward(
                *heads, v.view(b, t, e), core_bias, keep, plan.scale, cfg.causal,
                torch_core.GAU_BLOCK, cdt, need_grad,
            )  # fmt: skip
        att = att.reshape(b * t, e)
        ua = u * att
        y = torch.addmm(b_o.to(ldt), ua, w_ol.t())  # (N, d)
        out = torch.add(x2, y).view(b, t, d)
        if plan.mask is not None:
            out.masked_fill_(~plan.mask[..., None], 0.0)
        if need_grad:
            ctx.save_for_backward(x, r, h, pre, act, att, ua, w_hl, w_ol, norm_w, gamma, *saved)
            ctx.plan, ctx.dims = plan, dims
            ctx.bias_dtype = bias.dtype if bias is not None else None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        x, r, h, pre, act, att, ua, w_hl, w_ol, norm_w, gamma, *saved = ctx.saved_tensors
        plan, dims = ctx.plan, ctx.dims
        cfg = plan.config
        b, t, d = x.shape
        n, e, s = b * t, cfg.expanded_dim, cfg.qk_dim
        ldt, hdt, acc = plan.ldt, plan.hdt, plan.acc
        pdt = gamma.dtype
        g = dout.reshape(n, d)
        if plan.mask is not None:
            g = g.masked_fill(~plan.mask.reshape(n, 1), 0.0)
        g_l = g.to(ldt)
        # out = (U att) W_o + b_o + x
        db_o = g.sum(dim=0, dtype=acc).to(pdt)
        dw_o = torch.mm(g_l.t(), ua).to(pdt)  # (d, e)
        da = torch.mm(g_l, w_ol)  # (N, e)
        dact = torch.empty((n, pre.shape[1]), dtype=ldt, device=x.device)  # [dU | dV | dZ]
        torch.mul(da, att, out=dact[:, :e])
        datt = da.mul_(act[:, :e])
        nh = gamma.shape[0]
        if cfg.kind == "flash":  # dheads (h, b, t', s) and dV straight into dact (t' = t padded)
            c = cfg.chunk_size
            tp = -(-t // c) * c
            dheads = torch.empty((nh, b, tp, s), dtype=ldt, device=x.device)
            dv_out = dact[:, e : 2 * e].view(b * t // c, c, e) if tp == t else None
            outs = [dheads[i].view(b * tp // c, c, s) for i in range(nh)]
            *_, dv, dbias = core_backward(saved, dims, datt.view(b, t, e), out=[*outs, dv_out])
            if dv_out is None:
                dact[:, e : 2 * e].copy_(dv.reshape(n, e))
        else:
            dq, dk, dv, dbias = gau_backward(saved, dims, datt.view(b, t, e))
            dheads = torch.stack([dq, dk])
            dact[:, e : 2 * e].copy_(dv.reshape(n, e))
        dso = dheads[:, :, :t].to(hdt)  # (h, b, t, s)
        if plan.half:
            _rotate(dso, plan.cos, plan.sin, plan.half, inverse=True)
        dso = dso.reshape(nh, n, s)
        z = act[:, -s:]
        dbeta = dso.sum(dim=1).to(pdt)
        dact[:, 2 * e :].copy_((dso * gamma[:, None, :].to(hdt)).sum(dim=0))
        dgamma = dso.mul_(z).sum(dim=1).to(pdt)
        # SiLU and the hidden dense layer
        dpre = torch.ops.aten.silu_backward(dact, pre)
        del dact
        db_h = dpre.sum(dim=0).to(pdt)  # accumulated in float32 inside the sum
        dw_h = torch.mm(dpre.t(), h).to(pdt)  # (P, d)
        dh = torch.mm(dpre, w_hl)  # (N, d)
        del dpre
        # the norm: h = x r w
        x2 = x.reshape(n, d).to(acc)
        w = norm_w.to(acc)
        if norm_w.numel() == 1:
            dot = torch.linalg.vecdot(dh.to(acc), x2).unsqueeze_(-1)  # (N, 1): dh . x
            dnorm = (dot * r).sum().reshape(1).to(norm_w.dtype)
            dx = torch.addcmul(g, dh, r * w)
            dx.addcmul_(x2, dot.mul_(r.pow(3)).mul_(w / -d))
        else:
            xr = x2 * r
            dhx = dh * xr  # (N, d)
            dnorm = dhx.sum(dim=0, dtype=acc).to(norm_w.dtype)
            dot = dhx.mul_(w).sum(dim=-1, keepdim=True)  # r (w dh . x)
            dx = torch.addcmul(g, dh * w, r)
            dx.addcmul_(x2, dot.mul_(r.square()).div_(-d))
        dx = dx.to(x.dtype).view(b, t, d)
        if dbias is not None and cfg.bias_before_scale:
            dbias = dbias * plan.scale
        if dbias is not None:
            dbias = dbias.to(ctx.bias_dtype)
        return dx, dnorm, dw_h, db_h, dgamma, dbeta, dbias, dw_o, db_o, None


class _LearnedBias(torch.autograd.Function):
    """The learned relative bias of n positions, B[i, j] = w[j - i + L - 1] (the spec's
    :func:`flashcore.ops.rel_bias` with rel_bias='learned', offsets within the span L), as a
    Toeplitz copy of a strided view of w; its backward sums the (n, n) gradient along each
    diagonal, a block of rows at a time (not a scatter-add of n^2 indices)."""

    @staticmethod
    def forward(ctx, w, n: int, span: int):
        ctx.n, ctx.span, ctx.w_dtype = n, span, w.dtype
        u = w[span - n : span + n - 1]  # offsets -(n - 1) .. n - 1
        return u.unfold(0, n, 1).flip(0)  # [i, j] = u[n - 1 - i + j]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        n, span = ctx.n, ctx.span
        acc = torch.float32 if g.dtype in (torch.float16, torch.bfloat16) else g.dtype
        du = torch.zeros(2 * n - 1, dtype=acc, device=g.device)
        rows = max(1, min(n, _BIAS_ROWS))
        buf = torch.zeros(rows * (rows + n - 1), dtype=acc, device=g.device)
        for i0 in range(0, n, rows):
            r = min(rows, n - i0)
            width = r + n - 1
            # row k of the block shifted right by r - 1 - k: column c holds offset index
            # c + n - r - i0 (the diagonal j - i), so the column sums are the diagonal sums
            flat = buf[: r * width]
            if r != rows:  # the band's place moves: clear what the full blocks left there
                flat.zero_()
            flat.as_strided((r, n), (width - 1, 1), r - 1).copy_(g[i0 : i0 + r])
            du[n - r - i0 : n - r - i0 + width] += flat.view(r, width).sum(dim=0)
        dw = torch.zeros((2 * span - 1,), dtype=acc, device=g.device)
        dw[span - n : span + n - 1] = du
        return dw.to(ctx.w_dtype), None, None


#: Rows of the bias gradient reduced at once by :class:`_LearnedBias` (memory: rows x 2n floats).
_BIAS_ROWS = 256


def _rel_bias(layer, positions: int, like: torch.Tensor):
    """The (positions, positions) relative bias of ``layer``: :class:`_LearnedBias` for a learned
    bias whose span covers the offsets, else the spec's :func:`flashcore.ops.rel_bias` (which
    also names an offset beyond the span)."""
    cfg = layer.config
    w = layer.rel_bias.weight
    if cfg.rel_bias == "learned" and positions <= cfg.bias_span and w.dim() == 1:
        bias = _LearnedBias.apply(w, positions, cfg.bias_span)
        if cfg.bias_scale != 1.0:
            bias = bias * cfg.bias_scale
        return bias.to(like.dtype)
    pos = np.arange(positions)
    return ops.rel_bias(w, pos, pos, config=cfg, xp=xp, like=like)


def _apply(layer, x: torch.Tensor, mask, positions: int) -> torch.Tensor:
    cfg = layer.config
    plan = _Plan(cfg, x, mask)
    norm_w = layer.norm.scale if cfg.norm == "scale" else layer.norm.weight
    bias = None
    if cfg.rel_bias != "none":  # the spec's table, (positions, positions)
        like = torch.empty(0, dtype=plan.bias_dt, device=x.device)
        bias = _rel_bias(layer, positions, like)
    with torch.autocast("cpu", enabled=False):
        return _FusedLayer.apply(
            x, norm_w, layer.hidden.weight, layer.hidden.bias, layer.qk.gamma, layer.qk.beta,
            bias, layer.out.weight, layer.out.bias, plan,
        )  # fmt: skip


def flash_layer_torch(layer, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``flashcore.torch.FLASH`` ``layer`` on x (b, t, d) with an optional (b, t) bool key mask
    -> (b, t, d), as one autograd Function (see the module docstring). The call must pass
    :func:`fused_layer_reason`; the relative bias (C, C) is the spec's
    :func:`flashcore.ops.rel_bias` of the layer's weights (its gradient flows through it)."""
    return _apply(layer, x, mask, layer.config.chunk_size)


def gau_layer_torch(layer, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``flashcore.torch.GAU`` ``layer`` on x (b, t, d) -> (b, t, d), as :func:`flash_layer_torch`
    with GAU's blocked quadratic core (relu(Q K^T / t + B)^2 V); the bias is (t, t)."""
    return _apply(layer, x, mask, x.shape[1])
