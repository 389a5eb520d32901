"""Parameterize conformance tests over backend x case x dtype (real pytest parameters)."""

from __future__ import annotations

import pytest

from flashcore.conformance.adapters import load_adapter, selected_backends
from flashcore.conformance.cases import CASES


def _params(config, gradients: bool):
    params = []
    for backend in selected_backends(config.getoption("--backend")):
        adapter, reason = load_adapter(backend)
        if adapter is None:
            why = f"backend {backend} {reason}"
        elif gradients and not adapter.autodiff:
            why = f"backend {backend} has no autodiff: gradients are not checked for it"
        else:
            for case in CASES:
                for dtype in adapter.dtypes:
                    cid = f"{backend}-{case.name}-{dtype}"
                    params.append(pytest.param((backend, case.name, dtype), id=cid))
            continue
        params.append(
            pytest.param((backend, None, None), id=backend, marks=pytest.mark.skip(reason=why))
        )
    return params


def pytest_generate_tests(metafunc):
    if "backend_case_dtype" in metafunc.fixturenames:
        metafunc.parametrize("backend_case_dtype", _params(metafunc.config, gradients=False))
    if "grad_backend_case_dtype" in metafunc.fixturenames:
        metafunc.parametrize("grad_backend_case_dtype", _params(metafunc.config, gradients=True))
    if "backend" in metafunc.fixturenames:
        backends = selected_backends(metafunc.config.getoption("--backend"))
        metafunc.parametrize("backend", backends, ids=backends)
