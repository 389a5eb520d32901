"""Repository-wide pytest options (which conformance backends to run) and the one import-order
rule of a process that loads every backend. Imports no framework: a spec-only test process stays
free of torch, triton, jax and TensorFlow."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

# Under pytest-xdist (the README's test command runs ``-n 2``) each worker process gets its share
# of the cores for intra-op threads (one each on 2 cores), so that the workers keep every core busy
# without oversubscribing them. Set before any framework is imported; a value the user set stays.
# Tests that depend on a thread count set it themselves.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _share = max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, str(_share))


def pytest_addoption(parser):
    parser.addoption(
        "--backend",
        action="append",
        default=None,
        help="conformance backend(s) to run: numpy, array_api_strict, torch, jax, tf or "
        "module:Class (repeat or comma-separate; default: all built-in; env FLASHCORE_BACKENDS)",
    )


# In one process, torch and triton (which torch.compile loads) must come before TensorFlow, or
# LLVM aborts on an option registered twice. Tests import tensorflow directly (importorskip), so
# the first real import of tensorflow loads the installed ones of torch and triton first; a probe
# (importlib.util.find_spec) loads nothing, and a process that never imports TensorFlow never
# pays for them.
_FIRST = ("torch", "triton")


class _FirstLoader(importlib.abc.Loader):
    """tensorflow's own loader, which first imports the frameworks that must precede it."""

    def __init__(self, real: importlib.abc.Loader):
        self.real = real

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module):
        for name in _FIRST:
            if name not in sys.modules and importlib.util.find_spec(name) is not None:
                importlib.import_module(name)
        module.__loader__ = module.__spec__.loader = self.real  # tensorflow sees its own loader
        self.real.exec_module(module)

    def __getattr__(self, name):
        return getattr(self.real, name)


class _TensorFlowLast(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or "tensorflow" in sys.modules:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _FirstLoader(spec.loader)
        return spec


if not any(isinstance(f, _TensorFlowLast) for f in sys.meta_path):
    sys.meta_path.insert(0, _TensorFlowLast())
