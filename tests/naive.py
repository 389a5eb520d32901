"""An independent, deliberately slow implementation written from the formulas in docs/math.md with
explicit loops over positions. It shares no code with flashcore's vectorized functions; it exists
to check them (float64, tiny sizes only).
"""

from __future__ import annotations

import math

import numpy as np

LAPLACE_MU = math.sqrt(0.5)
LAPLACE_SIGMA = 1.0 / math.sqrt(4.0 * math.pi)


def _norm(p, prefix, xt, kind, eps, eps_mode="add"):
    d = len(xt)
    if kind == "layer":
        mu = sum(xt) / d
        var = sum((a - mu) ** 2 for a in xt) / d
        return np.array(
            [
                (xt[i] - mu) / math.sqrt(var + eps) * p[prefix + "weight"][i]
                + p[prefix + "bias"][i]
                for i in range(d)
            ]
        )
    ms = sum(a * a for a in xt) / d
    gain = p[prefix + "scale"][0] * np.ones(d) if kind == "scale" else p[prefix + "weight"]
    denom = max(math.sqrt(ms), eps) if eps_mode == "clamp" else math.sqrt(ms + eps)
    return np.array([xt[i] / denom * gain[i] for i in range(d)])


def _silu(a):
    return a / (1.0 + math.exp(-a))


def _rotate(vec, pos, dims, mode, base):
    out = np.array(vec, dtype=np.float64)
    for k in range(dims // 2):
        ang = pos * base ** (-2.0 * k / dims)
        c, s = math.cos(ang), math.sin(ang)
        i, j = (k, k + dims // 2) if mode == "half" else (2 * k, 2 * k + 1)
        out[i] = vec[i] * c - vec[j] * s
        out[j] = vec[j] * c + vec[i] * s
    return out


def _t5(rel, causal, buckets, max_distance):
    n = -rel
    ret = 0
    if not causal:
        buckets //= 2
        if n < 0:
            ret += buckets
        n = abs(n)
    else:
        n = max(n, 0)
    exact = buckets // 2
    if n < exact:
        return ret + n
    val = np.float32(np.log(np.float32(n) / np.float32(exact)))
    val = val / np.float32(math.log(max_distance / exact)) * np.float32(buckets - exact)
    return ret + min(exact + int(val), buckets - 1)


def _bias(p, cfg, qi, kj):
    if cfg.rel_bias == "none":
        return 0.0
    if cfg.rel_bias == "learned":
        span = cfg.chunk_size if cfg.kind == "flash" else cfg.max_len
        w = p["rel_bias.weight"][kj - qi + span - 1]
    else:
        w = p["rel_bias.weight"][_t5(kj - qi, cfg.causal, cfg.t5_buckets, cfg.t5_max_distance)]
    return w * cfg.bias_scale


def _logit(cfg, qk, bias, scale):
    """Scale q.k and add the bias before or after the scaling."""
    return (qk + bias) * scale if cfg.bias_before_scale else qk * scale + bias


def _act(kind, a):
    if kind == "relu2":
        return max(a, 0.0) ** 2
    return 0.5 * (1.0 + math.erf((a - LAPLACE_MU) / (LAPLACE_SIGMA * math.sqrt(2.0))))


def _project(p, xrow, cfg, valid, seg):
    """Per position: u, v, heads (list over h of (t, s) arrays)."""
    t, d = xrow.shape
    e, s = int(round(cfg.expansion * cfg.dim)), cfg.qk_dim
    hs = [_norm(p, "norm.", xrow[i], cfg.norm, cfg.norm_eps, cfg.norm_eps_mode) for i in range(t)]
    if cfg.token_shift:
        k = (d + 1) // 2
        shifted = []
        for i in range(t):
            row = hs[i].copy()
            ok = i > 0 and valid[i - 1] and seg[i - 1] == seg[i]
            row[:k] = hs[i - 1][:k] if ok else 0.0
            shifted.append(row)
        hs = shifted
    W, bvec = p["hidden.kernel"], p["hidden.bias"]
    u = np.zeros((t, e))
    v = np.zeros((t, e))
    z = np.zeros((t, s))
    for i in range(t):
        for o in range(2 * e + s):
            a = _silu(sum(hs[i][m] * W[m, o] for m in range(d)) + bvec[o])
            if o < e:
                u[i, o] = a
            elif o < 2 * e:
                v[i, o - e] = a
            else:
                z[i, o - 2 * e] = a
    g, bt = p["qk.gamma"], p["qk.beta"]
    dims = 0 if cfg.rope == "none" else (cfg.rope_dims or s)
    heads = []
    for hh in range(g.shape[0]):
        q = np.array([[z[i, m] * g[hh, m] + bt[hh, m] for m in range(s)] for i in range(t)])
        heads.append(np.array([_rotate(q[i], i, dims, cfg.rope, cfg.rope_base) for i in range(t)]))
    return u, v, heads


def _finish(p, xrow, u, att, valid):
    t, d = xrow.shape
    out = np.zeros_like(xrow)
    for i in range(t):
        if not valid[i]:
            continue
        for o in range(d):
            out[i, o] = (
                sum(u[i, m] * att[i, m] * p["out.kernel"][m, o] for m in range(u.shape[1]))
                + p["out.bias"][o]
                + xrow[i, o]
            )
    return out


def _softmax_row(logits):
    if not logits:
        return []
    m = max(logits)
    ex = [math.exp(a - m) for a in logits]
    tot = sum(ex)
    return [a / tot for a in ex]


def _rows(x, mask, segment_ids):
    b, t, _ = x.shape
    mask = np.ones((b, t), bool) if mask is None else np.asarray(mask)
    seg = np.zeros((b, t), np.int64) if segment_ids is None else np.asarray(segment_ids)
    return mask, seg


def gau(p, x, cfg, mask=None, segment_ids=None):
    mask, seg = _rows(x, mask, segment_ids)
    out = np.zeros_like(x)
    for r in range(x.shape[0]):
        valid, sg = mask[r], seg[r]
        u, v, (q, k) = _project(p, x[r], cfg, valid, sg)
        t = x.shape[1]
        att = np.zeros_like(u)
        for i in range(t):
            members = [j for j in range(t) if valid[j] and sg[j] == sg[i]]
            n = t if cfg.length_mode == "array" else max(len(members), 1)
            n = cfg.fixed_length or n
            keys = [j for j in members if not cfg.causal or j <= i]
            if cfg.attention == "softmax_plus":
                logits = [
                    _logit(cfg, float(q[i] @ k[j]), _bias(p, cfg, i, j), 1 / math.sqrt(cfg.qk_dim))
                    * math.log(n)
                    / math.log(512)
                    for j in keys
                ]
                w = _softmax_row(logits)
            else:
                w = [
                    _act(cfg.attention, _logit(cfg, float(q[i] @ k[j]), _bias(p, cfg, i, j), 1 / n))
                    for j in keys
                ]
            for wj, j in zip(w, keys):
                att[i] += wj * v[j]
        out[r] = _finish(p, x[r], u, att, valid)
    return out


def flash(p, x, cfg, mask=None, segment_ids=None):
    mask, seg = _rows(x, mask, segment_ids)
    C = cfg.chunk_size
    out = np.zeros_like(x)
    for r in range(x.shape[0]):
        valid, sg = mask[r], seg[r]
        u, v, (qq, qk, lq, lk) = _project(p, x[r], cfg, valid, sg)
        t = x.shape[1]
        att = np.zeros_like(u)
        for i in range(t):
            gi = i // C
            local = [
                j
                for j in range(gi * C, min(gi * C + C, t))
                if valid[j] and sg[j] == sg[i] and (not cfg.causal or j <= i)
            ]
            if cfg.attention == "softmax_plus":
                logits = [
                    _logit(
                        cfg,
                        float(qq[i] @ qk[j]),
                        _bias(p, cfg, i % C, j % C),
                        1 / math.sqrt(cfg.qk_dim),
                    )
                    * math.log(C)
                    / math.log(512)
                    for j in local
                ]
                w = _softmax_row(logits)
            else:
                w = [
                    _act(
                        cfg.attention,
                        _logit(cfg, float(qq[i] @ qk[j]), _bias(p, cfg, i % C, j % C), 1 / C),
                    )
                    for j in local
                ]
            for wj, j in zip(w, local):
                att[i] += wj * v[j]
            far = [
                j
                for j in range(t)
                if valid[j] and sg[j] == sg[i] and (j // C < gi if cfg.causal else True)
            ]
            lin = np.zeros(u.shape[1])
            if cfg.linear_norm == "length":
                members = [j for j in range(t) if valid[j] and sg[j] == sg[i]]
                n = t if cfg.length_mode == "array" else max(len(members), 1)
            else:
                n = C
            for j in far:
                lin += float(lq[i] @ lk[j]) / n * v[j]
            if cfg.linear_norm == "mean":
                lin /= max(len({j // C for j in far}), 1)
            att[i] += lin
        out[r] = _finish(p, x[r], u, att, valid)
    return out


def transformer_block(p, x, cfg, mask=None, segment_ids=None):
    mask, seg = _rows(x, mask, segment_ids)
    b, t, d = x.shape
    H, hd = cfg.heads, cfg.dim // cfg.heads
    out = np.zeros_like(x)
    for r in range(b):
        valid, sg = mask[r], seg[r]
        hs = np.array([_norm(p, "attn_norm.", x[r, i], cfg.norm, cfg.norm_eps) for i in range(t)])
        qkv = hs @ p["attn.qkv.kernel"]
        a1 = x[r].copy()
        o = np.zeros((t, d))
        for hh in range(H):
            sl = slice(hh * hd, (hh + 1) * hd)
            q = np.array([_rotate(qkv[i, :d][sl], i, hd, "half", cfg.rope_base) for i in range(t)])
            k = np.array(
                [_rotate(qkv[i, d : 2 * d][sl], i, hd, "half", cfg.rope_base) for i in range(t)]
            )
            vv = qkv[:, 2 * d :][:, sl]
            for i in range(t):
                keys = [
                    j
                    for j in range(t)
                    if valid[j] and sg[j] == sg[i] and (not cfg.causal or j <= i)
                ]
                w = _softmax_row([float(q[i] @ k[j]) / math.sqrt(hd) for j in keys])
                for wj, j in zip(w, keys):
                    o[i, sl] += wj * vv[j]
        a1 = a1 + o @ p["attn.out.kernel"]
        for i in range(t):
            h2 = _norm(p, "ffn_norm.", a1[i], cfg.norm, cfg.norm_eps)
            gate = np.array([_silu(a) for a in h2 @ p["ffn.gate.kernel"]])
            a1[i] = a1[i] + (gate * (h2 @ p["ffn.up.kernel"])) @ p["ffn.down.kernel"]
        out[r] = np.where(valid[:, None], a1, 0.0)
    return out


def lm_loss(p, inputs, targets, cfg, mask=None, segment_ids=None):
    b, t = inputs.shape
    x = np.array([[p["embed.weight"][tok] for tok in row] for row in inputs])
    if cfg.abs_pos == "scaled_sinusoidal":
        d = cfg.block.dim
        for i in range(t):
            w = [10000.0 ** (-2.0 * k / d) for k in range(d // 2)]
            emb = [math.sin(i * a) for a in w] + [math.cos(i * a) for a in w]
            x[:, i] += np.array(emb) * p["abs_pos.scale"][0]
    sub = lambda pre: {k[len(pre) :]: v for k, v in p.items() if k.startswith(pre)}  # noqa: E731
    kind = getattr(cfg.block, "kind", "transformer")
    layer = {"flash": flash, "gau": gau, "transformer": transformer_block}[kind]
    for i in range(cfg.num_layers):
        x = layer(sub(f"layers.{i}."), x, cfg.block, mask, segment_ids)
    final_kind = cfg.final_norm or cfg.block.norm
    mode = getattr(cfg.block, "norm_eps_mode", "add")
    x = np.array(
        [
            [
                _norm(p, "final_norm.", x[r, i], final_kind, cfg.block.norm_eps, mode)
                for i in range(t)
            ]
            for r in range(b)
        ]
    )
    head = p["embed.weight"].T if cfg.tie_embeddings else p["head.kernel"]
    total, count = 0.0, 0
    for r in range(b):
        for i in range(t):
            if mask is not None and not mask[r, i]:
                continue
            logits = x[r, i] @ head + (p["head.bias"] if cfg.head_bias else 0.0)
            m = max(logits)
            total += math.log(sum(math.exp(a - m) for a in logits)) + m - logits[targets[r, i]]
            count += 1
    return total / max(count, 1)
