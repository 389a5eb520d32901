"""The golden files and the spec must agree: outputs from the NumPy spec, gradients from autodiff
(torch) and from finite differences (NumPy only). A change of the math that forgets to regenerate
the files fails here."""

import numpy as np
import pytest

from flashcore.conformance import golden
from flashcore.conformance.cases import CASES, make_inputs, make_params

NAMES = [c.name for c in CASES]


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
    np.testing.assert_allclose(out, g.output, rtol=0, atol=1e-12)
    assert abs(float(golden.spec_loss(g.config, g.params, g.inputs)) - g.loss) < 1e-10


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
    for k in grads:
        np.testing.assert_allclose(grads[k], g.grads[k], rtol=0, atol=1e-12)
