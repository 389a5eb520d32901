"""Backends are picked by import path; `import flashcore` loads no framework; the mapping of the
top-level backends/ folders works for editable installs and for wheels."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_flashcore_loads_no_framework():
    code = (
        "import sys, flashcore, flashcore.conformance.golden, flashcore.conformance.cases\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'jax', 'jaxlib', 'tensorflow', 'keras', 'flax')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_backends_map_to_top_level_folders_in_this_install():
    import flashcore.jax
    import flashcore.tf
    import flashcore.torch

    for mod, folder in ((flashcore.torch, "torch"), (flashcore.jax, "jax"), (flashcore.tf, "tf")):
        assert Path(mod.__file__).resolve().parent == ROOT / "backends" / folder


def test_every_package_folder_is_listed_in_pyproject():
    """A new subpackage that pyproject.toml does not list would be missing from the wheel."""
    import tomllib

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {Path(p).resolve() for p in tool["package-dir"].values()}
    assert set(tool["packages"]) == set(tool["package-dir"])
    for top in ("flashcore", "backends", "conformance"):
        for init in (ROOT / top).rglob("__init__.py"):
            folder = init.parent.resolve()
            if "tests" in folder.relative_to(ROOT).parts:
                continue
            assert folder in mapped, f"{folder.relative_to(ROOT)} is not in pyproject's package-dir"


@pytest.mark.slow  # builds and installs the wheel, runs the main job from it
def test_wheel_ships_backends_under_flashcore(tmp_path):
    """The wheel builds without a setuptools warning (license, package data), holds every
    package and data folder, and the installed copy runs the main job from another folder."""
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    warned = [ln for ln in (res.stdout + res.stderr).splitlines() if "Warning:" in ln]
    assert not warned, warned
    (wheel,) = tmp_path.glob("flashcore-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for sub in (
        "torch",
        "torch/kernels",
        "jax",
        "tf",
        "conformance",
        "conformance/adapters",
        "peers",
    ):
        assert f"flashcore/{sub}/__init__.py" in names
    assert any(n.startswith("flashcore/conformance/golden/") and n.endswith(".npz") for n in names)
    assert "flashcore/conformance/xfail/README.md" in names  # the folder the runner reads
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    code = "import flashcore.torch, flashcore.conformance.golden as g; print(flashcore.torch.__file__); g.load('flash-causal-T=1')"
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith(str(target))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    demo = [sys.executable, "-m", "flashcore", "demo", "--steps", "2", "--out", "run", "--quiet"]
    out = subprocess.run(demo, env=env, cwd=elsewhere, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "largest loss difference between backends" in out.stdout, out.stdout[-2000:]
    assert (elsewhere / "run" / "model.safetensors").is_file()


_FRAMEWORKS = ("torch", "triton", "jax", "jaxlib", "tensorflow", "keras", "flax")


def test_the_conftests_import_no_framework():
    """A spec-only test process (tests/test_data.py, say) loads no framework through a conftest,
    nor when a test only probes whether TensorFlow is installed."""
    code = (
        "import importlib.util, runpy, sys\n"
        "for c in ('conftest.py', 'tests/conftest.py', 'conformance/tests/conftest.py'):\n"
        "    runpy.run_path(c)\n"
        "importlib.util.find_spec('tensorflow')\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {_FRAMEWORKS!r}]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=ROOT)


def test_test_module_names_are_unique():
    """pytest imports test files by basename (no __init__.py): two with one name break collection."""
    names = [
        p.name
        for d in ("tests", "conformance/tests")
        for p in (ROOT / d).rglob("*.py")
        if p.name != "conftest.py"
    ]
    dupes = sorted({n for n in names if names.count(n) > 1})
    assert not dupes, dupes
