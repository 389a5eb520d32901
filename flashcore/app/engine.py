"""Where the application finds a backend's :class:`~flashcore.runtime.Engine`: :func:`load_engine`.

The protocol, AdamW's hyper-parameters and the engines' checks live in :mod:`flashcore.runtime`
(the spec storey, so that backends may import them); they are re-exported here for the
application's modules.
"""

from __future__ import annotations

import importlib

from ..runtime import (
    Engine,
    OptimConfig,
    ParallelError,
    check_split,
    decays,
    launched_processes,
)

__all__ = [
    "BACKENDS",
    "load_engine",
    "Engine",
    "OptimConfig",
    "ParallelError",
    "check_split",
    "decays",
    "launched_processes",
]

BACKENDS = ("torch", "jax", "tf")


def load_engine(backend: str):
    """The Engine class of ``backend`` (ImportError naming what is missing)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    try:
        module = importlib.import_module(f"flashcore.{backend}.engine")
    except ImportError as err:
        raise ImportError(f"the {backend} backend is not available here: {err}") from err
    return module.Engine
