"""Every selected backend against every golden case, in every dtype it runs.

pytest conformance/tests --backend torch          # or FLASHCORE_BACKENDS=torch,jax
"""

from __future__ import annotations

import functools
import itertools

import pytest

from flashcore.conformance import golden
from flashcore.conformance.adapters import load_adapter
from flashcore.conformance.cases import CASES
from flashcore.conformance.runner import (
    XFAIL_DIR,
    apply_xfails,
    dead_xfails,
    load_xfails,
    run_case,
)
from flashcore.conformance.tolerances import QUANTITIES


@functools.cache
def _checks(backend: str, case: str, dtype: str):
    adapter, _ = load_adapter(backend)
    return apply_xfails(run_case(adapter, golden.load(case), dtype, backend), load_xfails(backend))


def _judge(checks):
    failures = [c for c in checks if c.status in ("fail", "stale-xfail")]
    if failures:
        pytest.fail(
            "\n".join(
                c.describe() if c.status == "fail" else f"{c.test_id}: {c.reason}" for c in failures
            )
        )
    if any(c.status == "xfail" for c in checks):
        pytest.xfail("; ".join(f"{c.test_id}: {c.reason}" for c in checks if c.status == "xfail"))
    skipped = [c for c in checks if c.status == "skip"]
    if skipped and len(skipped) == len(checks):
        pytest.skip(skipped[0].reason)


def test_output(backend_case_dtype):
    checks = _checks(*backend_case_dtype)
    _judge([c for c in checks if c.quantity in ("output", "loss")])


def test_gradients(grad_backend_case_dtype):
    checks = _checks(*grad_backend_case_dtype)
    _judge([c for c in checks if c.quantity in ("grad_input", "grad_params")])


def dead_entries(backend: str, adapter, directory=None) -> list[str]:
    """Lines of ``<directory>/<backend>.txt`` (default: the in-tree folder) that name no check."""
    ids = [
        f"{backend}/{c.name}/{dt}/{q}"
        for c, dt, q in itertools.product(CASES, adapter.dtypes, QUANTITIES)
    ]
    return [
        f"line {x.line}: {x.pattern}" for x in dead_xfails(load_xfails(backend, directory), ids)
    ]


def test_the_xfail_folder_is_where_the_runner_reads_it():
    assert XFAIL_DIR.is_dir() and (XFAIL_DIR / "README.md").is_file(), XFAIL_DIR


def test_xfail_entries_name_real_checks(backend):
    """Every expected-failure pattern must match at least one check id of this backend."""
    adapter, reason = load_adapter(backend)
    if adapter is None:
        pytest.skip(f"backend {backend} {reason}")
    dead = dead_entries(backend, adapter)
    assert not dead, f"{XFAIL_DIR / backend}.txt: entries that name no check: {dead}"
