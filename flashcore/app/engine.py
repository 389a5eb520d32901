"""Where the application finds a backend's :class:`~flashcore.runtime.Engine`: :func:`load_engine`;
the persistent compilation cache of the command-line tools: :func:`enable_compile_cache`.

The protocol, AdamW's hyper-parameters and the engines' checks live in :mod:`flashcore.runtime`
(the spec storey, so that backends may import them); they are re-exported here for the
application's modules.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

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
    "COMPILE_CACHE_ENV",
    "load_engine",
    "compile_cache_dir",
    "enable_compile_cache",
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


#: The environment variable that places (a path) or turns off ("off", "0", "none", "") the
#: persistent compilation cache of ``flashcore generate`` / ``flashcore eval``.
COMPILE_CACHE_ENV = "FLASHCORE_COMPILE_CACHE"


def compile_cache_dir() -> Path | None:
    """The compilation cache's folder: ``$FLASHCORE_COMPILE_CACHE``, else
    ``$XDG_CACHE_HOME/flashcore/compile`` (``~/.cache/flashcore/compile``); None when turned off."""
    value = os.environ.get(COMPILE_CACHE_ENV)
    if value is not None:
        if value.strip().lower() in ("", "0", "off", "none", "false"):
            return None
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flashcore" / "compile"


def enable_compile_cache(backend: str) -> Path | None:
    """Turn on the backend's persistent compilation cache for this process, so that a second
    ``flashcore generate`` or ``eval`` with the same shapes loads its XLA programs instead of
    compiling them (jax: ``jax_compilation_cache_dir``, every compilation cached, about 1.2 s of
    a 1.3 s ``generate --max-new 200`` on 2 cores; tf: ``TF_XLA_FLAGS``
    ``--tf_xla_persistent_cache_directory``, set before TF's first XLA compilation, the programs
    only: its Python tracing stays). torch: nothing to do (eager torch compiles nothing).
    Returns the folder used, or None (off, torch, or the folder cannot be made: a warning says so
    and nothing is cached)."""
    if backend not in ("jax", "tf"):
        return None
    folder = compile_cache_dir()
    if folder is None:
        return None
    target = folder / backend
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"flashcore: no compilation cache ({target}: {err})", file=sys.stderr)
        return None
    if backend == "tf":  # read when TF's XLA first compiles; a flag the user set wins
        flags = os.environ.get("TF_XLA_FLAGS", "")
        if "tf_xla_persistent_cache_directory" not in flags:
            os.environ["TF_XLA_FLAGS"] = f"{flags} --tf_xla_persistent_cache_directory={target}"
        return target
    import jax

    jax.config.update("jax_compilation_cache_dir", str(target))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return target
