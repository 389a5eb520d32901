"""Gradient accumulation (``--grad-accum N``) and activation checkpointing
(``--checkpoint-activations``) in every engine.

- An engine step in N micro-batches equals the step on the whole batch, also with a loss mask that
  counts different numbers of positions in each micro-batch (the mean is over the whole batch's
  counted positions, not a mean of micro-batch means).
- ``flashcore train --batch 8 --grad-accum 4`` follows ``--batch 8`` for five steps, causal and
  masked LM, in torch, JAX and TF; ``--resume`` keeps the setting and refuses another one; a bad
  value is an error before anything is written.
- The gradients with activation checkpointing equal those without.

Bounds: accumulation changes only the order of float32 sums (the micro-batches' gradients added
one after another instead of one sum over the batch), as data parallelism does, so the losses are
held to the data-parallel TRAINING bound (1e-5 relative; conformance/tolerances.py). The weights
are held to TRAINING's absolute bound for AdamW's amplification (the "backends" row, 2e-4): a
weight whose gradient is at rounding level, far below eps, moves by a fraction of lr that follows
that rounding (seen here: 2e-6 after one step in jax, 3e-5 relative after five in torch, and TF's
whole-batch XLA step sums its gradients in another order than its micro-batch steps). A wrong
weighting (a mean of micro-batch means, a lost micro-batch) moves the loss by 1e-3 or more.
Checkpointing recomputes the same operations, so its gradients are held to the float32 gradient
bound of the conformance table.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from _data_parallel import RTOL, TINY, compare_runs, make_corpus
from safetensors.numpy import load_file

import flashcore as fc
from flashcore.app import cli, runstate, train
from flashcore.conformance.assertions import assert_close
from flashcore.conformance.tolerances import training_tolerance

_, PARAMS_ATOL = training_tolerance("backends", "params")

BACKENDS = ["torch", "jax", "tf"]
_NEEDS = {"torch": ("torch",), "jax": ("jax", "optax"), "tf": ("tensorflow",)}


def _need(backend: str) -> None:
    for module in _NEEDS[backend]:
        pytest.importorskip(module, reason=f"the {backend} engine needs {module}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _config() -> fc.LMConfig:
    block = fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4, causal=True, init="uniform")
    return fc.LMConfig(block=block, vocab_size=13, num_layers=2)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max()) / max(float(np.abs(b).max()), 1e-30)


@pytest.mark.parametrize("backend", BACKENDS)
def test_engine_step_in_micro_batches_is_the_whole_batch_step(backend):
    _need(backend)
    from flashcore.app.engine import load_engine

    config = _config()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 13, (8, 12))
    y = rng.integers(0, 13, (8, 12))
    mask = rng.random((8, 12)) < 0.3  # micro-batches of 2 rows count different numbers
    mask[0:2] = False  # one micro-batch counts nothing
    mask[2, :] = True
    counts = [int(mask[k : k + 2].sum()) for k in range(0, 8, 2)]
    assert len(set(counts)) > 2, counts
    engines = {
        n: load_engine(backend)(_config(), fc.init(config, seed=1), grad_accum=n) for n in (1, 4)
    }
    losses, norms = {n: [] for n in engines}, {n: [] for n in engines}
    for step in range(3):
        for n, engine in engines.items():
            m = mask if step != 1 else None  # the causal-LM step too
            losses[n].append(engine.train_step(x, y, 1e-2, m))
            norms[n].append(engine.grad_norm)
    assert _rel(losses[4], losses[1]) <= RTOL, losses
    assert losses[1][2] != losses[1][0]  # the steps change the weights
    # the same weights, the same gradient: the float32 gradient bound of the conformance table
    # (TF's whole-batch XLA step sums its gradients in another order than the micro-batches do)
    assert_close(norms[4][0], norms[1][0], quantity="grad_params", dtype="float32")
    # AdamW moves a weight whose gradient is at rounding level (~1e-12, far below eps) by a
    # fraction of lr that follows that rounding: the weights are held to the absolute bound
    # TRAINING documents for that (the "backends" row)
    want, got = engines[1].params(), engines[4].params()
    worst = max(float(np.abs(got[k] - want[k]).max()) for k in want)
    assert worst <= PARAMS_ATOL, worst


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_with_activation_checkpointing_are_the_same(backend):
    _need(backend)
    config = _config()
    params = fc.init(config, seed=2)
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 13, (2, 12)), rng.integers(0, 13, (2, 12))
    grads = {flag: _grads(backend, config, params, x, y, flag) for flag in (False, True)}
    for name in grads[False]:
        assert_close(grads[True][name], grads[False][name], quantity="grad_params", err_msg=name)


def _grads(backend, config, params, x, y, checkpoint: bool) -> dict[str, np.ndarray]:
    """{native name: gradient} of the mean loss of x, y (float32)."""
    if backend == "torch":
        import torch

        from flashcore.torch import LM

        lm = LM(config, init=False)
        lm.load_canonical(params)
        lm.checkpoint_activations = checkpoint
        lm.loss(torch.as_tensor(x), torch.as_tensor(y)).backward()
        return {n: p.grad.numpy() for n, p in lm.named_parameters()}
    if backend == "jax":
        import jax

        from flashcore.jax import functional

        def loss(p):
            return functional.loss(p, x, y, config=config, checkpoint_activations=checkpoint)

        g = jax.grad(loss)(jax.tree_util.tree_map(np.asarray, params))
        text = str(jax.make_jaxpr(loss)(params))
        assert ("checkpoint[" in text or "remat" in text) == checkpoint  # the remat is there
        return {k: np.asarray(v) for k, v in g.items()}
    import tensorflow as tf

    from flashcore.tf import LM

    lm = LM(config, params=params)
    lm.checkpoint_activations = checkpoint
    with tf.GradientTape() as tape:
        loss = lm.loss(tf.constant(x, tf.int32), tf.constant(y, tf.int32), training=True)
    variables = lm.native_variables()
    grads = tape.gradient(loss, list(variables.values()))
    return {k: tf.convert_to_tensor(g).numpy() for k, g in zip(variables, grads)}


# The micro-batch arithmetic of both objectives is the engine test's, in every backend; the runs
# check the command's wiring: both objectives in torch, the masked LM (uneven micro-batch counts)
# in jax and tf.
RUNS = [("torch", "clm"), ("torch", "mlm"), ("jax", "mlm"), ("tf", "mlm")]


@pytest.mark.slow  # eight short runs
@pytest.mark.parametrize(("backend", "objective"), RUNS, ids=[f"{b}-{o}" for b, o in RUNS])
def test_grad_accum_run_follows_the_whole_batch_run(tmp_path, corpus, backend, objective):
    _need(backend)
    args = [*TINY, "--batch", "8", "--steps", "5", "--backend", backend, "--data", str(corpus)]
    args += ["--objective", objective, "--seed", "4"]
    assert cli.main([*args, "--out", str(tmp_path / "whole")]) == 0
    assert cli.main([*args, "--grad-accum", "4", "--out", str(tmp_path / "accum")]) == 0
    worst = compare_runs(tmp_path / "accum", tmp_path / "whole", steps=5)
    print(worst)
    assert max(worst["loss"], worst["eval"]) <= RTOL, worst
    # the weights: AdamW carries the rounding of gradients far below eps at full size (see the
    # engine test above), so they are held to TRAINING's absolute bound for it
    got = load_file(runstate.latest(tmp_path / "accum").model)
    want = load_file(runstate.latest(tmp_path / "whole").model)
    moved = max(float(np.abs(got[k] - want[k]).max()) for k in want)
    assert moved <= PARAMS_ATOL, moved


def test_resume_keeps_grad_accum_and_refuses_another(tmp_path, corpus, monkeypatch, capsys):
    pytest.importorskip("torch")
    from flashcore.torch import engine as torch_engine

    made = []
    real = torch_engine.Engine.__init__

    def spy(self, *a, **kw):
        made.append(kw.get("grad_accum"))
        real(self, *a, **kw)

    monkeypatch.setattr(torch_engine.Engine, "__init__", spy)
    run = tmp_path / "run"
    args = [*TINY[1:], "--data", str(corpus), "--steps", "3", "--out", str(run)]
    assert train.train_main([*args, "--grad-accum", "2", "--stop-after", "1"]) == 0
    assert json.loads((run / "run.json").read_text())["args"]["grad_accum"] == 2
    assert train.train_main(["--resume", str(run), "--stop-after", "2", "--quiet"]) == 0
    assert made == [2, 2]
    capsys.readouterr()
    assert train.train_main(["--resume", str(run), "--grad-accum", "4", "--quiet"]) == 2
    assert "--grad-accum: the run has 2, you gave 4" in capsys.readouterr().err
    # --checkpoint-activations may change on resume (it changes memory and time, not the math)
    assert train.train_main(["--resume", str(run), "--checkpoint-activations", "--quiet"]) == 0


def test_bad_grad_accum_is_an_error_before_anything_is_written(tmp_path, corpus, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "run"
    args = [*TINY[1:], "--data", str(corpus), "--steps", "1", "--out", str(out)]
    with pytest.raises(SystemExit):
        train.train_main([*args, "--grad-accum", "0"])
    assert "must be > 0" in capsys.readouterr().err
    assert train.train_main([*args, "--grad-accum", "3"]) == 2  # --batch 4
    err = capsys.readouterr().err
    assert "--grad-accum 3 must divide the batch" in err and "--batch 4" in err, err
    assert not out.exists()


@pytest.mark.slow  # two child processes
def test_bench_remat_measures_both_modes(tmp_path, capsys):
    pytest.importorskip("torch")
    from flashcore.app import remat_bench

    out = tmp_path / "remat.json"
    argv = ["--context", "128", "--layers", "2", "--dim", "32", "--repeats", "1"]
    assert remat_bench.main([*argv, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["backend"], r["mode"], r["status"]) for r in rows] == [
        ("torch", "keep", "ok"),
        ("torch", "remat", "ok"),
    ]
    assert rows[0]["loss"] == pytest.approx(rows[1]["loss"], rel=RTOL)  # the same forward
    assert "| torch | 128 | 2 x 32 | remat |" in capsys.readouterr().out
