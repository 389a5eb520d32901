"""The suite must catch a broken port: deliberately wrong adapters fail where they should."""

from __future__ import annotations

from unittest import mock

import numpy as np

import flashcore.layers as layers
import flashcore.lm as lm
from flashcore.conformance import golden
from flashcore.conformance.adapters.spec import NumpyAdapter
from flashcore.conformance.cases import CASES
from flashcore.conformance.runner import run_case

_linear = layers._linear
_causal_mask = layers.causal_mask


class FlippedLinearSign(NumpyAdapter):
    """The linear (cross-chunk) branch with its sign flipped."""

    name = "broken-linear-sign"

    def run(self, *args, **kwargs):
        flipped = lambda *a, **k: -_linear(*a, **k)  # noqa: E731
        with mock.patch.object(layers, "_linear", flipped):
            return super().run(*args, **kwargs)


class ShiftedCausalMask(NumpyAdapter):
    """The causal mask shifted by one: each query also sees the next key."""

    name = "broken-causal-shift"

    def run(self, *args, **kwargs):
        shifted = lambda n: np.tril(np.ones((n, n), bool), k=1)  # noqa: E731
        with (
            mock.patch.object(layers, "causal_mask", shifted),
            mock.patch.object(lm, "causal_mask", shifted),
        ):
            return super().run(*args, **kwargs)


def _failed_cases(adapter) -> set[str]:
    failed = set()
    for case in CASES:
        checks = run_case(adapter, golden.load(case.name), "float64")
        if any(c.status == "fail" for c in checks if c.quantity == "output"):
            failed.add(case.name)
    return failed


def test_a_flipped_linear_branch_is_caught():
    failed = _failed_cases(FlippedLinearSign())
    # Every FLASH case with more than one chunk, or non-causal, has a linear term.
    must = {
        c.name
        for c in CASES
        if c.kind == "flash" and (not c.config.causal or c.time > c.config.chunk_size)
    }
    assert must and must <= failed, sorted(must - failed)
    assert not any(name.startswith(("gau", "transformer")) for name in failed)


def test_a_shifted_causal_mask_is_caught():
    failed = _failed_cases(ShiftedCausalMask())
    causal_multi = {
        c.name
        for c in CASES
        if c.kind != "lm" and getattr(c.config, "causal", False) and c.time > 1
    }
    # relu^2 zeroes an entry whose score is negative, so a case whose few (t, t+1) scores all
    # happen to be negative cannot see the shift; nearly all can, and every group must.
    caught = causal_multi & failed
    assert len(caught) >= 0.9 * len(causal_multi), sorted(causal_multi - failed)
    groups = {c.group for c in CASES if c.name in causal_multi}
    assert groups == {c.group for c in CASES if c.name in caught}
    assert {"lm-flash", "lm-gau", "lm-transformer"} <= failed


def test_a_correct_adapter_passes_everything():
    adapter = NumpyAdapter()
    bad = [
        c.test_id
        for case in CASES
        for c in run_case(adapter, golden.load(case.name), "float64")
        if c.status == "fail"
    ]
    assert not bad, bad
