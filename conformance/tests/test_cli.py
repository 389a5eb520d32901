"""`flashcore conformance` is a CI gate: exit 0 when all passes, 1 on any failure, reports written."""

from __future__ import annotations

import json
import subprocess
import sys

from flashcore.conformance import report


def test_gate_passes_for_the_spec_and_writes_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = report.main(
        ["--backend", "numpy,array_api_strict", "--case", "flash-*", "--report", str(out)]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "flash-shapes" in text and "pass" in text
    assert text.splitlines()[0].split()[:2] == ["backend", "group"]  # the header row
    assert "worst: the largest error of the cell's checks as a fraction of its tolerance" in (
        " ".join(text.split())
    )  # the legend
    data = json.loads(out.read_text())
    assert data["summary"]["pass"] > 0 and "fail" not in data["summary"]


def test_gate_fails_on_a_broken_adapter_with_a_repro_line(tmp_path, capsys):
    out = tmp_path / "r.md"
    rc = report.main(
        [
            "--backend",
            "test_catches_bugs:FlippedLinearSign",
            "--case",
            "flash-bidir-T%C",
            "--report",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 1
    assert "FAIL" in text and "worst element" in text
    assert (
        "reproduce: flashcore conformance --backend test_catches_bugs:FlippedLinearSign --case flash-bidir-T%C --dtype float64"
        in text
    )
    assert out.read_text().startswith("| backend | group |")


def test_missing_backend_is_reported_not_passed(capsys):
    rc = report.main(["--backend", "no_such_module:Adapter", "--case", "gau-bidir-T=1"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "not installed" in text


def test_console_script_runs():
    res = subprocess.run(
        [sys.executable, "-m", "flashcore.app.cli", "conformance", "--backend", "numpy", "--case", "lm-*", "--dtype", "float64"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "lm" in res.stdout


def test_skipped_checks_say_why_on_screen(capsys):
    from flashcore.conformance.runner import Check

    checks = [
        Check("numpy", "lm-x", "lm", "float64", "grad_params", "skip", reason="no gradients"),
        Check("numpy", "lm-y", "lm", "float64", "grad_params", "skip", reason="no gradients"),
    ]
    assert report.skip_reasons(checks) == ["numpy: 2 skipped: no gradients"]
    assert report._cell(checks) == "0 pass, skip 2"
