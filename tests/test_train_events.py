"""``flashcore train`` writes TensorBoard events beside log.jsonl (``RUN/tb``), the same values as
the log, in every backend; a resumed run drops the stopped run's events after its checkpoint;
training goes on, with one notice, where tensorboardX is missing."""

from __future__ import annotations

import builtins
import json

import pytest
from _data_parallel import make_corpus

from flashcore.app import train

pytest.importorskip("tensorboardX", reason="the events are written with tensorboardX")
event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="the events are read back with tensorboard's EventAccumulator",
)

TINY = ["--dim", "32", "--layers", "2", "--qk-dim", "16", "--chunk", "16", "--context", "48",
        "--batch", "2", "--eval-tokens", "96", "--log-every", "1", "--quiet", "--warmup", "1"]  # fmt: skip
_NEEDS = {"torch": ("torch",), "jax": ("jax", "optax"), "tf": ("tensorflow",)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _events(run) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every scalar under RUN/tb (all its event files); each step once."""
    acc = event_accumulator.EventAccumulator(str(run / "tb"))
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        steps = [e.step for e in acc.Scalars(tag)]
        assert len(steps) == len(set(steps)), (tag, steps)  # a purged step is not read twice
        out[tag] = {e.step: e.value for e in acc.Scalars(tag)}
    return out


def _log(run) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("backend", ["torch", "jax", "tf"])
def test_events_hold_the_logged_values(tmp_path, corpus, backend):
    for module in _NEEDS[backend]:
        pytest.importorskip(module)
    run = tmp_path / "run"
    args = [*TINY, "--backend", backend, "--data", str(corpus), "--eval-every", "2"]
    assert train.train_main([*args, "--steps", "3", "--out", str(run)]) == 0
    events = _events(run)
    want = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "eval/loss"}
    assert want <= events.keys(), events.keys()
    assert "eval/bits_per_byte" in events
    for rec in _log(run):
        if "loss" in rec:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
                assert events[f"train/{key}"][rec["step"]] == pytest.approx(rec[key], rel=1e-6)
        if "eval" in rec:
            ev = rec["eval"]
            assert events["eval/loss"][rec["step"]] == pytest.approx(ev["loss"], rel=1e-6)
            bpb = events["eval/bits_per_byte"][rec["step"]]
            assert bpb == pytest.approx(ev["bits_per_byte"], rel=1e-6)
    assert sorted(events["train/loss"]) == [1, 2, 3] and sorted(events["eval/loss"]) == [2, 3]


def test_a_resumed_run_continues_the_curve_without_the_lost_steps(tmp_path, corpus):
    pytest.importorskip("torch")
    run = tmp_path / "run"
    args = [*TINY, "--data", str(corpus), "--eval-every", "2", "--steps", "5", "--out", str(run)]
    assert train.train_main([*args, "--stop-after", "3"]) == 0  # checkpoints at 2 and 3
    # as if the process had died after step 3's log but before its checkpoint: resume from 2
    (newest,) = [p for p in (run / "ckpt").iterdir() if p.name.endswith("03")]
    for f in newest.iterdir():
        f.unlink()
    newest.rmdir()
    assert train.train_main(["--resume", str(run), "--quiet"]) == 0
    events = _events(run)
    logged = {rec["step"]: rec["loss"] for rec in _log(run) if "loss" in rec}
    assert sorted(events["train/loss"]) == [1, 2, 3, 4, 5]
    for step, loss in logged.items():  # step 3 is the resumed run's, not the lost one's
        assert events["train/loss"][step] == pytest.approx(loss, rel=1e-6)


def test_training_goes_on_without_tensorboardx(tmp_path, corpus, monkeypatch, capsys):
    pytest.importorskip("torch")
    real_import = builtins.__import__

    def no_tbx(name, *args, **kwargs):
        if name.split(".")[0] == "tensorboardX":
            raise ImportError("No module named 'tensorboardX'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tbx)
    run = tmp_path / "run"
    args = [*TINY, "--data", str(corpus), "--steps", "2", "--out", str(run)]
    assert train.train_main(args) == 0
    err = capsys.readouterr().err
    assert err.count("tensorboardX is not installed") == 1, err
    assert (run / "log.jsonl").is_file() and not (run / "tb").exists()
