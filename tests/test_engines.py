"""Every installed training engine computes the same steps, and a run moves between them: the
research-port round trip (train in torch, continue in JAX or TF)."""

from __future__ import annotations

import importlib.util
import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import flashcore as fc
from flashcore.app import train
from flashcore.app.engine import BACKENDS, OptimConfig, load_engine
from flashcore.conformance.tolerances import training_tolerance


def _engine_or_skip(name):
    if importlib.util.find_spec(name if name != "tf" else "tensorflow") is None:
        pytest.skip(f"{name} is not installed")
    return load_engine(name)


CFG = fc.LMConfig(
    block=fc.FlashConfig(dim=16, qk_dim=8, chunk_size=8, causal=True, max_len=16, token_shift=True),
    vocab_size=32,
    num_layers=2,
)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_engine_steps_match_torch(backend):
    other = _engine_or_skip(backend)
    ref_cls = _engine_or_skip("torch")
    p = fc.init(CFG, 0)
    rng = np.random.default_rng(0)
    opt = OptimConfig(weight_decay=0.1, grad_clip=1.0)
    a, b = ref_cls(CFG, p, optim=opt), other(CFG, p, optim=opt)
    loss_rtol, _ = training_tolerance("backends", "loss")
    _, params_atol = training_tolerance("backends", "params")
    for _ in range(4):
        x, y = rng.integers(0, 32, (2, 20)), rng.integers(0, 32, (2, 20))
        la, lb = a.train_step(x, y, 1e-2), b.train_step(x, y, 1e-2)
        assert abs(la - lb) <= loss_rtol * max(1.0, abs(la))
    pa, pb = a.params(), b.params()
    assert max(float(np.abs(pa[k] - pb[k]).max()) for k in pa) < params_atol
    sa, sb = a.optimizer_state(), b.optimizer_state()
    assert int(sa["step"]) == int(sb["step"]) == 4
    # moments handed across continue identically
    b2 = other(CFG, pa, optim=opt)
    b2.load_optimizer_state(sa)
    x, y = rng.integers(0, 32, (2, 20)), rng.integers(0, 32, (2, 20))
    a.train_step(x, y, 1e-2)
    b2.train_step(x, y, 1e-2)
    pa, pb = a.params(), b2.params()
    assert max(float(np.abs(pa[k] - pb[k]).max()) for k in pa) < 1e-5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    src = Path(sysconfig.get_paths()["stdlib"])
    for name in (
        "abc.py",
        "bisect.py",
        "colorsys.py",
        "keyword.py",
        "this.py",
        "copy.py",
        "glob.py",
    ):
        (folder / name).write_bytes((src / name).read_bytes())
    return folder


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_research_port_round_trip(tmp_path, corpus, backend):
    """Train 24 steps in torch, continue to 48 in another backend: the loss at the hand-over is the
    same to 1e-5, and training keeps lowering the held-out loss."""
    _engine_or_skip(backend)
    _engine_or_skip("torch")
    run = tmp_path / "run"
    common = ["--dim", "32", "--layers", "2", "--qk-dim", "16", "--chunk", "16", "--context", "64",
              "--batch", "4", "--eval-tokens", "1024", "--log-every", "1", "--quiet", "--warmup", "4",
              "--data", str(corpus), "--eval-every", "24", "--lr", "5e-3"]  # fmt: skip
    assert (
        train.train_main([*common, "--steps", "48", "--stop-after", "24", "--out", str(run)]) == 0
    )
    torch_eval = [r["eval"]["loss"] for r in _log(run) if "eval" in r]
    # the same checkpoint evaluated by the other backend: the hand-over loss
    rows = train.evaluate_checkpoint(
        run, f"torch,{backend}", data=corpus, context=64, eval_tokens=1024
    )
    assert abs(rows[0]["loss"] - rows[1]["loss"]) <= 1e-5
    assert (
        train.train_main(["--resume", str(run), "--steps", "48", "--backend", backend, "--quiet"])
        == 0
    )
    evals = [r["eval"]["loss"] for r in _log(run) if "eval" in r]
    assert len(evals) == 2 and abs(evals[0] - torch_eval[0]) < 1e-12
    assert evals[1] < evals[0], evals  # and keeps falling


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_training_steps_are_finite_and_learn(backend):
    cls = _engine_or_skip(backend)
    engine = cls(CFG, fc.init(CFG, 1), dtype="bfloat16")
    rng = np.random.default_rng(1)
    x = rng.integers(0, 32, (4, 24))
    losses = [engine.train_step(x, x, 1e-2) for _ in range(6)]  # memorise one batch
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert all(v.dtype == np.float32 for v in engine.params().values())  # float32 master weights


GEN_BLOCKS = {
    "flash": CFG.block,
    "gau": fc.FlashConfig(dim=16, qk_dim=8, kind="gau", causal=True, max_len=16),  # recompute
    "gau-prefix": fc.FlashConfig(
        dim=16, qk_dim=8, kind="gau", causal=True, max_len=16, length_mode="prefix"
    ),
    "transformer": fc.TransformerConfig(dim=16, heads=2),
}


@pytest.mark.parametrize("arch", sorted(GEN_BLOCKS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_engine_generate_is_the_argmax_of_the_forward_and_reproducible(backend, arch):
    """Greedy tokens are the spec forward's argmax at every step, for ragged prompts; a seed
    reproduces a sample; the layout is prompt, new tokens, zeros."""
    cls = _engine_or_skip(backend)
    config = fc.LMConfig(block=GEN_BLOCKS[arch], vocab_size=32, num_layers=2)
    p = fc.init(config, 5)
    rng = np.random.default_rng(0)
    p = {k: (v + rng.normal(0, 0.2, v.shape)).astype(np.float32) for k, v in p.items()}
    engine = cls(config, p)
    prompt, lengths = rng.integers(0, 32, (2, 6)), np.array([6, 3])
    out = engine.generate(prompt, 5, temperature=0, lengths=lengths)
    assert out.shape == (2, 11) and out.dtype == np.int64
    for i, n in enumerate(lengths):
        row = out[i, : n + 5]
        np.testing.assert_array_equal(row[:n], prompt[i, :n])
        assert np.all(out[i, n + 5 :] == 0)
        for k in range(5):  # new token k: the argmax of the forward on what came before it
            # (the prefix, not the whole row: a GAU LM dividing by the length n sees n grow)
            logits = fc.lm_logits(p, row[None, : n + k], config=config)[0, -1]  # (v,)
            ok = logits[row[n + k]] >= logits.max() - 1e-4  # up to float32 near-ties
            assert ok, (backend, arch, i, k)
    kw = dict(temperature=0.9, top_k=8, top_p=0.9, seed=3)
    a, b = engine.generate(prompt, 5, **kw), engine.generate(prompt, 5, **kw)
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() < 32
    tiny = engine.generate(prompt, 5, temperature=1.0, top_p=1e-9, seed=3, lengths=lengths)
    np.testing.assert_array_equal(tiny, out)  # a nucleus of one token: greedy
