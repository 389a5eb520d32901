"""``flashcore train --backend jax`` on 2 (emulated host) devices shards each batch over them and
follows the loss curve of the same run on 1 device, saving the same weights; a batch the devices
cannot share evenly is a clear error. The bound (1e-5 relative) is explained in
tests/_data_parallel.py.

Each run is a subprocess: the device count (XLA_FLAGS) is fixed when JAX starts.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("jax", reason="flashcore.jax needs jax")
pytest.importorskip("optax", reason="the jax engine uses optax")

from _data_parallel import RTOL, TINY, compare_runs, make_corpus  # noqa: E402

# in the 2-device process: the engine really splits a batch, a batch of 3 is refused before
# anything is written, then the run
TWO_DEVICES = """
import os, sys, jax, numpy as np, flashcore as fc
from flashcore.app.cli import main
from flashcore.jax.engine import Engine
assert jax.device_count() == 2, jax.devices()
cfg = fc.LMConfig(block=fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4, causal=True), vocab_size=11)
engine = Engine(cfg, fc.init(cfg, seed=0), data_parallel=True)
x = engine._batch(np.zeros((4, 8), np.int64))
assert engine.workers == 2 and x.sharding.shard_shape(x.shape) == (2, 8), x.sharding
engine.train_step(np.zeros((4, 8), np.int64), np.ones((4, 8), np.int64), 1e-3)
assert all(v.sharding.is_fully_replicated for v in engine.state.values())
args, out = sys.argv[1:], sys.argv[-1]
assert main([*args[:-1], out + "_bad", "--batch", "3"]) == 2
assert not os.path.exists(out + "_bad")
sys.exit(main(args))
"""


def _run(devices: int, code: list[str], argv: list[str]) -> subprocess.CompletedProcess:
    """``python CODE ARGV`` in a fresh process that sees ``devices`` CPU devices."""
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    env.update(XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, *code, *argv], capture_output=True, text=True, timeout=300, env=env
    )


def test_two_devices_follow_the_one_device_run(tmp_path):
    args = [*TINY, "--backend", "jax", "--data", str(make_corpus(tmp_path / "corpus"))]
    args += ["--steps", "5", "--out"]
    one = _run(1, ["-m", "flashcore"], [*args, str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-4000:]
    assert "data parallel" not in one.stderr
    two = _run(2, ["-c", TWO_DEVICES], [*args, str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-4000:]
    assert "--batch 3 is the global batch and must be divisible by the 2" in two.stderr
    assert "data parallel over 2 cpu devices (jax.sharding)" in two.stderr

    worst = compare_runs(tmp_path / "two", tmp_path / "one", steps=5)
    print(worst)
    assert max(worst.values()) <= RTOL, worst


def test_jax_refuses_to_run_under_torchrun(tmp_path, monkeypatch, capsys):
    from flashcore.app import cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "run"
    args = [*TINY, "--backend", "jax", "--data", str(make_corpus(tmp_path / "corpus"))]
    assert cli.main([*args, "--steps", "1", "--out", str(out)]) == 2
    assert "does not run under torchrun (WORLD_SIZE=2)" in capsys.readouterr().err
    assert not out.exists()
