"""``flashcore train --backend jax`` on 2 (emulated host) devices past data parallelism:

- ``--shard 2``: a (data, fsdp) mesh; each device holds half of the parameters and AdamW state;
  5 steps follow one device, and a sharded checkpoint resumes on one device without sharding.
- ``--context-parallel 2``: every sequence split along t over 2 devices (and, on 4 devices, each
  batch over 2 data groups); 5 steps follow one device.

Bounds: the TRAINING tolerance (conformance/tolerances.py) of "data_parallel" for sharding and
"context_parallel" for the sequence split. Each run is a subprocess: the device count
(XLA_FLAGS) is fixed when JAX starts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax", reason="flashcore.jax needs jax")
pytest.importorskip("optax", reason="the jax engine uses optax")

from _data_parallel import TINY, assert_runs_close, make_corpus  # noqa: E402

pytestmark = pytest.mark.slow  # child processes that compile: ~20 s each on 2 cores

# in the 2-device process: each device holds half of the state (a few small vectors whole),
# a batch is split over both devices, then the run
SHARDED = """
import sys, jax, numpy as np, flashcore as fc
from flashcore.app.cli import main
from flashcore.jax.engine import Engine
from flashcore.jax.shard import local_bytes
assert jax.device_count() == 2, jax.devices()
cfg = fc.LMConfig(block=fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4, causal=True), vocab_size=11)
engine = Engine(cfg, fc.init(cfg, seed=0), data_parallel=True, shard=2)
engine.train_step(np.zeros((4, 8), np.int64), np.ones((4, 8), np.int64), 1e-3)
whole = sum(v.nbytes for v in engine.params().values())
for tree in (engine.state, engine.opt_state):
    assert local_bytes(tree) <= whole * (1 if tree is engine.state else 2) / 2 * 1.05 + 64, tree
x = engine._batch(np.zeros((4, 8), np.int64))
assert x.sharding.shard_shape(x.shape) == (2, 8), x.sharding
sys.exit(main(sys.argv[1:]))
"""


def _run(devices: int, code: list[str], argv: list[str]) -> subprocess.CompletedProcess:
    """``python CODE ARGV`` in a fresh process that sees ``devices`` CPU devices."""
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    env.update(XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, *code, *argv], capture_output=True, text=True, timeout=300, env=env
    )


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> tuple[Path, list[str]]:
    """One device, 5 steps: the run the others must follow; and its arguments."""
    root = tmp_path_factory.mktemp("jax_scale")
    args = [*TINY, "--backend", "jax", "--data", str(make_corpus(root / "corpus")), "--steps", "5"]
    res = _run(1, ["-m", "flashcore"], [*args, "--out", str(root / "one")])
    assert res.returncode == 0, res.stderr[-4000:]
    return root / "one", args


def test_sharded_run_follows_one_device_and_resumes_unsharded(one, tmp_path):
    want, args = one
    a, b = tmp_path / "a", tmp_path / "b"
    res = _run(2, ["-c", SHARDED], [*args, "--shard", "2", "--stop-after", "3", "--out", str(a)])
    assert res.returncode == 0, res.stderr[-4000:]
    assert "2 cpu devices (jax.sharding): 1 x 2 devices (parameters sharded over 2)" in res.stderr
    shutil.copytree(a, b)
    res = _run(2, ["-m", "flashcore"], ["train", "--resume", str(a), "--shard", "--quiet"])
    assert res.returncode == 0, res.stderr[-4000:]
    print(assert_runs_close(a, want, 5, "data_parallel"))
    res = _run(1, ["-m", "flashcore"], ["train", "--resume", str(b), "--quiet"])
    assert res.returncode == 0, res.stderr[-4000:]
    print(assert_runs_close(b, want, 5, "data_parallel"))


@pytest.mark.parametrize("devices", [2, 4], ids=["context", "data x context"])
def test_context_parallel_run_follows_one_device(one, tmp_path, devices):
    """2 devices: each sequence split in two; 4: also the batch over 2 data groups (the last
    held-out batch, 3 rows, whole on both)."""
    want, args = one
    argv = [*args, "--context-parallel", "2", "--out", str(tmp_path)]
    res = _run(devices, ["-m", "flashcore"], argv)
    assert res.returncode == 0, res.stderr[-4000:]
    assert f"{devices // 2} x 2 devices (sequences split over 2)" in res.stderr
    print(assert_runs_close(tmp_path, want, 5, "context_parallel"))
