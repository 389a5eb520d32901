"""Progress bars (tqdm, flashcore.app.progress): drawn on a terminal, never in a pipe or with
--quiet; the commands draw theirs through it."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios

import pytest

from flashcore.app import progress

CONFORMANCE = [sys.executable, "-m", "flashcore", "conformance", "--backend", "numpy"]
CONFORMANCE += ["--case", "gau-bidir-T=1"]


def test_a_bar_is_shown_only_on_a_terminal_and_without_quiet(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert progress.shown() and not progress.shown(quiet=True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert not progress.shown()
    assert list(progress.iterate([1, 2, 3], desc="x")) == [1, 2, 3]  # a plain iteration then


def _stderr_on_a_terminal(cmd: list[str]) -> tuple[int, str]:
    """Run ``cmd`` with stderr on a pseudo-terminal -> (exit code, what it drew there)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 0 x 0 otherwise
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=follower, stdin=subprocess.DEVNULL
    )
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        if not ready:
            proc.kill()
            raise AssertionError(f"{cmd} drew nothing for 120 s")
        try:
            data = os.read(leader, 4096)
        except OSError:  # the follower side closed: the process is done
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def test_conformance_draws_a_bar_on_a_terminal_and_none_in_a_pipe():
    rc, drawn = _stderr_on_a_terminal(CONFORMANCE)
    assert rc == 0, drawn
    assert "conformance numpy" in drawn and "100%" in drawn, drawn
    rc, drawn = _stderr_on_a_terminal([*CONFORMANCE, "--quiet"])
    assert rc == 0 and "100%" not in drawn, drawn
    piped = subprocess.run(CONFORMANCE, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and "100%" not in piped.stderr, piped.stderr


def test_train_draws_a_bar_on_a_terminal(tmp_path):
    pytest.importorskip("torch", reason="the training run uses the torch engine")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200)
    cmd = [sys.executable, "-m", "flashcore", "train", "--data", str(corpus), "--steps", "3"]
    cmd += ["--dim", "16", "--layers", "1", "--qk-dim", "8", "--chunk", "8", "--context", "16"]
    cmd += ["--batch", "2", "--eval-tokens", "32", "--out", str(tmp_path / "run")]
    rc, drawn = _stderr_on_a_terminal(cmd)
    assert rc == 0, drawn
    assert "train" in drawn and "3/3" in drawn, drawn
