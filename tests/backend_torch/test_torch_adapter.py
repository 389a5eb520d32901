"""The torch conformance adapter: protocol details. The full case x dtype matrix runs in
conformance/tests (``pytest conformance/tests --backend torch``)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="flashcore.torch needs torch")

from flashcore.conformance import golden, runner  # noqa: E402
from flashcore.conformance.adapters import load_adapter  # noqa: E402
from flashcore.conformance.cases import CASES  # noqa: E402
from flashcore.torch.adapter import TorchAdapter  # noqa: E402

# One case per group of the golden grid.
SAMPLE = sorted({c.group: c.name for c in CASES}.values())


def test_registered_under_its_builtin_name():
    adapter, reason = load_adapter("torch")
    assert reason is None and isinstance(adapter, TorchAdapter)
    assert adapter.name == "torch"
    assert adapter.dtypes == ("float64", "float32", "bfloat16")


def _precision():
    return (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )


@pytest.mark.parametrize("fail", [False, True], ids=["exit", "exception"])
def test_strict_precision_disables_tf32_and_restores(fail):
    saved = _precision()
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("medium")
        with pytest.raises(RuntimeError) if fail else _null():
            with TorchAdapter().strict_precision():
                assert _precision() == (False, False, "highest")
                if fail:
                    raise RuntimeError("boom")
        assert _precision() == (True, True, "medium")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved[0]
        torch.backends.cudnn.allow_tf32 = saved[1]
        torch.set_float32_matmul_precision(saved[2])


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("name", SAMPLE)
def test_float64_matches_the_golden_files(name):
    g = golden.load(name)
    checks = runner.run_case(TorchAdapter(), g, "float64")
    assert {c.quantity for c in checks} >= {"output", "loss", "grad_params"}
    bad = [c.describe() for c in checks if c.status != "pass"]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_results_are_float64_numpy_with_canonical_gradient_names(dtype):
    g = golden.load("lm-flash-untied-pad")
    res = TorchAdapter().run(g.config, g.params, g.inputs, dtype)
    assert res.output.dtype == np.float64 and res.output.shape == g.output.shape
    assert isinstance(res.loss, float)
    assert set(res.grads) == set(g.grads)
    for k, v in res.grads.items():
        assert v.dtype == np.float64 and v.shape == g.grads[k].shape, k
        assert np.all(np.isfinite(v)), k
