"""The golden files and the spec must agree: outputs from the NumPy spec, gradients from autodiff
(torch) and from finite differences (NumPy only). A change of the math that forgets to regenerate
the files fails here."""

import numpy as np
import pytest

from flashcore.conformance import golden
from flashcore.conformance.assertions import assert_close
from flashcore.conformance.cases import CASES, make_inputs, make_params
from flashcore.conformance.runner import loss_scale
from flashcore.conformance.tolerances import longest_reduction

NAMES = [c.name for c in CASES]


def _reduction(g: golden.Golden) -> int:
    """The longest sum behind the case's outputs and gradients (parameter gradients sum over
    every position of every row)."""
    batch, time = g.case.batch, g.case.time
    return longest_reduction(g.config, batch * time)


def test_every_case_has_a_file_and_no_file_is_stale():
    on_disk = {p.stem for p in golden.GOLDEN_DIR.glob("*.npz")}
    assert on_disk == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_spec_reproduces_golden(name):
    g = golden.load(name)
    case = g.case
    assert g.config == case.config
    for k, v in make_inputs(case).items():
        np.testing.assert_array_equal(g.inputs[k], v)
    for k, v in make_params(case).items():
        np.testing.assert_array_equal(g.params[k], v)
    out = golden.spec_output(g.config, g.params, g.inputs)
    # The files were written on another CPU: the same math, other BLAS kernels.
    n = _reduction(g)
    assert_close(out, g.output, reorder=n)
    loss = golden.spec_loss(g.config, g.params, g.inputs)
    assert_close(float(loss), g.loss, reorder=n, scale=loss_scale(g))


@pytest.mark.parametrize("name", NAMES)
def test_golden_gradients_match_finite_differences(name):
    errors = golden.fd_check(golden.load(name))
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("name", NAMES[::7])
def test_golden_gradients_match_torch_autodiff(name):
    pytest.importorskip("torch", reason="autodiff check of the golden files needs torch")
    from flashcore.conformance.generate import autodiff_grads

    g = golden.load(name)
    loss, grads = autodiff_grads(g.config, g.params, g.inputs)
    assert set(grads) == set(g.grads)
    n = _reduction(g)
    if "x" in grads:
        assert_close(grads["x"], g.grads["x"], reorder=n, err_msg="grad x")
    # Parameter gradients are judged against their joint scale, as the conformance runner does.
    scale = max(float(np.max(np.abs(v))) for k, v in g.grads.items() if k != "x") or 1.0
    for k in sorted(set(grads) - {"x"}):
        assert_close(grads[k], g.grads[k], reorder=n, scale=scale, err_msg=f"grad {k}")
