"""A quiet start for the commands: TensorFlow's, XLA's and absl's start-up logs off.

:func:`quiet_frameworks` must run before TensorFlow is imported (its C++ logging reads the
environment once); ``flashcore --verbose`` skips it. Variables the user set are left as they are.
"""

from __future__ import annotations

import logging
import os

__all__ = ["quiet_frameworks", "QUIET_ENV"]

QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TF's C++ INFO and WARNING lines (oneDNN, cpu features, ...)
    "ABSL_MIN_LOG_LEVEL": "2",  # absl's C++ logging (XLA, TF >= 2.16)
    "GRPC_VERBOSITY": "ERROR",
}


def quiet_frameworks() -> None:
    """Silence the frameworks' start-up logs (before any of them is imported)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    logging.getLogger("absl").setLevel(logging.ERROR)  # absl's Python logging (TF, JAX, Flax)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
