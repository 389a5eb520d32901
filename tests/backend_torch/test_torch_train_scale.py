"""``flashcore train`` under torchrun past data parallelism, on 2 CPU processes (gloo):

- ``--shard``: FSDP2 on every block; 5 steps follow one process, each rank holding half of the
  parameters and AdamW state; a sharded checkpoint resumes sharded and on one unsharded process.
- ``--context-parallel 2``: every sequence split along t; 5 steps follow one process.

Bounds: the TRAINING tolerance (conformance/tolerances.py) of "data_parallel" for sharding (the
gradients are summed in another order) and "context_parallel" for the sequence split.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="flashcore.torch needs torch")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from _data_parallel import TINY, assert_runs_close, make_corpus  # noqa: E402

from flashcore.app import cli  # noqa: E402

WORKER = Path(__file__).with_name("_torch_train_scale_worker.py")
pytestmark = pytest.mark.slow  # child processes: ~10 s per torchrun on 2 cores


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node=2 ARGS``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[Path, list[str]]:
    """One process, 5 steps: the run the others must follow; and its arguments."""
    root = tmp_path_factory.mktemp("scale")
    args = [*TINY, "--data", str(make_corpus(root / "corpus")), "--seed", "5", "--steps", "5"]
    assert cli.main([*args, "--out", str(root / "single")]) == 0
    return root / "single", args


def test_sharded_run_follows_one_process_and_resumes_anywhere(single, tmp_path):
    want, args = single
    first = _torchrun(
        str(WORKER), *args, "--shard", "--stop-after", "3", "--out", str(tmp_path / "a")
    )
    assert first.returncode == 0, first.stderr[-4000:]
    assert "parameters sharded over 2 (FSDP2)" in first.stderr
    shutil.copytree(tmp_path / "a", tmp_path / "b")

    again = _torchrun(str(WORKER), "train", "--resume", str(tmp_path / "a"), "--shard", "--quiet")
    assert again.returncode == 0, again.stderr[-4000:]
    print(assert_runs_close(tmp_path / "a", want, 5, "data_parallel"))

    # the same sharded checkpoint, resumed by one process without sharding
    assert cli.main(["train", "--resume", str(tmp_path / "b"), "--quiet"]) == 0
    print(assert_runs_close(tmp_path / "b", want, 5, "data_parallel"))


def test_context_parallel_run_follows_one_process(single, tmp_path):
    want, args = single
    run = _torchrun(str(WORKER), *args, "--context-parallel", "2", "--out", str(tmp_path / "cp"))
    assert run.returncode == 0, run.stderr[-4000:]
    assert "2 processes (torchrun, gloo): 1 data x 2 context" in run.stderr
    print(assert_runs_close(tmp_path / "cp", want, 5, "context_parallel"))
