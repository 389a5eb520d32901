"""Run folders a user can trust: a training process killed with SIGKILL at any moment (at random
times, and at every crash point inside the save) resumes on the same loss curve; ``--out`` never
replaces a run silently; one writer per run folder (the lock); arguments that contradict the run
being resumed are errors listing each one."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _data_parallel import make_corpus, records

pytest.importorskip("torch", reason="the training tests use the torch engine")

from flashcore import io  # noqa: E402
from flashcore.app import (
    runstate,  # noqa: E402
    train,  # noqa: E402
)
from flashcore.app.evaluate import resolve_model  # noqa: E402
from flashcore.app.runlock import LOCK_NAME, RunLock, RunLocked  # noqa: E402
from flashcore.conformance.tolerances import training_tolerance  # noqa: E402

TINY = ["--dim", "32", "--layers", "2", "--qk-dim", "16", "--chunk", "16", "--context", "48",
        "--batch", "2", "--eval-tokens", "96", "--log-every", "1", "--quiet", "--warmup", "2"]  # fmt: skip

# the resumed run against the uninterrupted one: see conformance/tolerances.py TRAINING
RTOL, _ = training_tolerance("resume", "loss")
PARAM_RTOL, PARAM_ATOL = training_tolerance("resume", "params")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _losses(run: Path) -> dict[int, float]:
    return records(run)[0]


def _start(args: list[str], crash_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("FLASHCORE_CRASH_AT", None)
    if crash_at:
        env["FLASHCORE_CRASH_AT"] = crash_at
    cmd = [sys.executable, "-m", "flashcore", "train", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _logged_steps(run: Path) -> int:
    try:
        return len((run / "log.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def _check_after_kill(run: Path) -> None:
    """What a killed run must leave: its newest checkpoint whole, and what ``flashcore eval RUN``
    reads loadable; ``RUN/model.safetensors``, when there, a whole checkpoint's weights (it may
    lag one checkpoint behind after a kill between the publication and its link)."""
    ckpt = runstate.latest(run)
    if ckpt is not None:
        assert runstate.load_checkpoint(ckpt)[3].step == ckpt.step
        assert resolve_model(run) == ckpt.model
        io.load(resolve_model(run))
    if (run / "model.safetensors").exists():
        step = int(io.read_header(run / "model.safetensors")["step"])
        assert ckpt is not None and step in [c.step for c in runstate.checkpoints(run)] + [
            ckpt.step
        ]
        io.load(run / "model.safetensors")


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume_gives_the_uninterrupted_curve(tmp_path, corpus):
    steps = 14
    common = [*TINY, "--data", str(corpus), "--eval-every", "1", "--seed", "7", "--keep", "2"]
    ref = _start([*common, "--steps", str(steps), "--out", str(tmp_path / "ref")])
    run = tmp_path / "run"
    rng = random.Random(19)
    resume = ["--resume", str(run), "--quiet"]
    killed_at = []

    def random_kill(args: list[str]) -> None:
        proc = _start(args)
        target = _logged_steps(run) + rng.randint(1, 4)  # records: a loss and an eval per step
        deadline = time.monotonic() + 120
        while _logged_steps(run) < target and proc.poll() is None:
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        killed_at.append(f"random@{target}" if proc.returncode == -signal.SIGKILL else "ended")
        _check_after_kill(run)

    random_kill([*common, "--steps", str(steps), "--out", str(run)])
    stderr = []
    for point in runstate.CRASH_POINTS:
        proc = _start(resume, crash_at=point)
        _, err = proc.communicate(timeout=120)
        stderr.append(err)
        assert proc.returncode == -signal.SIGKILL, f"{point} never reached: {err[-2000:]}"
        killed_at.append(point)
        _check_after_kill(run)
    for _ in range(2):
        random_kill(resume)
    last = _start(resume)
    _, err = last.communicate(timeout=120)
    assert last.returncode == 0, err[-3000:]
    assert ref.wait(timeout=120) == 0, ref.stderr.read()[-3000:]

    # every resume after a kill took over the dead process's lock, and said so
    assert all("taking over the lock of process" in e for e in [*stderr, err]), stderr
    assert any("ignoring" in e or "removed" in e for e in stderr), "no partial save was met"
    assert not (run / LOCK_NAME).exists()
    got, want = _losses(run), _losses(tmp_path / "ref")
    assert sorted(got) == sorted(want) == list(range(1, steps + 1)), killed_at
    np.testing.assert_allclose([got[s] for s in want], [want[s] for s in want], rtol=RTOL)
    assert want[steps] < want[1]  # it learns: a run that does nothing would compare equal
    kept = runstate.checkpoints(run)
    assert [c.step for c in kept] == [steps - 1, steps]  # --keep 2
    assert not [p for p in (run / "ckpt").iterdir() if p.name.startswith(".")]
    a, _ = io.load(run / "model.safetensors")
    b, _ = io.load(tmp_path / "ref" / "model.safetensors")
    for k in b:
        np.testing.assert_allclose(a[k], b[k], rtol=PARAM_RTOL, atol=PARAM_ATOL)
    print(f"killed at: {killed_at}")


def test_resume_passes_over_a_damaged_checkpoint(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    common = [*TINY, "--data", str(corpus), "--eval-every", "2", "--keep", "3"]
    assert train.train_main([*common, "--steps", "8", "--stop-after", "4", "--out", str(run)]) == 0
    newest = run / "ckpt" / "step-000004" / "train_state.safetensors"
    blob = bytearray(newest.read_bytes())
    blob[-1] ^= 0xFF  # a flipped byte: the size is right, the hash is not
    newest.write_bytes(bytes(blob))
    (run / "ckpt" / ".step-000006.partial").mkdir()  # as a killed save leaves it
    assert train.train_main(["--resume", str(run), "--steps", "8", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "step-000004: train_state.safetensors does not match the manifest's sha256" in err
    assert ".step-000006.partial" in err
    assert sorted(_losses(run)) == list(range(1, 9))  # steps 3, 4 redone from step 2, once each
    assert [c.step for c in runstate.checkpoints(run)] == [4, 6, 8]  # the damaged 4 redone


def test_out_on_a_run_is_an_error_unless_force(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    args = [*TINY, "--data", str(corpus), "--steps", "2", "--out", str(run)]
    assert train.train_main(args) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert train.train_main(args) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--force" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # untouched
    (run / "notes.txt").write_text("mine")
    assert train.train_main([*args, "--force", "--seed", "1"]) == 0
    assert (run / "notes.txt").read_text() == "mine"  # only the run's files are replaced
    assert json.loads((run / "run.json").read_text())["args"]["seed"] == 1
    assert [c.step for c in runstate.checkpoints(run)] == [2]


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    args = [*TINY, "--data", str(corpus), "--steps", "2", "--out", str(run)]
    assert train.train_main(args) == 0
    assert not (run / LOCK_NAME).exists()  # released on exit
    with RunLock(run):  # a live writer (this process)
        with pytest.raises(RunLocked, match="is in use by process"):
            RunLock(run).acquire()
        assert train.train_main(["--resume", str(run), "--steps", "3", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"{run} is in use by process {os.getpid()}" in err
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    assert train.train_main(["--resume", str(run), "--steps", "3", "--quiet"]) == 0
    assert f"taking over the lock of process {dead.pid}" in capsys.readouterr().err
    assert not (run / LOCK_NAME).exists()


@pytest.mark.slow
def test_two_processes_on_one_run_folder(tmp_path, corpus):
    run = tmp_path / "run"
    args = [*TINY, "--data", str(corpus), "--steps", "100000", "--eval-every", "0"]
    first = _start([*args, "--out", str(run)])
    deadline = time.monotonic() + 60
    while not (run / LOCK_NAME).exists():
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
        time.sleep(0.01)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "flashcore", "train", "--resume", str(run), "--steps", "500"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        first.kill()
        first.communicate()
    assert second.returncode == 2
    assert f"is in use by process {first.pid}" in second.stderr


def test_arguments_that_contradict_the_run_are_errors(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    common = [*TINY, "--data", str(corpus)]
    assert train.train_main([*common, "--steps", "4", "--stop-after", "2", "--out", str(run)]) == 0
    before = (run / "log.jsonl").read_bytes()
    bad = ["--resume", str(run), "--steps", "4", "--arch", "gau", "--dim", "64", "--lr", "3e-3"]
    assert train.train_main(bad) == 2
    err = capsys.readouterr().err
    assert "--arch: the run has flash, you gave gau" in err
    assert "--dim: the run has 32, you gave 64" in err
    assert err.count("the run has") == 2  # --lr: the same as the run's, no conflict
    assert (run / "log.jsonl").read_bytes() == before
    assert train.train_main(["--resume", str(run), "--out", str(tmp_path / "x")]) == 2
    assert "drop --out" in capsys.readouterr().err
    # what --resume may change: steps, eval cadence, logging, backend (here the same one)
    ok = ["--resume", str(run), "--steps", "5", "--eval-every", "5", "--log-every", "2"]
    assert train.train_main([*ok, "--backend", "torch", *common[-2:], "--quiet"]) == 0
    assert max(_losses(run)) == 5


def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path, corpus, capsys):
    args = [*TINY, "--data", str(corpus), "--steps", "3", "--eval-every", "0"]
    assert train.train_main([*args, "--out", str(tmp_path / "ref")]) == 0
    run = tmp_path / "run"
    proc = _start([*args, "--out", str(run)], crash_at="save-begin")  # killed in its only save
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL and runstate.latest(run) is None
    assert train.train_main(["--resume", str(run), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "no complete checkpoint yet; starting the run again from step 0" in err
    got, want = _losses(run), _losses(tmp_path / "ref")
    assert sorted(got) == sorted(want) == [1, 2, 3]
    np.testing.assert_allclose([got[s] for s in want], [want[s] for s in want], rtol=RTOL)


def test_a_run_state_from_a_newer_flashcore_is_refused_by_name(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"format": "flashcore-run", "format_version": 99}))
    with pytest.raises(runstate.RunStateError, match=r"run\.json: written in flashcore-run format"):
        runstate.read_run_info(run)
    (run / "run.json").write_text("{trunc")
    with pytest.raises(runstate.RunStateError, match=r"run\.json: unreadable"):
        runstate.read_run_info(run)


def test_convert_keeps_a_checkpoints_training_metadata(tmp_path, corpus, capsys):
    from flashcore.app.cli import main as cli_main

    run = tmp_path / "run"
    assert train.train_main([*TINY, "--data", str(corpus), "--steps", "2", "--out", str(run)]) == 0
    src, dst = run / "model.safetensors", tmp_path / "copy.safetensors"
    assert cli_main(["convert", str(src), str(dst)]) == 0
    want = io.read_header(src)
    got = io.read_header(dst)
    assert {k: got.get(k) for k in ("step", "corpus", "corpus_sha256", "train_loss")} == {
        k: want[k] for k in ("step", "corpus", "corpus_sha256", "train_loss")
    }
    assert got["step"] == "2"
    # through every native format and back: torch, Flax and Keras files keep it beside the config
    keys = ("step", "corpus", "corpus_sha256", "train_loss")
    hop = src
    for suffix, module in [(".pt", "torch"), (".msgpack", "jax"), (".weights.h5", "tf")]:
        backend_io = pytest.importorskip(f"flashcore.{module}.io", reason=f"{module} not installed")
        nxt = tmp_path / f"hop{suffix}"
        assert cli_main(["convert", str(hop), str(nxt)]) == 0
        kept = backend_io.read_extra(nxt)
        assert {k: kept.get(k) for k in keys} == {k: want[k] for k in keys}, suffix
        hop = nxt
    back = tmp_path / "back.safetensors"
    assert cli_main(["convert", str(hop), str(back)]) == 0
    assert {k: io.read_header(back).get(k) for k in keys} == {k: want[k] for k in keys}
    capsys.readouterr()
    assert cli_main(["convert", str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert "exists; pass --force to replace it" in err and "force=True" not in err


def test_eval_tokens_per_s_is_the_steady_rate():
    """The first call (jax / tf compile there) and a short last batch (a new shape: compiled
    again) are not timed; the loss still counts every batch."""
    import time as _time

    import numpy as np

    from flashcore.app.evaluate import evaluate

    class SlowFirstEngine:
        calls = 0

        def eval_loss(self, x, y, loss_mask=None):
            self.calls += 1
            _time.sleep(0.5 if self.calls == 1 or x.shape[0] < 4 else 0.01)
            return 2.0 * y.size, y.size

    data = np.arange(4 * 16 * 5 + 2 * 16 + 1) % 256  # 5 full batches of 4 windows, then 2 windows
    out = evaluate(SlowFirstEngine(), data, context=16, batch=4, max_tokens=10**6)
    assert out["loss"] == 2.0 and out["tokens"] == 22 * 16
    # timed: batches 2..5 (4 x 64 tokens) at ~10 ms each; the 0.5 s calls would give < 700
    assert out["tokens_per_s"] > 2000
