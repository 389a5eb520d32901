"""The context-parallel spec (flashcore.context_parallel) on NumPy, float64: shards run in
threads that meet in an all-gather; their outputs, concatenated, equal flashcore.flash on the
whole sequence for every option it supports, and unsupported input gets a clear error."""

from __future__ import annotations

import numpy as np
import pytest
from _cases import run_shards

import flashcore as fc
from flashcore.conformance.assertions import assert_close
from flashcore.conformance.tolerances import longest_reduction
from flashcore.context_parallel import check_shard, flash_shard


def _run_shards(params, x, cfg, world: int, mask=None) -> np.ndarray:
    """flash_shard on ``world`` threads, each with its slice of x (b, T, d) -> (b, T, d)."""
    return run_shards(params, x, cfg, world, mask=mask)


OPTIONS = [
    dict(causal=True),
    dict(causal=True, token_shift=True, linear_norm="mean"),
    dict(causal=True, token_shift=True, rope="interleaved", rope_dims=4, rel_bias="t5"),
    dict(causal=True, attention="laplace", norm="layer"),
    dict(causal=False),
    dict(causal=False, token_shift=True, linear_norm="mean", norm="rms"),
    dict(causal=False, linear_norm="length", token_shift=True, attention="softmax_plus"),
]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("masked", [False, True], ids=["", "mask"])
def test_shards_equal_the_whole_sequence(opts, masked):
    cfg = fc.FlashConfig(dim=12, qk_dim=8, chunk_size=4, **opts)
    rng = np.random.default_rng(0)
    params = fc.init(cfg, seed=0)
    for k in ("qk.gamma", "qk.beta"):  # far from init, so that the attention matters
        params[k] = params[k] + rng.normal(size=params[k].shape)
    x = rng.normal(size=(2, 24, 12))  # 3 shards of 2 chunks
    mask = None
    if masked:
        mask = rng.random((2, 24)) > 0.3
        mask[0, 7] = False  # a halo row is padding
    want = fc.flash(params, x, config=cfg, mask=mask)
    got = _run_shards(params, x, cfg, world=3, mask=mask)
    assert_close(got, want, reorder=longest_reduction(cfg, x.shape[1]))


def test_one_shard_is_the_whole_layer():
    cfg = fc.FlashConfig(dim=12, qk_dim=8, chunk_size=4, causal=True, token_shift=True)
    params = fc.init(cfg, seed=0)
    x = np.random.default_rng(1).normal(size=(1, 8, 12))
    want = fc.flash(params, x, config=cfg)
    got = _run_shards(params, x, cfg, world=1)
    assert_close(got, want, reorder=longest_reduction(cfg, x.shape[1]))


def test_unsupported_input_is_refused():
    cfg = fc.FlashConfig(dim=12, qk_dim=8, chunk_size=4)
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        check_shard(cfg, 6)
    with pytest.raises(NotImplementedError, match="length_mode='array'"):
        check_shard(cfg.replace(linear_norm="length", length_mode="array"), 8)
    with pytest.raises(ValueError, match="kind='flash'"):
        check_shard(cfg.replace(kind="gau"), 8)
    x = np.zeros((1, 8, 12))
    with pytest.raises(ValueError, match="rank must be in"):
        flash_shard(fc.init(cfg), x, config=cfg, rank=2, world=2, all_gather=None)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "non-causal"])
@pytest.mark.parametrize("where", [3, 8, 15, 23], ids=lambda j: f"nan@{j}")
def test_nan_reaches_across_shards_what_it_reaches_in_the_whole_layer(causal, where):
    """A NaN row in one shard reaches, in every shard, exactly the outputs it reaches in
    flashcore.flash on the whole sequence (which tests/test_nan_containment.py checks against
    the dependency rule); every other output is unchanged."""
    cfg = fc.FlashConfig(dim=12, qk_dim=8, chunk_size=4, causal=causal, token_shift=True)
    params = fc.init(cfg, seed=0)
    x = np.random.default_rng(2).normal(size=(2, 24, 12))
    x[1, where, 5] = np.nan  # batch row 1 only
    want = fc.flash(params, x, config=cfg)
    got = _run_shards(params, x, cfg, world=3)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[1]).any() and not np.isnan(got[0]).any()
    ok = ~np.isnan(want)
    assert_close(got[ok], want[ok], reorder=longest_reduction(cfg, x.shape[1]))
