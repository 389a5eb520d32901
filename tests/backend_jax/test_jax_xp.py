"""The JAX namespace's ``cumulative_sum`` (a parallel prefix scan on CPU for arrays over
``SMALL_CUMSUM`` elements, jnp's own below) against ``jnp.cumulative_sum``: values, dtypes, every
argument, and gradients, on both paths. Its ``dense`` (h W + b with its own forward-mode rule on CPU) against
``jnp.matmul`` plus the bias: values, reverse- and forward-mode derivatives, dtypes."""

import importlib

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the JAX namespace needs jax")
jnp = jax.numpy

from flashcore.conformance.tolerances import reorder_tolerance, tolerance  # noqa: E402
from flashcore.jax.xp import xp  # noqa: E402

# the module (the package's ``xp`` attribute is the namespace)
jax_xp = importlib.import_module("flashcore.jax.xp")


@pytest.fixture(params=["pairwise", "small"])
def cumsum_path(request, monkeypatch):
    """Both of ``cumulative_sum``'s CPU paths on the same small test arrays: "pairwise" lowers
    the size threshold to 0, "small" raises it above every array here."""
    monkeypatch.setattr(jax_xp, "SMALL_CUMSUM", 0 if request.param == "pairwise" else 1 << 30)
    return request.param


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
def test_cumulative_sum_matches_jnp(dtype, shape, axis, include_initial, cumsum_path):
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


def test_cumulative_sum_grad_and_dtype_argument(cumsum_path):
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


@pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="the pairwise path is CPU-only; elsewhere jnp's is kept"
)
def test_cumulative_sum_takes_the_pairwise_levels_only_above_the_threshold():
    """The lowered program: a (64, 4096) sum along axis 0 is the pairwise levels (no
    reduce-window, which jnp's lowering is), a sampler-sized (1, 256) row is jnp's program."""
    small = jax.jit(lambda a: xp.cumulative_sum(a, axis=1)).lower(jnp.ones((1, 256))).as_text()
    big = jax.jit(lambda a: xp.cumulative_sum(a, axis=0)).lower(jnp.ones((64, 4096))).as_text()
    jnp_big = jax.jit(lambda a: jnp.cumulative_sum(a, axis=0)).lower(jnp.ones((64, 4096)))
    jnp_small = jax.jit(lambda a: jnp.cumulative_sum(a, axis=1)).lower(jnp.ones((1, 256)))
    assert small == jnp_small.as_text()
    assert "reduce_window" in jnp_big.as_text() and "reduce_window" not in big


def _dense_case(dtype: str, shape: tuple, bias: bool):
    rng = np.random.default_rng(3)
    h = jnp.asarray(rng.standard_normal(shape), dtype=dtype)  # (..., i)
    w = jnp.asarray(rng.standard_normal((shape[-1], 6)) / np.sqrt(shape[-1]), dtype=dtype)
    b = jnp.asarray(rng.standard_normal((6,)), dtype=dtype) if bias else None
    acc = jnp.float64 if dtype == "float64" else jnp.float32  # the loss is summed in this
    ct = jnp.asarray(rng.standard_normal(shape[:-1] + (6,)), acc)
    return h, w, b, ct


def _plain_dense(h, w, b):
    y = jnp.matmul(h, w)
    return y if b is None else y + b


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(5,), (7, 4), (2, 9, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_is_matmul_plus_bias_with_the_same_derivatives(dtype, shape, bias):
    """The fast path (on CPU) and the plain formula on the same inputs: the output, the gradient
    of sum(tanh(y) * ct) with respect to h, W and b under jit, and forward mode (jax.jvp)."""
    with jax.enable_x64(dtype == "float64"):
        h, w, b, ct = _dense_case(dtype, shape, bias)
        k = shape[-1]

        def loss(dense):
            def f(h, w, b):
                return jnp.sum(jnp.tanh(dense(h, w, b).astype(ct.dtype)) * ct)

            return f

        got = jax_xp.dense(h, w, b)
        want = _plain_dense(h, w, b)
        assert got.shape == want.shape and got.dtype == want.dtype
        rtol, atol = tolerance(dtype, "output")
        _scaled_close(got, want, rtol, atol)
        argnums = (0, 1, 2) if bias else (0, 1)
        g_got = jax.jit(jax.grad(loss(jax_xp.dense), argnums=argnums))(h, w, b)
        g_want = jax.grad(loss(_plain_dense), argnums=argnums)(h, w, b)
        rtol, atol = tolerance(dtype, "grad_params")
        for a, c in zip(g_got, g_want):
            assert a.shape == c.shape and a.dtype == c.dtype
            _scaled_close(a, c, rtol, atol)
        tangents = (h, w, b)  # any direction: the primals themselves
        _, t_got = jax.jvp(lambda h, w, b: jax_xp.dense(h, w, b), (h, w, b), tangents)
        _, t_want = jax.jvp(_plain_dense, (h, w, b), tangents)
        _scaled_close(t_got, t_want, rtol, atol * max(1, k / 4))


def test_dense_derivative_in_one_argument_and_mixed_dtypes():
    """Only h, or only W, differentiated (the other tangent is a symbolic zero); a float32 h
    through a bfloat16 W promotes as jnp.matmul does; a second derivative through it."""
    h, w, b, ct = _dense_case("float32", (3, 4), True)
    f = lambda dense: lambda h, w: jnp.sum(jnp.sin(dense(h, w, b)) * ct)  # noqa: E731
    rtol, atol = tolerance("float32", "grad_params")
    for argnum in (0, 1):
        got = jax.grad(f(jax_xp.dense), argnums=argnum)(h, w)
        want = jax.grad(f(_plain_dense), argnums=argnum)(h, w)
        _scaled_close(got, want, rtol, atol)
    hess = jax.hessian(f(jax_xp.dense), argnums=1)(h, w)
    _scaled_close(hess, jax.hessian(f(_plain_dense), argnums=1)(h, w), rtol, atol)
    wb = w.astype(jnp.bfloat16)
    got = jax_xp.dense(h, wb, None)
    assert got.dtype == jnp.matmul(h, wb).dtype
    g = jax.grad(lambda w: jnp.sum(jax_xp.dense(h, w, None)))(wb)
    assert g.dtype == jnp.bfloat16 and g.shape == wb.shape


def _scaled_close(got, want, rtol, atol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * max(np.abs(want).max(), 1.0))
