"""A quiet start for the commands: TensorFlow's, XLA's and absl's start-up logs off.

:func:`quiet_frameworks` runs before any framework is imported (``flashcore --verbose`` skips it):

* ``TF_CPP_MIN_LOG_LEVEL=2`` and friends: TensorFlow's own C++ INFO / WARNING lines (e.g. the
  CPU-feature notice), gRPC's; variables the user set are left as they are;
* the first ``import tensorflow`` runs with file descriptor 2 sent to a temporary file: TF 2.21's
  libraries log through absl before absl is set up ("WARNING: All log messages before
  absl::InitializeLog() ...", "oneDNN custom operations are on ...") and no variable stops that;
  afterwards every captured line that is not such an INFO / WARNING log line is written back to
  stderr, so errors and Python warnings raised during the import still show;
* absl's and TensorFlow's Python loggers at ERROR.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
from contextlib import contextmanager

__all__ = ["quiet_frameworks", "QUIET_ENV", "is_framework_log"]

QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "GRPC_VERBOSITY": "ERROR",
}

# glog / absl lines of severity I or W ("I0000 00:00:17.5 18814 port.cc:153] ..."), absl's notice
_LOG_LINE = re.compile(
    r"^(?:[IW]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w./-]+:\d+\] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called)"
)


def is_framework_log(line: str) -> bool:
    """Whether a stderr line is a framework's INFO / WARNING log line (what quiet mode hides)."""
    return bool(_LOG_LINE.match(line))


@contextmanager
def _fd2_filtered():
    """Send fd 2 to a temporary file; afterwards write back what is not a framework log line."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not is_framework_log(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietImport(importlib.abc.MetaPathFinder):
    """Runs the first import of ``tensorflow`` under :func:`_fd2_filtered`.

    It stays on ``sys.meta_path`` until that import executes: a mere look-up
    (``importlib.util.find_spec("tensorflow")``, as availability checks do) must not use it up.
    """

    def __init__(self):
        self._looking = False

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or self._looking:
            return None
        self._looking = True  # the look-up below must not come back here
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._looking = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run, finder = spec.loader.exec_module, self

        def exec_module(module):
            if finder in sys.meta_path:  # the first real import: once
                sys.meta_path.remove(finder)
            with _fd2_filtered():
                run(module)

        spec.loader.exec_module = exec_module
        return spec


def quiet_frameworks() -> None:
    """Silence the frameworks' start-up logs (call before any of them is imported)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if "tensorflow" not in sys.modules and not any(
        isinstance(f, _QuietImport) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _QuietImport())
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
