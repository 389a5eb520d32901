"""Every backend imports, and runs, in any order with keras / tensorflow / torch / jax, each order in
a fresh process (LLVM aborts a process that loads triton after TensorFlow unless flashcore's
finder, flashcore._llvm, loads it; the repository's conftest orders nothing, and the child script
runs outside pytest so that no conftest could). Each child runs a FLASH forward in every flashcore
backend it imported, checked against the NumPy spec, and prints ``ok <backends>``."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flashcore import _llvm

CHILD = Path(__file__).with_name("_import_order_child.py")
FRAMEWORK = {"keras": "keras", "tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}
BACKEND_NEEDS = {"torch": "torch", "jax": "flax", "tf": "tensorflow"}


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _run(args: list[str], tmp_path) -> str:
    """Run the child with ``args`` (statements, in order, and its --flags); its last line."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_XDIST_WORKER"}
    env.update(OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    argv = [sys.executable, str(CHILD), *args]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert res.returncode == 0, f"{'; '.join(args)} exited {res.returncode}:\n{res.stderr[-3000:]}"
    return res.stdout.strip().splitlines()[-1]


# TensorFlow / Keras first is where LLVM clashes with a later triton: every backend after them;
# torch and jax first, one backend each (the orders below cover the rest).
PAIRS = [(first, backend) for first in ("keras", "tensorflow") for backend in BACKEND_NEEDS]
PAIRS += [("torch", "tf"), ("jax", "torch")]


@pytest.mark.slow  # a fresh process importing frameworks
@pytest.mark.parametrize(("first", "backend"), PAIRS, ids=[f"{a}-then-{b}" for a, b in PAIRS])
def test_a_framework_then_a_backend(first, backend, tmp_path):
    if not _installed(FRAMEWORK[first], BACKEND_NEEDS[backend]):
        pytest.skip(f"{FRAMEWORK[first]} or {BACKEND_NEEDS[backend]} is not installed")
    out = _run([f"import {first}", f"import flashcore.{backend}"], tmp_path)
    assert out.split() == ["ok", *[b for b in ("torch", "jax", "tf") if b == backend]], out


# The commands that aborted before (issue 41) that the pairs above do not cover, each as a user
# types it; every backend in two orders (on a CPU, none of them imports triton); torch.compile
# (which loads triton, also on the CPU, when it is installed) after TensorFlow.
ORDERS = {
    "keras-tf-torch": (
        ["import keras", "import flashcore.tf", "import flashcore.torch"],
        "torch tf",
    ),
    "tensorflow-torch-compile-lambda": (
        [
            "import tensorflow as tf",
            "import flashcore.torch, torch",
            "torch.compile(lambda x: x + 1)(torch.ones(3))",
        ],
        "torch",
    ),
    "tf-torch-jax": (
        ["import flashcore.tf", "import flashcore.torch", "import flashcore.jax", "--no-triton"],
        "torch jax tf",
    ),
    "jax-tf-torch": (
        ["import flashcore.jax", "import flashcore.tf", "import flashcore.torch", "--no-triton"],
        "torch jax tf",
    ),
    "tensorflow-then-compile-a-flashcore-module": (
        ["import tensorflow", "import flashcore.torch", "--compile"],
        "torch torch.compile",
    ),
    "flashcore-torch-then-tensorflow-then-compile": (
        ["import flashcore.torch", "import tensorflow", "--compile"],
        "torch torch.compile",
    ),
}


@pytest.mark.slow  # a fresh process importing frameworks (and compiling, in two of them)
@pytest.mark.parametrize("name", list(ORDERS))
def test_the_orders_users_write(name, tmp_path):
    args, expect = ORDERS[name]
    needs = ("torch", "tensorflow", *(["flax"] if "jax" in expect else []))
    if not _installed(*needs):
        pytest.skip(f"needs {', '.join(needs)} installed")
    if "no-triton" in " ".join(args):
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA machine: the Triton kernel may load there")
    out = _run(args, tmp_path)
    assert out.split() == ["ok", *expect.split()], out


# The finder itself, without loading anything.


def _libtriton_spec_path() -> list[str]:
    spec = importlib.util.find_spec("triton")  # a probe: imports nothing
    return [str(Path(spec.submodule_search_locations[0]) / "_C")]


@pytest.mark.skipif(not _installed("triton"), reason="triton is not installed")
def test_the_finder_deep_binds_triton_only_after_tensorflow(monkeypatch):
    finder = _llvm._TritonAfterTensorFlow()
    path = _libtriton_spec_path()
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    assert finder.find_spec("triton._C.libtriton", path) is None  # no TensorFlow: untouched
    monkeypatch.setitem(sys.modules, "tensorflow", sys.modules[__name__])  # a stand-in
    spec = finder.find_spec("triton._C.libtriton", path)
    assert isinstance(spec.loader, _llvm._DeepBindLoader), spec
    assert finder.find_spec("triton.language", None) is None  # other modules: untouched
    assert finder.find_spec("numpy", None) is None


def test_without_deepbind_the_import_is_an_error_naming_the_order(monkeypatch):
    """On a platform without RTLD_DEEPBIND, loading triton after TensorFlow is an ImportError
    that says what to do, raised before anything is dlopen'ed."""

    class _Never:
        def create_module(self, spec):  # pragma: no cover - must not be reached
            raise AssertionError("dlopen was attempted")

    monkeypatch.delattr(os, "RTLD_DEEPBIND", raising=False)
    spec = importlib.machinery.ModuleSpec("triton._C.libtriton", None)
    with pytest.raises(ImportError, match="before tensorflow"):
        _llvm._DeepBindLoader(_Never()).create_module(spec)


def test_import_flashcore_installs_the_finder_once():
    import flashcore  # noqa: F401

    _llvm.install()
    assert sum(isinstance(f, _llvm._TritonAfterTensorFlow) for f in sys.meta_path) == 1
