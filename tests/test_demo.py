"""The main job refuses to write into a run that exists, and runs end to end at a toy size."""

import pytest

pytest.importorskip("torch", reason="the main job trains with the torch engine")

from flashcore import demo  # noqa: E402


def test_demo_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "model.safetensors").write_bytes(b"keep me")
    assert demo.main(["--out", str(tmp_path), "--steps", "1"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "model.safetensors").read_bytes() == b"keep me"
