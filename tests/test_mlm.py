"""The masked-LM objective (flashcore.mlm, ``flashcore train --objective mlm``, ``flashcore eval``):
BERT-style masking, the loss at the chosen positions only, one loss in every backend, the CLI end
to end."""

from __future__ import annotations

import importlib.util
import json
import math
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import flashcore as fc
from flashcore import mlm
from flashcore.app import evaluate, runstate, train
from flashcore.app.engine import BACKENDS, load_engine
from flashcore.conformance.assertions import assert_close


def _engine_or_skip(name):
    if importlib.util.find_spec(name if name != "tf" else "tensorflow") is None:
        pytest.skip(f"{name} is not installed")
    return load_engine(name)


CFG = fc.LMConfig(
    block=fc.FlashConfig(dim=16, qk_dim=8, chunk_size=8, causal=False, max_len=16),
    vocab_size=mlm.BYTE_MLM_VOCAB,
    num_layers=2,
)
# the masked LM of every architecture: bidirectional FLASH, GAU and Transformer++ blocks
ARCH_CFGS = {
    "flash": CFG,
    "gau": fc.LMConfig(
        block=fc.FlashConfig(dim=16, kind="gau", qk_dim=8, causal=False, max_len=32),
        vocab_size=mlm.BYTE_MLM_VOCAB,
        num_layers=2,
    ),
    "transformer": fc.LMConfig(
        block=fc.TransformerConfig(dim=16, heads=2, causal=False),
        vocab_size=mlm.BYTE_MLM_VOCAB,
        num_layers=1,
    ),
}


def _bytes(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape)


# -- masking -----------------------------------------------------------------------------------


def test_masking_proportions():
    """15% of each row chosen exactly (round(0.15 * 512) = 77); of the chosen, 80 / 10 / 10.

    Bound: each of the N = 256 * 77 chosen positions is an independent draw, so each category's
    share is a binomial proportion; it must lie within 6 standard deviations, sqrt(p (1 - p) / N)
    (0.017 for the mask token, 0.013 for the others), of its expectation. A random byte equals
    the original with probability 1/256, so the kept share is 0.1 + 0.1 / 256 and the visibly
    replaced share 0.1 * 255 / 256."""
    tokens = _bytes((256, 512))
    inputs, targets, chosen = mlm.mask_tokens(tokens, np.random.default_rng(1))
    assert inputs.dtype == targets.dtype == np.int64 and chosen.dtype == np.bool_
    np.testing.assert_array_equal(targets, tokens)
    np.testing.assert_array_equal(chosen.sum(axis=1), np.full(256, 77))
    np.testing.assert_array_equal(inputs[~chosen], tokens[~chosen])  # the rest untouched
    n = int(chosen.sum())
    got, orig = inputs[chosen], tokens[chosen]
    shares = {
        "mask": (np.mean(got == mlm.BYTE_MASK_ID), 0.8),
        "random": (np.mean((got != mlm.BYTE_MASK_ID) & (got != orig)), 0.1 * 255 / 256),
        "kept": (np.mean(got == orig), 0.1 + 0.1 / 256),
    }
    for name, (share, p) in shares.items():
        bound = 6 * math.sqrt(p * (1 - p) / n)
        assert abs(share - p) <= bound, (name, share, p, bound)
    assert got.min() >= 0 and got.max() <= mlm.BYTE_MASK_ID  # random bytes stay bytes


def test_same_seed_same_masking():
    tokens = _bytes((4, 64))
    a = mlm.mask_tokens(tokens, np.random.default_rng(7))
    b = mlm.mask_tokens(tokens, np.random.default_rng(7))
    c = mlm.mask_tokens(tokens, np.random.default_rng(8))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[2], c[2])  # another seed chooses other positions


def test_padding_never_chosen():
    rng = np.random.default_rng(3)
    tokens = _bytes((64, 40))
    lengths = rng.integers(0, 41, 64)
    lengths[:2] = (0, 40)  # an empty row and a full one
    real = np.arange(40)[None, :] < lengths[:, None]
    inputs, _, chosen = mlm.mask_tokens(tokens, rng, real=real)
    assert not np.any(chosen & ~real)
    np.testing.assert_array_equal(inputs[~real], tokens[~real])
    want = np.where(lengths > 0, np.maximum(1, np.rint(0.15 * lengths)), 0)
    np.testing.assert_array_equal(chosen.sum(axis=1), want)


def test_bad_setups_are_named():
    with pytest.raises(mlm.MLMError, match="bidirectional"):
        mlm.check_config(fc.LMConfig(block=fc.FlashConfig(dim=16, causal=True), vocab_size=257))
    with pytest.raises(mlm.MLMError, match="outside the vocabulary"):
        mlm.check_config(CFG, mask_id=257)
    with pytest.raises(mlm.MLMError, match="outside the vocabulary"):
        mlm.mask_tokens(_bytes((1, 8)), np.random.default_rng(0), mask_id=256, vocab_size=256)
    causal = fc.LMConfig(block=fc.FlashConfig(dim=16, qk_dim=8, causal=True), vocab_size=257)
    x, y, m = mlm.mask_tokens(_bytes((1, 8)), np.random.default_rng(0))
    with pytest.raises(mlm.MLMError, match="causal"):
        mlm.mlm_loss(fc.init(causal, 0), x, y, m, config=causal)
    with pytest.raises(mlm.MLMError, match="already hold the mask id"):
        mlm.mask_tokens(np.full((1, 8), 256), np.random.default_rng(0))


# -- the loss ----------------------------------------------------------------------------------


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return mlm.mask_tokens(_bytes((2, 24), seed), rng)


def test_spec_loss_counts_only_chosen_positions():
    """The loss is the mean cross-entropy over the chosen positions: it equals the cross-entropy
    of just those positions' logits, ignores every other target, and moves with a chosen one."""
    p = {k: v.astype(np.float64) for k, v in fc.init(CFG, 0).items()}
    x, y, m = _batch()
    loss = mlm.mlm_loss(p, x, y, m, config=CFG)
    logits = fc.lm_logits(p, x, config=CFG)  # (b, t, v)
    alone = fc.cross_entropy(logits[m][None], y[m][None])  # (1, n, v) of the chosen only
    assert_close(loss, alone, quantity="loss", dtype="float64")
    y2 = np.where(m, y, (y + 1) % 256)  # every unchosen target changed
    assert mlm.mlm_loss(p, x, y2, m, config=CFG) == loss
    y3 = y.copy()
    y3[m.nonzero()[0][0], m.nonzero()[1][0]] ^= 1  # one chosen target changed
    assert mlm.mlm_loss(p, x, y3, m, config=CFG) != loss


@pytest.mark.parametrize("backend", BACKENDS)
def test_engine_loss_counts_only_chosen_positions(backend):
    engine = _engine_or_skip(backend)(CFG, fc.init(CFG, 0))
    x, y, m = _batch()
    total, n = engine.eval_loss(x, y, m)
    assert n == int(m.sum())
    y2 = np.where(m, y, (y + 1) % 256)
    assert engine.eval_loss(x, y2, m) == (total, n)  # unchosen terms enter with weight 0
    full, n_all = engine.eval_loss(x, y)  # no loss mask: every position, as before
    assert n_all == y.size and not math.isclose(full / n_all, total / n)


@pytest.mark.parametrize("arch", sorted(ARCH_CFGS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_mlm_loss_is_the_same_in_every_backend(backend, arch):
    """float32 engines on the same weights and batch against the spec in float64 (so each pair of
    backends agrees too), for the bidirectional FLASH, GAU and Transformer++ masked LMs: eval
    loss and the first training step's loss, on the float32 loss row of
    conformance/tolerances.py (1e-5 relative)."""
    cfg = ARCH_CFGS[arch]
    params = fc.init(cfg, 0)
    x, y, m = _batch(1)
    want = mlm.mlm_loss({k: v.astype(np.float64) for k, v in params.items()}, x, y, m, config=cfg)
    engine = _engine_or_skip(backend)(cfg, params)
    total, n = engine.eval_loss(x, y, m)
    assert_close(total / n, float(want), quantity="loss", dtype="float32", err_msg="eval")
    step = engine.train_step(x, y, 1e-3, m)  # the loss before the update
    assert_close(step, float(want), quantity="loss", dtype="float32", err_msg="train_step")
    assert engine.train_step(x, y, 1e-3, m) < step  # and it trains


# -- the command line --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    src = Path(sysconfig.get_paths()["stdlib"])
    for name in ("abc.py", "bisect.py", "colorsys.py", "keyword.py", "glob.py"):
        (folder / name).write_bytes((src / name).read_bytes())
    return folder


TINY = ["--dim", "16", "--layers", "1", "--qk-dim", "8", "--chunk", "8", "--context", "32",
        "--batch", "4", "--eval-tokens", "256", "--warmup", "1", "--quiet", "--eval-every", "2",
        "--log-every", "1"]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_and_eval_mlm_end_to_end(tmp_path, corpus, backend, capsys):
    _engine_or_skip(backend)
    run = tmp_path / "run"
    argv = [*TINY, "--objective", "mlm", "--steps", "4", "--backend", backend]
    assert train.train_main([*argv, "--data", str(corpus), "--out", str(run)]) == 0
    assert runstate.read_run_info(run)["objective"] == "mlm"
    params, config = fc.io.load(run / "model.safetensors")
    assert not config.block.causal and config.vocab_size == mlm.BYTE_MLM_VOCAB
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    evals = [r["eval"] for r in log if "eval" in r]
    assert len(evals) == 2 and all(e["objective"] == "mlm" for e in evals)
    # 256 held-out bytes = 8 windows of 32, round(0.15 * 32) = 5 masked in each
    assert all(e["tokens"] == 40 and math.isfinite(e["bits_per_byte"]) for e in evals)
    # flashcore eval: the training-time score, at another --batch (per-window masking)
    rows = evaluate.evaluate_checkpoint(run, backend, data=corpus, batch=3, eval_tokens=256)
    assert rows[0]["objective"] == "mlm" and rows[0]["tokens"] == 40
    assert_close(rows[0]["loss"], evals[-1]["loss"], quantity="loss", dtype="float32")
    capsys.readouterr()
    assert evaluate.eval_main([str(run), "--backend", backend, "--data", str(corpus),
                               "--eval-tokens", "256"]) == 0  # fmt: skip
    assert "masked positions only" in capsys.readouterr().out
    assert evaluate.generate_main([str(run), "--prompt", "x", "--backend", backend]) == 2
    assert "cannot generate" in capsys.readouterr().err


def test_resume_keeps_the_objective(tmp_path, corpus, capsys):
    _engine_or_skip("torch")
    run = tmp_path / "run"
    argv = [*TINY, "--objective", "mlm", "--steps", "4", "--stop-after", "2"]
    assert train.train_main([*argv, "--data", str(corpus), "--out", str(run)]) == 0
    capsys.readouterr()
    assert train.train_main(["--resume", str(run), "--objective", "clm", "--quiet"]) == 2
    assert "--objective: the run has mlm, you gave clm" in capsys.readouterr().err
    assert train.train_main(["--resume", str(run), "--quiet"]) == 0  # continues as a masked LM
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["eval"]["objective"] for r in log if "eval" in r] == ["mlm", "mlm"]
    # a causal run refuses --objective mlm on resume the same way
    clm = tmp_path / "clm"
    assert train.train_main([*TINY, "--steps", "2", "--data", str(corpus), "--out", str(clm)]) == 0
    capsys.readouterr()
    assert train.train_main(["--resume", str(clm), "--steps", "4", "--objective", "mlm"]) == 2
    assert "--objective: the run has clm, you gave mlm" in capsys.readouterr().err
