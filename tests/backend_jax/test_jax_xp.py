"""The JAX namespace's ``cumulative_sum`` (a parallel prefix scan on CPU, where ``jnp.cumsum``'s
reduce-window lowering is O(n^2)) against ``jnp.cumulative_sum``: values, dtypes, every argument,
and gradients."""

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the JAX namespace needs jax")
jnp = jax.numpy

from flashcore.conformance.tolerances import reorder_tolerance  # noqa: E402
from flashcore.jax.xp import xp  # noqa: E402


def _close(got, want, dtype: str, length: int) -> None:
    """The same sums in another order: the central reorder bound, relative to the scale."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    rtol, atol = reorder_tolerance(dtype, length)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * max(np.abs(want).max(), 1.0))


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "int32", "bool"])
@pytest.mark.parametrize(
    "shape, axis", [((7,), None), ((3, 37), 1), ((2, 5, 3, 4), 1), ((5, 4), -2)]
)
@pytest.mark.parametrize("include_initial", [False, True])
def test_cumulative_sum_matches_jnp(dtype, shape, axis, include_initial):
    rng = np.random.default_rng(0)
    with jax.enable_x64(dtype == "float64"):
        if dtype == "bool":
            x = jnp.asarray(rng.random(shape) < 0.5)
        elif dtype == "int32":
            x = jnp.asarray(rng.integers(-5, 5, shape), dtype=jnp.int32)
        else:
            x = jnp.asarray(rng.standard_normal(shape), dtype=dtype)
        got = xp.cumulative_sum(x, axis=axis, include_initial=include_initial)
        want = jnp.cumulative_sum(x, axis=axis, include_initial=include_initial)
        assert got.shape == want.shape and got.dtype == want.dtype
        if dtype in ("int32", "bool"):  # integer sums: exact in any order
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        else:
            _close(got, want, dtype, shape[axis or 0])


def test_cumulative_sum_grad_and_dtype_argument():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 9, 3)), jnp.float32)
    ct = jnp.asarray(np.random.default_rng(2).standard_normal((2, 10, 3)), jnp.float32)
    f = lambda cs: lambda a: jnp.sum(cs(a, axis=1, include_initial=True) * ct)  # noqa: E731
    got = jax.jit(jax.grad(f(xp.cumulative_sum)))(x)
    want = jax.grad(f(jnp.cumulative_sum))(x)
    _close(got, want, "float32", 9)
    out = xp.cumulative_sum(jnp.ones((4,), jnp.int32), dtype=jnp.float32)
    assert out.dtype == jnp.float32 and out.tolist() == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="axis is required"):
        xp.cumulative_sum(jnp.ones((2, 2)))
