"""The one next-token sampler: greedy, temperature, top-k and top-p, over explicit uniform draws.

    u = uniform_draws(seed, steps, batch)                          # (steps, b) float64 in [0, 1)
    tokens = sample(logits, u[t], temperature=0.8, top_k=40, top_p=0.95, xp=xp)   # (b,) ints

The randomness is an argument: ``sample`` is a pure function of the logits and one uniform number
per row (inverse-CDF sampling), so the same draws give the same tokens in every backend (up to
the rounding of the logits themselves). It uses only array-API calls (plus ``sort``, ``argmax``
and ``min``), so it runs on device, under ``jax.jit`` and in ``tf.function`` alike.

Order of the filters: the logits are divided by the temperature, restricted to the ``top_k``
largest (ties with the k-th are kept), then to the smallest set of the most probable tokens whose
probability reaches ``top_p`` (nucleus; ties with the last one kept); the draw picks the token
whose cumulative probability interval holds ``u`` (vocabulary order). temperature = 0 is greedy
(argmax, the first of equal maxima); ``u`` is then not read.
"""

from __future__ import annotations

import numpy as np

from ._xp import const, is_low_precision, namespace

__all__ = ["sample", "uniform_draws", "check_options"]


def check_options(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """ValueError naming a bad sampling option (the same rule in every backend)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a number >= 0 (0: greedy), got {temperature!r}")
    if not temperature >= 0 or temperature == float("inf"):
        raise ValueError(f"temperature must be >= 0 and finite (0: greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an int >= 1 (or None), got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1] (or None), got {top_p!r}")


def uniform_draws(seed: int, steps: int, batch: int) -> np.ndarray:
    """(steps, batch) float64 uniforms in [0, 1) from NumPy's PCG64 seeded with ``seed``: draw
    [t, i] serves row i at decoding step t."""
    return np.random.default_rng(seed).random((steps, batch))


def sample(
    logits,
    u,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    xp=None,
):
    """logits: (b, v) floating; u: (b,) uniforms in [0, 1) (any float dtype) -> tokens (b,) int32.

    float16 / bfloat16 logits are sampled in float32. See the module docstring for the rules.
    """
    check_options(temperature, top_k, top_p)
    xp = namespace(logits, xp=xp)
    z = xp.astype(logits, xp.float32) if is_low_precision(logits.dtype) else logits
    if temperature == 0:
        return xp.astype(xp.argmax(z, axis=-1), xp.int32)
    v = z.shape[-1]
    z = z / float(temperature)
    keep = None  # (b, v) bool
    if top_k is not None and top_k < v:
        kth = xp.sort(z, axis=-1, descending=True)[:, top_k - 1 : top_k]  # (b, 1)
        keep = z >= kth
    neg = xp.full_like(z, -float("inf"))
    zk = z if keep is None else xp.where(keep, z, neg)
    p = xp.exp(zk - xp.max(zk, axis=-1, keepdims=True))  # (b, v), 0 outside top-k
    p = p / xp.sum(p, axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        sp = xp.sort(p, axis=-1, descending=True)  # (b, v)
        before = xp.cumulative_sum(sp, axis=-1) - sp  # probability of the more likely tokens
        inside = before < float(top_p)  # the nucleus, in sorted order (always the first)
        cut = xp.min(xp.where(inside, sp, xp.full_like(sp, float("inf"))), axis=-1, keepdims=True)
        p = xp.where(p >= cut, p, xp.zeros_like(p))
    cdf = xp.cumulative_sum(p, axis=-1)  # (b, v)
    target = xp.astype(u, p.dtype)[:, None] * cdf[:, v - 1 :]  # (b, 1)
    idx = xp.sum(xp.astype(cdf <= target, xp.int32), axis=-1)  # (b,)
    ids = const(xp, np.arange(v), like=idx, dtype=idx.dtype)  # (v,)
    last = xp.max(xp.where(p > 0, ids, xp.zeros_like(ids)), axis=-1)  # last token with p > 0
    return xp.where(idx > last, last, idx)
