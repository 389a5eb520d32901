"""The quality experiment runs end to end at a toy budget and writes its table and plots."""

import json

import pytest

pytest.importorskip("torch", reason="the experiment trains with the torch engine")

from flashcore.app import quality  # noqa: E402


def test_quality_experiment_smoke(tmp_path):
    rc = quality.main([
        "--contexts", "64", "--budget", "1.5", "--max-steps", "6", "--dim", "32", "--layers", "2",
        "--qk-dim", "16", "--chunk", "16", "--tokens-per-step", "128", "--eval-every", "3",
        "--eval-tokens", "256", "--out", str(tmp_path),
    ])  # fmt: skip
    assert rc == 0
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert {r["arch"] for r in runs} == {"flash", "gau", "transformer"}
    assert all(r["curve"] for r in runs)
    table = (tmp_path / "table.md").read_text()
    assert "| 64 | flash" in table and "Transformer++" in table
    assert (tmp_path / "loss_vs_steps.png").stat().st_size > 1000
    assert (tmp_path / "loss_vs_seconds.png").stat().st_size > 1000


def test_time_to_reach_interpolates():
    curve = [{"seconds": 10, "loss": 3.0}, {"seconds": 20, "loss": 2.0}]
    assert quality.time_to_reach(curve, 2.5) == 15
    assert quality.time_to_reach(curve, 1.0) is None
