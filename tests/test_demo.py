"""The main job: runs end to end (at 3 steps), evaluates in every installed backend, and never
writes into an existing run."""

import pytest

pytest.importorskip("torch", reason="the main job trains with the torch engine")

from flashcore.app import demo  # noqa: E402


def test_demo_end_to_end(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path / "run"), "--steps", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("backend")
    assert "torch" in out and "checkpoint:" in out
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_demo_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "model.safetensors").write_bytes(b"keep me")
    assert demo.main(["--out", str(tmp_path), "--steps", "1"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "model.safetensors").read_bytes() == b"keep me"
