"""Expected-failure files: every line needs a reason; a listed check that passes is stale."""

from __future__ import annotations

import pytest
from test_catches_bugs import FlippedLinearSign
from test_conformance import dead_entries

from flashcore.conformance import golden
from flashcore.conformance.adapters import load_adapter
from flashcore.conformance.runner import apply_xfails, load_xfails, run_case


def test_listed_failures_become_xfail_and_passing_entries_are_stale(tmp_path):
    (tmp_path / "broken-linear-sign.txt").write_text(
        "# comments and blank lines are fine\n\n"
        "broken-linear-sign/flash-bidir-T%C/float64/output  # the port has no linear branch yet\n"
        "broken-linear-sign/gau-bidir-T=1/float64/output  # listed, but this case passes\n"
    )
    xfails = load_xfails("broken-linear-sign", tmp_path)
    adapter = FlippedLinearSign()
    checks = run_case(adapter, golden.load("flash-bidir-T%C"), "float64")
    checks += run_case(adapter, golden.load("gau-bidir-T=1"), "float64")
    by_id = {c.test_id: c for c in apply_xfails(checks, xfails)}
    flash = by_id["broken-linear-sign/flash-bidir-T%C/float64/output"]
    assert flash.status == "xfail" and "no linear branch" in flash.reason
    assert by_id["broken-linear-sign/flash-bidir-T%C/float64/loss"].status == "fail"  # not listed
    gau = by_id["broken-linear-sign/gau-bidir-T=1/float64/output"]
    assert gau.status == "stale-xfail" and "remove the entry" in gau.reason


def test_a_line_without_a_reason_is_an_error(tmp_path):
    (tmp_path / "x.txt").write_text("x/flash-*/float32/output\n")
    with pytest.raises(ValueError, match="needs a reason"):
        load_xfails("x", tmp_path)


def test_an_entry_that_names_no_check_is_reported(tmp_path):
    (tmp_path / "numpy.txt").write_text(
        "numpy/flash-bidir-T%C/float64/output  # names a real check\n"
        "numpy/flash-no-such-case/*  # a typo: excuses nothing\n"
        "torch/flash-*  # another backend's id\n"
    )
    adapter, _ = load_adapter("numpy")
    assert dead_entries("numpy", adapter, tmp_path) == [
        "line 2: numpy/flash-no-such-case/*",
        "line 3: torch/flash-*",
    ]
