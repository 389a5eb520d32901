"""DistributedDataParallel: one step on 2 CPU processes (gloo) gives the gradients of one process
on the whole batch."""

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="flashcore.torch needs torch")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import _torch_ddp_worker as worker  # noqa: E402

from flashcore.conformance.assertions import assert_close  # noqa: E402
from flashcore.conformance.tolerances import longest_reduction  # noqa: E402
from flashcore.torch import LM  # noqa: E402


def test_ddp_step_equals_single_process_on_the_whole_batch(tmp_path):
    script = Path(worker.__file__)
    res = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ddp_grads = torch.load(tmp_path / "grads.pt")

    config, tokens, targets = worker.problem()
    lm = LM(config, seed=0, dtype=torch.float64)
    lm.cross_entropy(lm(tokens), targets).backward()
    want = {n: p.grad for n, p in lm.named_parameters()}
    assert ddp_grads.keys() == want.keys()
    for n in want:
        assert_close(
            ddp_grads[n], want[n], reorder=longest_reduction(config, tokens.numel()), err_msg=n
        )
