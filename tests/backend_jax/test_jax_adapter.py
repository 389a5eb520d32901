"""The jax conformance adapter: protocol details, float64 handling, and a sample of golden cases.
The full case x dtype matrix runs in conformance/tests (``pytest conformance/tests --backend jax``).
"""

import pytest

jax = pytest.importorskip("jax", reason="flashcore.jax needs jax")
jnp = jax.numpy

from flashcore.conformance import golden, runner  # noqa: E402
from flashcore.conformance.adapters import load_adapter  # noqa: E402
from flashcore.jax.adapter import JaxAdapter  # noqa: E402

# One case per kind of model; every quantity is checked in float64 and float32.
SAMPLE = ["flash-causal-packed-mean", "gau-bidir-pad", "transformer-causal-packed+pad", "lm-flash"]


def test_registered_under_its_builtin_name():
    adapter, reason = load_adapter("jax")
    assert reason is None and isinstance(adapter, JaxAdapter)
    assert adapter.name == "jax"
    assert adapter.dtypes == ("float64", "float32", "bfloat16")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", SAMPLE)
def test_sample_cases_pass_every_quantity(name, dtype):
    checks = runner.run_case(JaxAdapter(), golden.load(name), dtype, "jax")
    assert {c.quantity for c in checks} >= {"output", "loss", "grad_params"}
    bad = [c.describe() for c in checks if c.status != "pass"]
    assert not bad, "\n".join(bad)


def test_float64_runs_in_float64_and_leaves_the_x64_flag_alone():
    g = golden.load("flash-causal-T%C")
    before = jax.config.jax_enable_x64
    res = JaxAdapter().run(g.config, g.params, g.inputs, "float64")
    assert jax.config.jax_enable_x64 == before
    assert abs(res.output - g.output).max() <= 1e-12 * abs(g.output).max()  # not float32
    assert jnp.ones(1).dtype == (jnp.float64 if before else jnp.float32)
    # float32 runs after a float64 one still run in float32.
    res32 = JaxAdapter().run(g.config, g.params, g.inputs, "float32")
    assert 1e-12 < abs(res32.output - g.output).max() <= 1e-5 * abs(g.output).max()


def test_strict_precision_sets_highest_matmul_precision_and_restores():
    before = jax.config.jax_default_matmul_precision
    with JaxAdapter().strict_precision():
        assert jax.config.jax_default_matmul_precision == "highest"
    assert jax.config.jax_default_matmul_precision == before


def test_bfloat16_layer_output_within_tolerance():
    checks = runner.run_case(JaxAdapter(), golden.load("flash-causal-T%C"), "bfloat16", "jax")
    out = [c for c in checks if c.quantity == "output"]
    assert out and out[0].status == "pass", out[0].describe()


@pytest.mark.parametrize("name", ["gau-bidir-pad", "lm-flash"])
def test_output_alone_is_the_golden_output(name):
    """``output`` (a forward-only program, for the peer-parity tests) against the golden output,
    on the table's output tolerance in float64 and float32."""
    from flashcore.conformance.assertions import assert_close

    g = golden.load(name)
    for dtype in ("float64", "float32"):
        got = JaxAdapter().output(g.config, g.params, g.inputs, dtype)
        assert got.shape == g.output.shape
        assert_close(got, g.output, quantity="output", dtype=dtype, err_msg=f"{name} {dtype}")
