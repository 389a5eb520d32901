"""A quiet CLI: flashcore's commands print no framework start-up log line (TensorFlow's absl /
oneDNN notices) unless --verbose; what is not such a line still reaches stderr."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from flashcore.app.quiet import is_framework_log

NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796199317.547749   18814 port.cc:153] oneDNN custom operations are on. You may",
    "W0000 00:00:1796199317.872581   18814 cpu_feature_guard.cc:227] This TensorFlow binary is",
]


def test_the_filter_knows_the_log_lines_and_nothing_else():
    assert all(is_framework_log(line) for line in NOISE)
    for line in ["E0000 00:00:17.5 1 x.cc:1] a real error", "Traceback (most recent call last):",
                 "flashcore eval: no weight file at x", "step 3: held-out loss 5.1 nats"]:  # fmt: skip
        assert not is_framework_log(line), line


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("torch") is None,
    reason="needs tensorflow (the noisy framework) and torch (to train the checkpoint)",
)
def test_eval_in_tf_prints_no_framework_log_line(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    src = Path(sysconfig.get_paths()["stdlib"])
    for name in ("abc.py", "bisect.py", "colorsys.py", "keyword.py", "this.py", "copy.py"):
        (corpus / name).write_bytes((src / name).read_bytes())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY"):
        env.pop(key, None)
    run = tmp_path / "run"
    tiny = ["--dim", "16", "--layers", "1", "--qk-dim", "8", "--chunk", "16", "--context", "32",
            "--batch", "2", "--steps", "1", "--eval-tokens", "64", "--quiet"]  # fmt: skip
    cmd = [sys.executable, "-m", "flashcore"]
    done = subprocess.run([*cmd, "train", *tiny, "--data", str(corpus), "--out", str(run)],
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    res = subprocess.run(
        [*cmd, "eval", str(run), "--backend", "tf", "--eval-tokens", "64", "--data", str(corpus)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[1].startswith("tf ")
    noise = [line for line in res.stderr.splitlines() if is_framework_log(line)]
    assert not noise and "oneDNN" not in res.stderr, res.stderr


def test_a_look_up_of_tensorflow_does_not_use_the_quiet_import_up():
    """Availability checks call importlib.util.find_spec("tensorflow") before the import; the
    filter must still be there for the import itself (the demo printed TF's log lines)."""
    code = (
        "import importlib.util, sys\n"
        "from flashcore.app.quiet import _QuietImport, quiet_frameworks\n"
        "quiet_frameworks()\n"
        "assert importlib.util.find_spec('tensorflow') is not None\n"
        "assert any(isinstance(f, _QuietImport) for f in sys.meta_path), 'used up by a look-up'\n"
        "import tensorflow\n"
        "assert not any(isinstance(f, _QuietImport) for f in sys.meta_path), 'not removed'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    noise = [line for line in res.stderr.splitlines() if is_framework_log(line)]
    assert not noise, noise
