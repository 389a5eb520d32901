"""The TF array-API shim against array-api-strict: every function flashcore calls, with broadcasting
and dtypes; then the whole spec on the shim against the golden files."""

import ast
import math
from pathlib import Path

import array_api_strict as strict
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="the TF backend needs tensorflow")

from flashcore.conformance import golden  # noqa: E402
from flashcore.conformance.assertions import assert_close  # noqa: E402
from flashcore.conformance.cases import CASES  # noqa: E402
from flashcore.conformance.runner import compare  # noqa: E402
from flashcore.conformance.tolerances import EPS, elementwise_tolerance, tolerance  # noqa: E402
from flashcore.tf.xp import Namespace, xp  # noqa: E402

SPEC = Path(__file__).resolve().parents[2] / "flashcore"
rng = np.random.default_rng(0)
A = rng.normal(size=(2, 3, 4))  # float64
B = rng.normal(size=(4, 5))
POS = np.abs(A) + 0.1
M = rng.random((2, 1, 4)) > 0.5  # bool, broadcastable against A
IDX = np.array([2, 0, 2, 1], np.int64)
INTS = rng.integers(-5, 9, size=(3, 4)).astype(np.int64)

# name -> (fn(ns, *arrays), numpy inputs). Each runs on array-api-strict and on the shim.
OPS = {
    "asarray-float64": (lambda ns, a: ns.asarray(a), [A]),
    "asarray-int64": (lambda ns, a: ns.asarray(a), [INTS]),
    "asarray-bool": (lambda ns, a: ns.asarray(a), [M]),
    "asarray-float32": (lambda ns, a: ns.asarray(a), [A.astype(np.float32)]),
    "astype-float32": (lambda ns, a: ns.astype(a, ns.float32), [A]),
    "astype-float-to-bool": (lambda ns, a: ns.astype(a > 0.3, ns.bool), [A]),
    "astype-bool-to-float": (lambda ns, m: ns.astype(m, ns.float64), [M]),
    "astype-int-to-float": (lambda ns, i: ns.astype(i, ns.float64), [INTS]),
    "reshape": (lambda ns, a: ns.reshape(a, (3, -1)), [A]),
    "permute_dims": (lambda ns, a: ns.permute_dims(a, (2, 0, 1)), [A]),
    "expand_dims": (lambda ns, a: ns.expand_dims(a, axis=-1), [A]),
    "broadcast_to": (lambda ns, m: ns.broadcast_to(m, (5, 2, 3, 4)), [M]),
    "concat-0": (lambda ns, a: ns.concat([a, a[:1, ...]], axis=0), [A]),
    "concat-last": (lambda ns, a: ns.concat([a[..., :1], a], axis=-1), [A]),
    "stack": (lambda ns, a: ns.stack([a, a * 2.0], axis=1), [A]),
    "matmul-3d-2d": (lambda ns, a, b: ns.matmul(a, b), [A, B]),
    "matmul-broadcast-batch": (
        lambda ns, a, b: ns.matmul(ns.reshape(a, (2, 1, 3, 4)), b),
        [A, rng.normal(size=(5, 4, 6))],
    ),
    "matmul-2d": (lambda ns, b: ns.matmul(ns.permute_dims(b, (1, 0)), b), [B]),
    "sum-all": (lambda ns, a: ns.sum(a), [A]),
    "sum-last-keepdims": (lambda ns, a: ns.sum(a, axis=-1, keepdims=True), [A]),
    "sum-axes": (lambda ns, a: ns.sum(a, axis=(0, 2)), [A]),
    "mean": (lambda ns, a: ns.mean(a, axis=-1, keepdims=True), [A]),
    "mean-all": (lambda ns, a: ns.mean(a), [A]),
    "max": (lambda ns, a: ns.max(a, axis=1, keepdims=True), [A]),
    "max-all": (lambda ns, a: ns.max(a), [A]),
    "cumulative_sum": (lambda ns, a: ns.cumulative_sum(a, axis=1), [A]),
    "cumulative_sum-initial": (
        lambda ns, a: ns.cumulative_sum(a, axis=1, include_initial=True),
        [A],
    ),
    "cumulative_sum-initial-last": (
        lambda ns, a: ns.cumulative_sum(a, axis=-1, include_initial=True),
        [A],
    ),
    "cumulative_sum-1d": (lambda ns, i: ns.cumulative_sum(i[0, :], include_initial=True), [INTS]),
    "cumulative_sum-empty-axis": (
        lambda ns, a: ns.cumulative_sum(a[:, :0, :], axis=1, include_initial=True),
        [A],
    ),
    "take-axis0": (lambda ns, b, i: ns.take(b, i, axis=0), [B, IDX]),
    "take-axis1": (lambda ns, a, i: ns.take(a, i, axis=2), [A, IDX[:3]]),
    "take-1d": (lambda ns, b, i: ns.take(b[:, 0], i), [B, IDX]),
    "where-broadcast": (lambda ns, m, a: ns.where(m, a, ns.zeros_like(a[:1, ...])), [M, A]),
    "where-bool": (lambda ns, m: ns.where(m, m, ~m), [M]),
    "maximum-broadcast": (lambda ns, a: ns.maximum(a, ns.ones_like(a[:, :1, :])), [A]),
    "exp": (lambda ns, a: ns.exp(a), [A]),
    "log": (lambda ns, a: ns.log(a), [POS]),
    "sqrt": (lambda ns, a: ns.sqrt(a), [POS]),
    "sin": (lambda ns, a: ns.sin(a), [A]),
    "cos": (lambda ns, a: ns.cos(a), [A]),
    "abs": (lambda ns, a: ns.abs(a), [A]),
    "isfinite": (lambda ns, a: ns.isfinite(a), [np.where(M, A, [np.inf, 0.0, np.nan, -np.inf])]),
    "zeros-bool": (lambda ns: ns.zeros((2, 3), dtype=ns.bool), []),
    "zeros-float64": (lambda ns: ns.zeros((2, 0, 3), dtype=ns.float64), []),
    "ones-int-shape": (lambda ns: ns.ones(4, dtype=ns.float64), []),
    "ones-int32": (lambda ns: ns.ones((), dtype=ns.int32), []),
    "zeros_like": (lambda ns, a: ns.zeros_like(a), [A]),
    "ones_like": (lambda ns, m: ns.ones_like(m), [M]),
    "full_like": (lambda ns, a: ns.full_like(a, -1e30), [A]),
    "full_like-dtype": (lambda ns, a: ns.full_like(a, 3, dtype=ns.int64), [A]),
    "arange": (lambda ns: ns.arange(5, dtype=ns.int64), []),
    "arange-step": (lambda ns: ns.arange(1, 8, 3, dtype=ns.float64), []),
    # Operators and basic slicing are the arrays' own; the spec relies on these semantics.
    "op-arith": (lambda ns, a, b: (a * 2.0 + a / 3.0 - a**2) @ b, [A, B]),
    "op-compare": (lambda ns, a: (a > 0.1) & (a < 0.9) | (a == a[:, :1, :]), [A]),
    "op-bool-or-not-ne": (lambda ns, m, i: (m | ~m[:1, ...]) & (i != 2)[None, :2, :], [M, INTS]),
    "op-int-div-mod": (lambda ns, i: (i // 3) * 10 + i % 3, [INTS]),
    "op-slicing": (lambda ns, a: a[:, None, :-1, 1:][..., 0] + a[1, :2, :][None, :, :1, None], [A]),
}


def _strict(fn, arrays):
    return np.from_dlpack(fn(strict, *[strict.asarray(a) for a in arrays]))


def _shim(fn, arrays):
    out = fn(xp, *[tf.constant(a) for a in arrays])
    assert isinstance(out, tf.Tensor), type(out)
    return out.numpy()


@pytest.mark.parametrize("name", sorted(OPS))
def test_shim_matches_array_api_strict(name):
    fn, arrays = OPS[name]
    want, got = _strict(fn, arrays), _shim(fn, arrays)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    if want.dtype.kind == "f":
        # TF's kernels against NumPy's: the same math, other libm and summation orders.
        n = max([int(np.size(a)) for a in arrays], default=1)
        assert_close(got, want, reorder=n, err_msg=name)
    else:
        np.testing.assert_array_equal(got, want)


def test_shim_has_every_name_the_spec_calls():
    """Reads every ``xp.<name>`` in flashcore/*.py: a new call there must be added to the shim (the
    optional hooks the spec reads with getattr, such as ``concrete``, are not calls)."""
    used = set()  # attribute reads ``xp.<name>`` in the code (docstrings and comments aside)
    for path in SPEC.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "xp":
                used.add(node.attr)
    assert used, "found no xp.* calls: the scan is broken"
    missing = sorted(n for n in used if not hasattr(xp, n))
    assert not missing, f"flashcore calls xp.{missing} but the TF shim lacks them"
    for n in ("bool", "int32", "int64", "float32", "float64", "bfloat16"):
        assert getattr(xp, n) == getattr(tf, n)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_erf_matches_math_erf_and_differentiates(dtype):
    x = np.linspace(-3.0, 3.0, 41)
    t = tf.constant(x, dtype=dtype)
    with tf.GradientTape() as tape:
        tape.watch(t)
        y = xp.erf(t)
    assert y.dtype == t.dtype
    want = np.array([math.erf(v) for v in tf.cast(t, tf.float64).numpy()])
    tol = elementwise_tolerance(dtype)  # |erf| <= 1: the scale is 1
    np.testing.assert_allclose(tf.cast(y, tf.float64).numpy(), want, atol=tol)
    slope = 2.0 / math.sqrt(math.pi) * np.exp(-(x**2))
    grad = tf.cast(tape.gradient(y, t), tf.float64).numpy()
    np.testing.assert_allclose(grad, slope, atol=elementwise_tolerance(dtype, 3))  # exp, 2 products


KINDS = [
    "bool",
    "signed integer",
    "unsigned integer",
    "integral",
    "real floating",
    "complex floating",
    "numeric",
]
DTYPES = ["bool", "int8", "int32", "int64", "uint8", "uint32", "float32", "float64", "complex64"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_isdtype_matches_array_api_strict(dtype):
    got, want = getattr(tf, dtype), getattr(strict, dtype)
    for kind in [*KINDS, ("bool", "real floating"), ("integral",), "float64"]:
        other = getattr(strict, kind) if kind == "float64" else kind
        assert xp.isdtype(got, kind if kind != "float64" else tf.float64) == strict.isdtype(
            want, other
        ), kind
    assert xp.isdtype(tf.bfloat16, "real floating") and not xp.isdtype(tf.bfloat16, "integral")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_silu_is_x_sigmoid_x_and_differentiates(dtype):
    x = np.linspace(-8.0, 8.0, 33)
    t = tf.constant(x, dtype=dtype)
    with tf.GradientTape() as tape:
        tape.watch(t)
        y = xp.silu(t)
    assert y.dtype == t.dtype
    sig = 1.0 / (1.0 + np.exp(-x))
    tol = elementwise_tolerance(dtype, 2)  # sigmoid, a product
    np.testing.assert_allclose(y.numpy(), x * sig, rtol=tol, atol=tol * np.abs(x).max())
    slope = sig * (1 + x * (1 - sig))
    tol = elementwise_tolerance(dtype, 4)  # sigmoid and three arithmetic steps
    np.testing.assert_allclose(tape.gradient(y, t).numpy(), slope, atol=tol * np.abs(slope).max())


def test_default_dtypes_and_bfloat16_casts():
    assert xp.asarray(1.5).dtype == tf.float32  # the shim's default float
    assert xp.asarray([1, 2]).dtype == tf.int64
    assert xp.zeros((2,)).dtype == tf.float32
    assert xp.arange(3).dtype == tf.int64
    h = xp.astype(tf.constant(A), xp.bfloat16)
    assert h.dtype == tf.bfloat16
    # a cast rounds to nearest: at most half a bfloat16 ulp (2^-8 relative)
    np.testing.assert_allclose(tf.cast(h, tf.float64).numpy(), A, rtol=EPS["bfloat16"] / 2)


def test_asarray_places_on_a_device_string():
    dev = tf.constant(1.0).device  # what array_api_compat.device returns for a TF tensor
    assert xp.asarray(A, device=dev).device == dev
    assert xp.zeros((2,), device="", dtype=xp.float64).dtype == tf.float64


def test_mixed_dtypes_raise_rather_than_promote():
    """No implicit promotion (the spec never relies on it)."""
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError)):
        xp.maximum(tf.constant(A), tf.constant(A, tf.float32))


def test_unknown_dims_need_an_explicit_batch():
    with pytest.raises(ValueError, match="static shapes"):
        xp.zeros((None, 3))
    spec = tf.TensorSpec((None, 2, 3), tf.float64)

    @tf.function(input_signature=[spec])
    def f(a):
        ns = xp.with_batch(tf.shape(a)[0])
        z = ns.zeros((None, 1, 3), dtype=ns.float64)
        flat = ns.reshape(a, (None, 6))
        ones = ns.broadcast_to(ns.ones((1, 6), dtype=ns.float64), (None, 6))
        return ns.reshape(ns.concat([a, z], axis=1), (None, 9)), flat + ones

    cat, flat = f(tf.constant(A[:, :2, :3]))
    assert cat.shape == (2, 9) and flat.shape == (2, 6)
    np.testing.assert_array_equal(flat.numpy(), A[:, :2, :3].reshape(2, 6) + 1.0)
    assert isinstance(xp.with_batch(tf.constant(2)), Namespace)


def test_the_spec_on_the_shim_reproduces_every_golden_case():
    """float64, eager: the same function bodies on TF tensors give the golden outputs, within the
    conformance table's float64 tolerance."""
    rtol, atol = tolerance("float64", "output")
    worst = {}
    for case in CASES:
        g = golden.load(case.name)
        params = {k: tf.constant(v) for k, v in g.params.items()}
        inputs = {k: tf.constant(v) for k, v in g.inputs.items()}
        out = golden.spec_output(g.config, params, inputs, xp=xp)
        assert out.dtype == tf.float64
        worst[case.name] = compare(g.output, out.numpy(), rtol, atol)[0]
    bad = {k: v for k, v in worst.items() if v > 1.0}
    assert not bad, bad


@pytest.mark.parametrize("jit", [False, True])
def test_cumulative_sum_in_a_graph_is_the_prefix_sum_and_differentiates(jit):
    """Traced (where XLA may compile it), the shim's cumulative_sum is the pairwise scan: the same
    values and gradients as NumPy's sequential sum, for odd and even lengths."""
    rng_ = np.random.default_rng(4)
    for n in (1, 7, 16):
        x = tf.constant(rng_.standard_normal((2, n, 3)), tf.float32)
        ct = tf.constant(rng_.standard_normal((2, n + 1, 3)), tf.float32)

        @tf.function(jit_compile=jit, autograph=False)
        def run(a, c):
            with tf.GradientTape() as tape:
                tape.watch(a)
                y = xp.cumulative_sum(a, axis=1, include_initial=True)
            return y, tape.gradient(y, a, output_gradients=c)

        y, grad = run(x, ct)
        want = np.concatenate([np.zeros((2, 1, 3)), np.cumsum(x.numpy(), axis=1)], axis=1)
        # d/dx_j of sum_i c_i y_i = sum over i > j of c_i: the reversed cumulative sum of c[1:]
        want_grad = np.cumsum(ct.numpy()[:, 1:][:, ::-1], axis=1)[:, ::-1]
        rtol, atol = tolerance("float32", "output")
        for got, ref in ((y, want), (grad, want_grad)):
            np.testing.assert_allclose(got.numpy(), ref, rtol=rtol, atol=atol * np.abs(ref).max())
