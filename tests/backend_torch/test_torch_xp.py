"""The torch namespace's fast functions (``flashcore.torch.xp``) against the spec's generic
formulas on the same inputs: values and gradients."""

import array_api_compat.torch as plain
import pytest

torch = pytest.importorskip("torch", reason="the torch backend needs torch")

from flashcore import ops  # noqa: E402
from flashcore.conformance.assertions import assert_close  # noqa: E402
from flashcore.torch.xp import xp  # noqa: E402


def _leaf(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(sum(shape)))


@pytest.mark.parametrize("bias", [True, False])
def test_dense_is_matmul_plus_bias_with_its_gradients(bias):
    h = _leaf(2, 5, 8).requires_grad_()
    weight = _leaf(6, 8).requires_grad_()  # nn.Linear's (out, in); the spec sees kernel = .mT
    b = _leaf(6).requires_grad_() if bias else None
    cot = _leaf(2, 5, 6)
    results = []
    for ns in (xp, plain):
        for p in (h, weight, b):
            if p is not None:
                p.grad = None
        y = ops.dense(h, weight.mT, b, ns)
        (y * cot).sum().backward()
        grads = [p.grad.clone() for p in (h, weight, b) if p is not None]
        results.append((y.detach(), grads))
    (y_fast, g_fast), (y_ref, g_ref) = results
    assert_close(y_fast, y_ref, reorder=8)
    for a, r in zip(g_fast, g_ref):
        assert_close(a, r, reorder=10)


def test_dense_follows_cpu_autocast_to_bfloat16():
    h, weight, b = _leaf(3, 8, dtype=torch.float32), _leaf(4, 8, dtype=torch.float32), _leaf(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ops.dense(h, weight.mT, b.float(), xp)
    assert y.dtype == torch.bfloat16  # the bias joins the bf16 matmul, no float32 promotion
    assert_close(y, h @ weight.mT + b.float(), dtype="bfloat16")


def test_split_last_equals_slices_and_its_gradient_is_one_piece_per_slice():
    a = _leaf(2, 3, 10).requires_grad_()
    cots = [_leaf(2, 3, n) for n in (4, 4, 2)]
    grads = []
    for ns in (xp, plain):
        a.grad = None
        parts = ops.split(a, (4, 4, 2), ns)
        assert [tuple(p.shape) for p in parts] == [(2, 3, 4), (2, 3, 4), (2, 3, 2)]
        sum((p * c).sum() for p, c in zip(parts, cots)).backward()
        grads.append(a.grad.clone())
    torch.testing.assert_close(grads[0], torch.cat(cots, -1), rtol=0, atol=0)  # copied values
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="do not add up"):
        ops.split(a, (4, 4), xp)


def test_dense_promotes_mixed_dtypes_as_the_array_api_does():
    h, kernel, b = _leaf(3, 8), _leaf(8, 4, dtype=torch.float32), _leaf(4, dtype=torch.float32)
    y = ops.dense(h, kernel, b, xp)
    assert y.dtype == torch.float64
    assert_close(y, h @ kernel.double() + b.double(), reorder=8)
