"""The one sampler (flashcore.sampling): inverse-CDF draws from given uniforms, the same tokens in
every backend for the same draws, and the top-k / top-p / temperature rules."""

from __future__ import annotations

import importlib.util

import array_api_compat.numpy as npx
import numpy as np
import pytest

from flashcore.sampling import check_options, sample, uniform_draws

rng = np.random.default_rng(0)


def _softmax(z):
    p = np.exp(z - z.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def _reference(z, u, temperature, top_k, top_p):
    """The rules written out in float64 NumPy, one row at a time, from sorted order."""
    out = []
    for row, ur in zip(np.asarray(z, np.float64), u):
        zr = row / temperature
        keep = np.ones_like(zr, bool)
        if top_k is not None and top_k < len(zr):
            keep = zr >= np.sort(zr)[::-1][top_k - 1]
        p = np.where(keep, _softmax(np.where(keep, zr, -np.inf)), 0.0)
        if top_p is not None and top_p < 1:
            order = np.argsort(-p, kind="stable")
            before = np.cumsum(p[order]) - p[order]
            cut = p[order][before < top_p].min()
            p = np.where(p >= cut, p, 0.0)
        cdf = np.cumsum(p)
        out.append(min(int(np.sum(cdf <= ur * cdf[-1])), int(np.nonzero(p)[0].max())))
    return np.array(out)


def _safe_draws(z, n, temperature, top_k, top_p):
    """Uniforms at least 1e-4 (relative) away from every CDF boundary of every row, so that
    rounding differences between backends cannot move a draw across one."""
    u = rng.random((n, z.shape[0]))
    for i in range(z.shape[0]):
        zr = z[i] / temperature
        keep = np.ones_like(zr, bool)
        if top_k is not None and top_k < len(zr):
            keep = zr >= np.sort(zr)[::-1][top_k - 1]
        p = np.where(keep, _softmax(np.where(keep, zr, -np.inf)), 0.0)
        edges = np.cumsum(p) / p.sum()
        for j in range(n):
            while np.min(np.abs(edges - u[j, i])) < 1e-4:
                u[j, i] = rng.random()
    return u


OPTIONS = [
    dict(temperature=1.0, top_k=None, top_p=None),
    dict(temperature=0.7, top_k=5, top_p=None),
    dict(temperature=1.3, top_k=None, top_p=0.8),
    dict(temperature=0.9, top_k=12, top_p=0.6),
]


@pytest.mark.parametrize(
    "opts", OPTIONS, ids=lambda o: f"T{o['temperature']}-k{o['top_k']}-p{o['top_p']}"
)
def test_numpy_sampler_follows_the_written_out_rules(opts):
    z = rng.normal(0, 2, (4, 33))
    u = rng.random((50, 4))
    for ut in u:
        got = np.asarray(sample(z, ut, xp=npx, **opts))
        np.testing.assert_array_equal(got, _reference(z, ut, **opts))


def test_a_grid_of_draws_reproduces_the_distribution():
    """u at the midpoints of N equal cells: each token is drawn N p times (to within one)."""
    z = rng.normal(0, 1, (1, 7))
    n = 20_000
    grid = (np.arange(n) + 0.5) / n
    got = np.asarray(sample(np.repeat(z, n, axis=0), grid, xp=npx))  # one row per draw
    counts = np.bincount(got, minlength=7)
    assert np.all(np.abs(counts - n * _softmax(z[0])) <= 1.0), counts


def test_greedy_and_top_1_are_the_argmax():
    z = rng.normal(size=(5, 20))
    u = rng.random(5)
    want = z.argmax(-1)
    np.testing.assert_array_equal(sample(z, u, temperature=0, xp=npx), want)
    np.testing.assert_array_equal(sample(z, u, top_k=1, xp=npx), want)
    np.testing.assert_array_equal(sample(z, u, top_p=1e-9, xp=npx), want)


def test_top_k_and_top_p_never_leave_their_sets():
    z = rng.normal(0, 3, (3, 50))
    for ut in rng.random((200, 3)):
        tok = np.asarray(sample(z, ut, top_k=4, xp=npx))
        kth = np.sort(z, -1)[:, -4]
        assert np.all(z[np.arange(3), tok] >= kth)
        tok = np.asarray(sample(z, ut, top_p=0.5, xp=npx))
        p = _softmax(z)
        more_likely = np.array([p[i][p[i] > p[i, t]].sum() for i, t in enumerate(tok)])
        assert np.all(more_likely < 0.5)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
    ],
)
def test_bad_options_are_refused(kw, match):
    opts = dict(temperature=1.0, top_k=None, top_p=None) | kw
    with pytest.raises(ValueError, match=match):
        check_options(**opts)
    with pytest.raises(ValueError, match=match):
        sample(np.zeros((1, 3)), np.zeros(1), xp=npx, **kw)


def test_uniform_draws_are_seeded():
    a, b = uniform_draws(3, 4, 2), uniform_draws(3, 4, 2)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 2) and np.all((a >= 0) & (a < 1))
    assert not np.array_equal(a, uniform_draws(4, 4, 2))


def _backends():
    out = []
    if importlib.util.find_spec("torch"):
        out.append("torch")
    if importlib.util.find_spec("jax"):
        out.append("jax")
    if importlib.util.find_spec("tensorflow"):
        out.append("tf")
    return out


def _run(backend, z, u, opts):
    if backend == "torch":
        import array_api_compat.torch as txp
        import torch

        return sample(torch.as_tensor(z), torch.as_tensor(u), xp=txp, **opts).numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        fn = jax.jit(lambda z, u: sample(z, u, xp=jnp, **opts))
        return np.asarray(fn(jnp.asarray(z), jnp.asarray(u)))
    import tensorflow as tf

    from flashcore.tf.xp import xp as tfx

    fn = tf.function(lambda z, u: sample(z, u, xp=tfx, **opts), jit_compile=True)
    return fn(tf.constant(z), tf.constant(u)).numpy()


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("opts", OPTIONS + [dict(temperature=0, top_k=None, top_p=None)], ids=str)
def test_the_same_draws_give_the_same_tokens_in_every_backend(backend, opts):
    z = rng.normal(0, 2, (6, 40)).astype(np.float32)
    temperature = opts["temperature"] or 1.0
    u = _safe_draws(z.astype(np.float64), 20, temperature, opts["top_k"], opts["top_p"])
    zz, uu = np.tile(z, (len(u), 1)), u.reshape(-1).astype(np.float32)  # one row per draw
    want = np.asarray(sample(zz, uu, xp=npx, **opts))
    got = _run(backend, zz, uu, opts)
    np.testing.assert_array_equal(got.astype(np.int64), want.astype(np.int64))
