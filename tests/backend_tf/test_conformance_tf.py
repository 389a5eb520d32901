"""The TF adapter beyond what the conformance suite checks: it is the registered ``tf`` backend,
one golden case per group compiled with XLA (the suite runs every case eagerly, in every dtype,
through ``load_adapter("tf")``), and strict precision restores TF32."""

import itertools

import pytest

tf = pytest.importorskip("tensorflow", reason="the TF backend needs tensorflow")

from flashcore.conformance import golden  # noqa: E402
from flashcore.conformance.adapters import load_adapter  # noqa: E402
from flashcore.conformance.cases import CASES  # noqa: E402
from flashcore.conformance.runner import run_case  # noqa: E402
from flashcore.tf.adapter import TFAdapter  # noqa: E402

ONE_PER_GROUP = sorted({c.group: c.name for c in CASES}.values())


def _failures(checks):
    assert checks and all(c.status in ("pass", "fail") for c in checks), checks
    return [c.describe() for c in checks if c.status != "pass"]


def test_registered_as_the_tf_backend():
    adapter, reason = load_adapter("tf")
    assert reason is None and isinstance(adapter, TFAdapter)
    assert not adapter.jit_compile  # the conformance suite runs every case eagerly
    assert adapter.dtypes == ("float64", "float32", "bfloat16")


def test_one_case_per_group_compiled_with_xla():
    adapter = TFAdapter(jit_compile=True)
    failures = []
    for name, dtype in zip(ONE_PER_GROUP, itertools.cycle(TFAdapter.dtypes)):
        failures += _failures(run_case(adapter, golden.load(name), dtype))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("initially", [True, False])
def test_strict_precision_turns_tf32_off_and_restores_it(initially):
    before = tf.config.experimental.tensor_float_32_execution_enabled()
    try:
        tf.config.experimental.enable_tensor_float_32_execution(initially)
        with TFAdapter().strict_precision():
            assert not tf.config.experimental.tensor_float_32_execution_enabled()
        assert tf.config.experimental.tensor_float_32_execution_enabled() == initially
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(before)
