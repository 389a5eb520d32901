"""Triton after TensorFlow in one process, without LLVM's abort.

TensorFlow loads its shared libraries with ``RTLD_GLOBAL``, so its copy of LLVM's symbols is
visible to every library loaded after it. Triton's extension (``triton._C.libtriton``, which
``torch.compile`` loads too, also on the CPU) carries its own LLVM; loaded after TensorFlow, its
static initialisers bind to TensorFlow's command-line option registry and register the same
options a second time: ``LLVM ERROR: inconsistency in registered CommandLine options`` and
``abort()``, with no Python exception. The other order (triton first) has always worked.

:func:`install` (called once by ``import flashcore``) puts a finder on ``sys.meta_path`` that
changes one thing: when TensorFlow is already imported, triton's extension modules are loaded with
``RTLD_DEEPBIND``, so that they resolve symbols in their own library before the global ones and
keep an LLVM of their own. It loads nothing itself and does nothing for any other module or in a
process without TensorFlow. Where the platform has no ``RTLD_DEEPBIND`` (not glibc), the import
raises an ImportError that names the order that works, instead of aborting the process.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

__all__ = ["install", "tensorflow_loaded"]

#: triton's compiled extensions (libtriton holds LLVM; libproton links against it).
_PREFIX = "triton._C."

_ORDER_HINT = (
    "import torch and triton (or call torch.compile once) before tensorflow / keras, or use "
    "them in separate processes"
)


def tensorflow_loaded() -> bool:
    """Whether TensorFlow (and so its globally visible LLVM) is in this process."""
    return "tensorflow" in sys.modules


class _DeepBindLoader(importlib.abc.Loader):
    """An extension module's own loader, run with ``RTLD_DEEPBIND`` added to the dlopen flags."""

    def __init__(self, real: importlib.machinery.ExtensionFileLoader):
        self.real = real

    def create_module(self, spec):
        deepbind = getattr(os, "RTLD_DEEPBIND", None)
        if deepbind is None:
            raise ImportError(
                f"{spec.name} cannot be loaded after TensorFlow in one process on this platform "
                f"(both carry LLVM, and loading it would abort the interpreter): {_ORDER_HINT}",
                name=spec.name,
            )
        flags = sys.getdlopenflags()
        sys.setdlopenflags(flags | deepbind)
        try:
            return self.real.create_module(spec)
        finally:
            sys.setdlopenflags(flags)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self.real  # the module sees its own loader
        self.real.exec_module(module)


class _TritonAfterTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if not name.startswith(_PREFIX) or not tensorflow_loaded():
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            return None  # a pure-Python submodule: the ordinary finders load it
        spec.loader = _DeepBindLoader(spec.loader)
        return spec


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once per process)."""
    if not any(isinstance(f, _TritonAfterTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _TritonAfterTensorFlow())
