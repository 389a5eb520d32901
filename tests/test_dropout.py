"""Dropout in the spec (flashcore.dropout: keep-masks as an explicit argument) and in every
engine (``flashcore train --dropout``: training draws masks, evaluation does not).

Given-mask equality with the spec, per backend and dtype, outputs and gradients, is the
conformance suite's "dropout" group (conformance/cases.py); the native draws are tested in
tests/backend_*/test_*_dropout.py.
"""

from __future__ import annotations

import importlib.util
import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import flashcore as fc
from flashcore import dropout as drop
from flashcore import io
from flashcore.app import train
from flashcore.app.engine import BACKENDS, load_engine
from flashcore.conformance.assertions import assert_close
from flashcore.conformance.tolerances import longest_reduction, tolerance
from flashcore.layers import attention_core_flash

D, P = 16, 0.3
CONFIGS = {
    "gau": fc.FlashConfig(dim=D, kind="gau", qk_dim=8, max_len=32, causal=True, dropout=P),
    "flash": fc.FlashConfig(dim=D, qk_dim=8, chunk_size=4, causal=True, dropout=P),
    "transformer": fc.TransformerConfig(dim=D, heads=2, dropout=P),
}
LM = fc.LMConfig(block=CONFIGS["flash"], vocab_size=19, num_layers=2)


def _setup(config, b=2, t=9, seed=0):
    rng = np.random.default_rng(seed)
    params = {k: v + rng.normal(0, 0.3, v.shape) for k, v in fc.init(config, 1, np.float64).items()}
    x = rng.normal(size=(b, t, D))
    return params, x, rng


def _masks(config, b, t, rng, fill=None):
    shapes = fc.dropout_shapes(config, b, t)
    if fill is not None:
        return {
            k: np.full(s, fill[k] if isinstance(fill, dict) else fill) for k, s in shapes.items()
        }
    return {k: rng.random(s) >= P for k, s in shapes.items()}


def test_shapes_name_every_site():
    assert fc.dropout_shapes(CONFIGS["gau"], 2, 9) == {"attn": (2, 9, 9), "out": (2, 9, D)}
    assert fc.dropout_shapes(CONFIGS["flash"], 2, 9) == {"attn": (2, 3, 4, 4), "out": (2, 9, D)}
    assert fc.dropout_shapes(CONFIGS["transformer"], 2, 7) == {
        "attn": (2, 2, 7, 7),
        "attn_out": (2, 7, D),
        "ffn_out": (2, 7, D),
    }
    lm = fc.dropout_shapes(LM, 2, 9)
    assert sorted(lm) == [f"layers.{i}.{s}" for i in (0, 1) for s in ("attn", "out")]
    assert fc.dropout_shapes(CONFIGS["gau"].replace(dropout=0.0), 2, 9) == {}
    assert drop.draw(LM.replace(block=CONFIGS["flash"].replace(dropout=0.0)), 2, 9, None) is None


@pytest.mark.parametrize("name", list(CONFIGS))
def test_no_masks_is_the_deterministic_layer(name):
    """dropout=None (what eval mode passes) with p > 0 runs the p = 0 layer: the same code."""
    config = CONFIGS[name]
    params, x, _ = _setup(config)
    fn = fc.block_fn(config)
    got = fn(params, x, config=config)
    ref = fn(params, x, config=config.replace(dropout=0.0), dropout={})
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_output_site_sits_before_the_residual(name):
    """Dropping every output entry (and keeping all attention) leaves the residual x alone."""
    config = CONFIGS[name]
    params, x, rng = _setup(config)
    out_sites = {"out": False, "attn_out": False, "ffn_out": False, "attn": True}
    masks = _masks(config, *x.shape[:2], rng, fill=out_sites)
    got = fc.block_fn(config)(params, x, config=config, dropout=masks)
    assert_close(got, x, reorder=longest_reduction(config, x.shape[1]))
    some = _masks(config, *x.shape[:2], rng)
    assert np.abs(fc.block_fn(config)(params, x, config=config, dropout=some) - x).max() > 0.1


def test_attention_site_is_the_weights_of_a_gau():
    """GAU with every attention weight dropped: A V = 0, so out = b_o / (1 - p) + x."""
    config = CONFIGS["gau"]
    params, x, rng = _setup(config)
    masks = _masks(config, *x.shape[:2], rng, fill={"attn": False, "out": True})
    got = fc.gau(params, x, config=config, dropout=masks)
    want = x + params["out.bias"] / (1 - P)
    assert_close(got, want, reorder=longest_reduction(config, x.shape[1]))


def test_flash_drops_the_quadratic_weights_and_keeps_the_linear_branch():
    """With no relative bias, a query of zeros gives all-zero local weights: the core with every
    local weight dropped equals the core with qq = 0, whose output (the linear branch) is not 0."""
    config = CONFIGS["flash"].replace(rel_bias="none")
    rng = np.random.default_rng(3)
    b, t, s, e = 2, 9, 8, 32
    qq, qk, lq, lk = (rng.normal(size=(b, t, s)) for _ in range(4))
    v = rng.normal(size=(b, t, e))
    none_kept = np.zeros(fc.dropout_shapes(config, b, t)["attn"], bool)
    kw = dict(bias=None, config=config)
    got = attention_core_flash(qq, qk, lq, lk, v, attn_keep=none_kept, **kw)
    ref = attention_core_flash(np.zeros_like(qq), qk, lq, lk, v, **kw)
    assert_close(got, ref, reorder=longest_reduction(config, t))
    assert np.abs(ref).max() > 0.1  # causal: chunks 1 and 2 read the linear state
    full = attention_core_flash(qq, qk, lq, lk, v, **kw)
    kept = attention_core_flash(qq, qk, lq, lk, v, attn_keep=~none_kept, **kw)
    assert_close(
        kept - ref,
        (full - ref) / (1 - P),
        reorder=longest_reduction(config, t),
        scale=np.abs(full).max(),
    )


def test_lm_masks_reach_every_layer():
    params = {k: v for k, v in fc.init(LM, 0, np.float64).items()}
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, LM.vocab_size, (2, 9))
    masks = _masks(LM, 2, 9, rng)
    base = fc.lm_logits(params, tokens, config=LM, dropout=masks)
    for name in masks:  # flipping one layer's mask changes the logits
        other = dict(masks, **{name: ~masks[name]})
        assert np.abs(fc.lm_logits(params, tokens, config=LM, dropout=other) - base).max() > 0


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda m: {k: v for k, v in m.items() if k != "out"}, ValueError, "missing \\['out'\\]"),
        (lambda m: {**m, "ffn_out": m["out"]}, ValueError, "unexpected \\['ffn_out'\\]"),
        (lambda m: {**m, "attn": m["attn"][:, :3]}, ValueError, "'attn' must have shape"),
        (lambda m: {**m, "out": m["out"].astype(np.float64)}, TypeError, "must be bool"),
        (lambda m: list(m.values()), TypeError, "dict of keep-masks"),
    ],
)
def test_bad_masks_are_refused(change, error, match):
    config = CONFIGS["gau"]
    params, x, rng = _setup(config)
    with pytest.raises(error, match=match):
        fc.gau(params, x, config=config, dropout=change(_masks(config, 2, 9, rng)))


def test_masks_for_a_config_without_dropout_are_refused():
    config = CONFIGS["gau"]
    params, x, rng = _setup(config)
    with pytest.raises(ValueError, match="dropout=0"):
        fc.gau(params, x, config=config.replace(dropout=0.0), dropout=_masks(config, 2, 9, rng))


# ---- engines and the command ---------------------------------------------------------------

ENGINE_CFG = fc.LMConfig(
    block=fc.FlashConfig(dim=16, qk_dim=8, chunk_size=8, causal=True, max_len=16, dropout=0.25),
    vocab_size=32,
    num_layers=2,
)


def _engine_or_skip(name):
    if importlib.util.find_spec(name if name != "tf" else "tensorflow") is None:
        pytest.skip(f"{name} is not installed")
    return load_engine(name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_engines_train_with_dropout_and_evaluate_without(backend):
    cls = _engine_or_skip(backend)
    rng = np.random.default_rng(0)
    noise = lambda a: (a + rng.normal(0, 0.5, a.shape)).astype(np.float32)  # noqa: E731
    params = {k: noise(v) for k, v in fc.init(ENGINE_CFG, 0).items()}  # logits far from uniform
    x = rng.integers(0, 32, (2, 16))
    y = rng.integers(0, 32, (2, 16))
    plain_cfg = ENGINE_CFG.replace(block=ENGINE_CFG.block.replace(dropout=0.0))
    with_p, plain = cls(ENGINE_CFG, params, seed=0), cls(plain_cfg, params, seed=0)
    rtol, _ = tolerance("float32", "loss")
    # Evaluation applies no dropout: the p = 0 model's loss, and the same twice.
    e1, e2, e0 = with_p.eval_loss(x, y), with_p.eval_loss(x, y), plain.eval_loss(x, y)
    assert e1 == e2
    np.testing.assert_allclose(e1[0], e0[0], rtol=rtol)
    # Training draws masks: the first step's loss is not the p = 0 one.
    l_p, l_0 = with_p.train_step(x, y, 1e-3), plain.train_step(x, y, 1e-3)
    far = 100 * rtol * abs(l_0)  # well above rounding: 1e-3 relative
    assert np.isfinite(l_p) and abs(l_p - l_0) > far
    # Two seeds draw different masks (the same masks would give the same loss: one code path).
    other = cls(ENGINE_CFG, params, seed=1)
    assert abs(other.train_step(x, y, 1e-3) - l_p) > rtol * abs(l_p)


TINY = ["--dim", "32", "--layers", "2", "--qk-dim", "16", "--chunk", "16", "--context", "48",
        "--batch", "2", "--eval-tokens", "96", "--log-every", "1", "--quiet", "--warmup", "1",
        "--steps", "2", "--eval-every", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    src = Path(sysconfig.get_paths()["stdlib"])
    for name in ("abc.py", "bisect.py", "colorsys.py", "keyword.py", "this.py", "copy.py"):
        (folder / name).write_bytes((src / name).read_bytes())
    return folder


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_command_takes_dropout(backend, tmp_path, corpus):
    _engine_or_skip(backend)
    out = tmp_path / "run"
    argv = [*TINY, "--data", str(corpus), "--backend", backend, "--dropout", "0.1"]
    assert train.train_main([*argv, "--out", str(out)]) == 0
    _, config = io.load(out / "model.safetensors")
    assert config.block.dropout == 0.1
    losses = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in losses if "loss" in r)


def test_train_command_refuses_a_bad_rate(capsys):
    with pytest.raises(SystemExit):
        train.train_main([*TINY, "--dropout", "1.0"])
    assert "dropout must be in [0, 1)" in capsys.readouterr().err
