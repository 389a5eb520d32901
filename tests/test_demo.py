"""The main job: runs end to end (at 3 steps), evaluates in every installed backend, and never
writes into an existing run."""

import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="the main job trains with the torch engine")

from flashcore.app import demo  # noqa: E402
from flashcore.app.quiet import is_framework_log  # noqa: E402


def test_demo_end_to_end(tmp_path):
    """As a user runs it (``flashcore demo``, a new process): the table, the checkpoint line once,
    and no framework start-up log line on either stream."""
    cmd = [sys.executable, "-m", "flashcore", "demo", "--out", str(tmp_path / "run")]
    res = subprocess.run([*cmd, "--steps", "3", "--quiet"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert out.splitlines()[1].startswith("backend")
    assert "torch" in out and out.count("checkpoint:") == 1, out
    noise = [ln for ln in (res.stdout + res.stderr).splitlines() if is_framework_log(ln)]
    assert not noise, noise
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_demo_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "model.safetensors").write_bytes(b"keep me")
    assert demo.main(["--out", str(tmp_path), "--steps", "1"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "model.safetensors").read_bytes() == b"keep me"
