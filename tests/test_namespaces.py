"""The same spec code on numpy, array-api-strict, torch and jax arrays gives the same numbers
(float64, up to the order of the sums: the reorder bound of conformance/tolerances.py): proof
that it uses only the array API."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from flashcore.conformance import golden
from flashcore.conformance.assertions import assert_close
from flashcore.conformance.cases import CASES
from flashcore.conformance.tolerances import longest_reduction

# One case per group keeps this quick; test_conformance covers every case on numpy / strict.
SAMPLE = sorted({c.group: c.name for c in CASES}.values()) + [
    "flash-causal-packed-mean",
    "gau-bidir-laplace",
]


def _run(ns_name: str, name: str):
    g = golden.load(name)
    if ns_name == "array_api_strict":
        import array_api_strict as xp

        conv = lambda a: xp.asarray(a)  # noqa: E731
        back = lambda a: np.from_dlpack(a)  # noqa: E731
    elif ns_name == "torch":
        torch = pytest.importorskip("torch", reason="torch namespace check needs torch")
        import array_api_compat.torch as xp

        conv = lambda a: torch.asarray(a)  # noqa: E731
        back = lambda a: a.numpy()  # noqa: E731
    else:
        raise AssertionError(ns_name)
    params = {k: conv(v) for k, v in g.params.items()}
    inputs = {k: conv(v) for k, v in g.inputs.items()}
    out = golden.spec_output(g.config, params, inputs, xp=xp)
    return back(out), g


@pytest.mark.parametrize("ns", ["array_api_strict", "torch"])
@pytest.mark.parametrize("name", SAMPLE)
def test_namespace_agrees_with_numpy(ns, name):
    got, g = _run(ns, name)
    assert got.dtype == np.float64
    assert_close(got, g.output, reorder=longest_reduction(g.config, g.case.time))


def test_jax_namespace_agrees_with_numpy():
    """In a subprocess, since float64 needs jax_enable_x64, a process-wide switch."""
    pytest.importorskip("jax", reason="jax namespace check needs jax")
    code = textwrap.dedent(
        f"""
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        import numpy as np
        from flashcore.conformance import golden
        from flashcore.jax.xp import xp  # jax.numpy plus jax's erf and silu
        from flashcore.conformance.assertions import assert_close
        from flashcore.conformance.tolerances import longest_reduction
        for name in {SAMPLE!r}:
            g = golden.load(name)
            p = {{k: jnp.asarray(v) for k, v in g.params.items()}}
            i = {{k: jnp.asarray(v) for k, v in g.inputs.items()}}
            out = np.asarray(jax.jit(lambda p, i: golden.spec_output(g.config, p, i, xp=xp))(p, i))
            assert out.dtype == np.float64, out.dtype
            assert_close(out, g.output, reorder=longest_reduction(g.config, g.case.time))
        print("ok", len({SAMPLE!r}))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == f"ok {len(SAMPLE)}"


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_pairwise_cumulative_sum_is_the_prefix_sum(axis):
    """The work-efficient scan the XLA backends use, on NumPy, for every length up to 33 (odd
    lengths take the head-then-last branch at any level) and a power of two."""
    from flashcore._xp import pairwise_cumulative_sum
    from flashcore.conformance.tolerances import reorder_tolerance

    rng = np.random.default_rng(3)
    for n in [*range(34), 64]:
        shape = [2, 3, 2]
        shape[axis] = n
        x = rng.standard_normal(shape)
        got = pairwise_cumulative_sum(np, x, axis)
        want = np.cumsum(x, axis=axis)
        rtol, atol = reorder_tolerance("float64", max(n, 1))
        np.testing.assert_allclose(
            got, want, rtol=rtol, atol=atol * max(np.abs(want).max(initial=1.0), 1.0)
        )
        ints = rng.integers(-9, 9, shape)
        np.testing.assert_array_equal(
            pairwise_cumulative_sum(np, ints, axis), np.cumsum(ints, axis)
        )
