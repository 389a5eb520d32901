"""``--grad-accum`` on 2 (emulated host) JAX devices: micro-batches of every device's rows under
``lax.scan`` follow the run on 1 device without accumulation. Bounds as in
tests/test_train_accum.py; each run is a subprocess (the device count is fixed when JAX starts)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("jax", reason="flashcore.jax needs jax")
pytest.importorskip("optax", reason="the jax engine uses optax")

from _data_parallel import RTOL, TINY, compare_runs, make_corpus  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from flashcore.app import runstate  # noqa: E402
from flashcore.conformance.tolerances import training_tolerance  # noqa: E402

_, PARAMS_ATOL = training_tolerance("backends", "params")


def _run(devices: int, argv: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    env.update(XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "flashcore", *argv], capture_output=True, text=True, timeout=300,
        env=env,
    )  # fmt: skip


@pytest.mark.slow  # two runs in child processes
def test_two_devices_with_grad_accum_follow_one_device(tmp_path):
    args = [*TINY, "--backend", "jax", "--data", str(make_corpus(tmp_path / "corpus"))]
    args += ["--batch", "8", "--steps", "5"]
    one = _run(1, [*args, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-4000:]
    two = _run(2, [*args, "--grad-accum", "2", "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-4000:]
    assert "data parallel over 2 cpu devices" in two.stderr
    worst = compare_runs(tmp_path / "two", tmp_path / "one", steps=5)
    print(worst)
    assert max(worst["loss"], worst["eval"]) <= RTOL, worst
    got = load_file(runstate.latest(tmp_path / "two").model)
    want = load_file(runstate.latest(tmp_path / "one").model)
    assert max(float(np.abs(got[k] - want[k]).max()) for k in want) <= PARAMS_ATOL
