"""The GAU and Transformer++ cores with explicit state (:func:`flashcore.layers.gau_core`,
:func:`flashcore.lm.transformer_core`): a causal sequence split at any position into pieces that
continue a key/value cache, or decoded token by token after a piece (the decode step being a
piece of one row), equals the whole-sequence layer, in every backend (the spec on NumPy, torch,
jax under jit with a traced position, tf). GAU: length_mode='prefix' and a fixed_length config,
the two whose cache is exact in an LM. float64 (JAX: float32)."""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import pytest
from _cases import flash_cfg, noisy_params

import flashcore as fc
from flashcore.conformance.assertions import assert_close, to_numpy
from flashcore.decode import decode_init, decode_step
from flashcore.layers import gau_core
from flashcore.lm import transformer_core

T = 16
CONFIGS = {
    "gau-prefix": flash_cfg(
        kind="gau", causal=True, length_mode="prefix", token_shift=True, rel_bias="t5"
    ),
    "gau-fixed": flash_cfg(
        kind="gau", causal=True, fixed_length=12, attention="softmax_plus", rope="interleaved"
    ),
    "transformer": fc.TransformerConfig(dim=16, heads=2),
}
_JIT: dict = {}


class _Backend:
    """One backend's namespace and arrays (float64; JAX float32, its functions jitted)."""

    def __init__(self, name: str):
        module = {"torch": "torch", "jax": "jax", "tf": "tensorflow"}.get(name)
        if module is not None and importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
        self.name, self.dtype = name, ("float32" if name == "jax" else "float64")
        if name == "spec":
            import array_api_compat.numpy as xp

            arr = np.asarray
        elif name == "torch":
            import torch

            from flashcore.torch.xp import xp

            arr = torch.as_tensor
        elif name == "jax":
            import jax.numpy as jnp

            from flashcore.jax.xp import xp

            arr = lambda a: jnp.asarray(a.astype(np.float32))  # noqa: E731
        else:
            import tensorflow as tf

            from flashcore.tf.xp import xp

            arr = tf.constant
        self.xp, self.arr = xp, arr

    def fn(self, f, **static):
        """f with ``static`` bound (and xp); under jax.jit in JAX, so that pos is traced."""
        bound = functools.partial(f, xp=self.xp, **static)
        if self.name != "jax":
            return bound
        import jax

        key = (f, tuple(sorted(static.items())))
        return _JIT.setdefault(key, jax.jit(bound))


def _whole(config):
    return fc.transformer_block if isinstance(config, fc.TransformerConfig) else fc.gau


def _core(config):
    return transformer_core if isinstance(config, fc.TransformerConfig) else gau_core


def _setup(backend, name, seed=0):
    be, cfg = _Backend(backend), CONFIGS[name]
    params = noisy_params(cfg, seed)
    x = np.random.default_rng(seed).normal(size=(2, T, cfg.dim))
    p = {k: be.arr(v) for k, v in params.items()}
    xt = be.arr(x)
    want = to_numpy(be.fn(_whole(cfg), config=cfg)(p, xt))
    return be, cfg, p, xt, want


def _pieces(be, cfg, p, xt, cuts, capacity=T):
    """The core over x[:, cuts[i]:cuts[i+1]], the cache carried; -> (outputs, cache)."""
    cache = decode_init(cfg, xt.shape[0], capacity=capacity, xp=be.xp, dtype=xt.dtype)
    core, outs = be.fn(_core(cfg), config=cfg), []
    for i, j in zip(cuts[:-1], cuts[1:], strict=True):
        out, cache = core(p, xt[:, i:j], cache)
        outs.append(to_numpy(out))
    return np.concatenate(outs, axis=1), cache


def _grid():
    out = []
    for be in ("spec", "torch", "jax", "tf"):
        for name in CONFIGS:
            marks = [pytest.mark.slow] if be == "jax" else []  # a compile per piece length
            out.append(pytest.param(be, name, id=f"{be}-{name}", marks=marks))
    return out


@pytest.mark.parametrize(("backend", "name"), _grid())
def test_pieces_split_at_any_position_equal_the_whole(backend, name):
    be, cfg, p, xt, want = _setup(backend, name)
    cuts = range(1, T) if be.name in ("spec", "torch") else (1, 7, T - 1)
    for cut in cuts:
        got, cache = _pieces(be, cfg, p, xt, [0, cut, T])
        assert_close(got, want, dtype=be.dtype, err_msg=f"cut {cut}")
        assert int(to_numpy(cache["pos"])) == T
    got, _ = _pieces(be, cfg, p, xt, [0, 3, 4, 9, T])  # uneven pieces, one of a single row
    assert_close(got, want, dtype=be.dtype, err_msg="pieces 3, 1, 5, 7")


@pytest.mark.parametrize(("backend", "name"), _grid())
def test_decoding_after_a_piece_equals_the_whole(backend, name):
    """A prefix through the core, the rest token by token through decode_step (the same core,
    one row at a time), continuing the same cache."""
    be, cfg, p, xt, want = _setup(backend, name, seed=1)
    step = be.fn(decode_step, config=cfg)
    for cut in (0, 5) if be.name != "jax" else (5,):
        rows, cache = _pieces(be, cfg, p, xt, [0, cut]) if cut else (None, None)
        if cache is None:
            cache = decode_init(cfg, xt.shape[0], capacity=T, xp=be.xp, dtype=xt.dtype)
        rows = [] if rows is None else [rows]
        for j in range(cut, T):
            out, cache = step(p, xt[:, j], cache)
            rows.append(to_numpy(out)[:, None, :])
        assert_close(np.concatenate(rows, axis=1), want, dtype=be.dtype, err_msg=f"prefix {cut}")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_full_cache_gives_nan_and_a_nan_row_reaches_only_later_rows(name):
    """Rows past the capacity are NaN (the rows before exact); a NaN row in a piece makes its
    own and the later rows NaN, the earlier rows of that piece exact, and the next piece NaN."""
    be, cfg, p, x, want = _setup("spec", name, seed=2)
    got, _ = _pieces(be, cfg, p, x, [0, 6, T], capacity=10)
    assert np.isnan(got[:, 10:]).all()
    assert_close(got[:, :10], want[:, :10], dtype=be.dtype)
    if isinstance(cfg, fc.TransformerConfig):
        return  # transformer_block contains no NaN (a NaN key reaches every query's A V)
    x = np.array(x)
    x[0, 8, 3] = np.nan
    got, _ = _pieces(be, cfg, p, x, [0, 6, 12, T])
    assert np.isnan(got[0, 8:]).all() and not np.isnan(got[0, :8]).any()
    assert not np.isnan(got[1]).any()
    assert_close(got[0, :8], want[0, :8], dtype=be.dtype)
    assert_close(got[1], want[1], dtype=be.dtype)
