"""``flashcore train`` under torchrun: 2 CPU processes (gloo, DistributedDataParallel) follow the
loss curve of one process on the same global batch, and save the same weights; resuming under
torchrun continues it; a batch the processes cannot share evenly is a clear error.
The bound (1e-5 relative) is explained in tests/_data_parallel.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="flashcore.torch needs torch")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from _data_parallel import RTOL, TINY, compare_runs, make_corpus  # noqa: E402

from flashcore.app import cli  # noqa: E402

WORKER = Path(__file__).with_name("_torch_train_ddp_worker.py")


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node=2 ARGS``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, env=env)


def test_two_processes_follow_the_single_process_run(tmp_path):
    data = ["--data", str(make_corpus(tmp_path / "corpus")), "--seed", "5"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert cli.main([*TINY, *data, "--steps", "5", "--out", str(single)]) == 0

    # the worker checks that each rank trains on 2 of the 4 rows of every batch
    first = _torchrun(
        str(WORKER), *TINY, *data, "--steps", "5", "--stop-after", "3", "--out", str(ddp)
    )
    assert first.returncode == 0, first.stderr[-4000:]
    assert "data parallel over 2 processes (torchrun, gloo)" in first.stderr
    assert first.stderr.count("held-out loss") == 1  # only rank 0 reports
    second = _torchrun("-m", "flashcore", "train", "--resume", str(ddp), "--steps", "5", "--quiet")
    assert second.returncode == 0, second.stderr[-4000:]
    assert sorted(p.name for p in ddp.iterdir()) == [
        "ckpt",
        "log.jsonl",
        "model.safetensors",
        "run.json",
        "tb",
    ]  # rank 1 wrote nothing beside rank 0's files (no temporaries, no lock left)
    assert len(list((ddp / "tb").iterdir())) == 2  # rank 0's event file of each of the 2 runs
    assert sorted(p.name for p in (ddp / "ckpt").iterdir()) == ["step-000003", "step-000005"]

    worst = compare_runs(ddp, single, steps=5)
    print(worst)
    assert max(worst.values()) <= RTOL, worst


def test_a_batch_the_processes_cannot_share_is_a_clear_error(tmp_path):
    data = ["--data", str(make_corpus(tmp_path / "corpus"))]
    out = str(tmp_path / "run")
    res = _torchrun("-m", "flashcore", *TINY, *data, "--batch", "3", "--steps", "2", "--out", out)
    assert res.returncode != 0
    assert "--batch 3 is the global batch and must be divisible by the 2" in res.stderr
    assert not (tmp_path / "run").exists()  # nothing written


def test_a_garbled_world_size_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "two")
    out = tmp_path / "run"
    args = [*TINY, "--data", str(make_corpus(tmp_path / "corpus")), "--steps", "1"]
    assert cli.main([*args, "--out", str(out)]) == 2
    assert "WORLD_SIZE='two' in the environment is not a number" in capsys.readouterr().err
    assert not out.exists()
