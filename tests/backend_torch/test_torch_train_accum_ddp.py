"""``--grad-accum`` under torchrun: 2 CPU processes (gloo) with 2 micro-batches each follow one
process on the whole batch; DDP all-reduces once per step (``no_sync`` before the last
micro-batch). Bounds as in tests/test_train_accum.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="flashcore.torch needs torch")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from _data_parallel import RTOL, TINY, compare_runs, make_corpus  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from flashcore.app import cli, runstate  # noqa: E402
from flashcore.conformance.tolerances import training_tolerance  # noqa: E402

_, PARAMS_ATOL = training_tolerance("backends", "params")
WORKER = Path(__file__).with_name("_torch_accum_worker.py")


@pytest.mark.slow  # torchrun, two processes
def test_two_processes_with_grad_accum_follow_one_process(tmp_path):
    args = [*TINY, "--data", str(make_corpus(tmp_path / "corpus")), "--batch", "8", "--steps", "5"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert cli.main([*args, "--out", str(single)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    res = subprocess.run(
        [*cmd, str(WORKER), *args, "--grad-accum", "2", "--out", str(ddp)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]
    assert "data parallel over 2 processes (torchrun, gloo)" in res.stderr
    worst = compare_runs(ddp, single, steps=5)
    print(worst)
    assert max(worst["loss"], worst["eval"]) <= RTOL, worst
    got = load_file(runstate.latest(ddp).model)
    want = load_file(runstate.latest(single).model)
    assert max(float(np.abs(got[k] - want[k]).max()) for k in want) <= PARAMS_ATOL
