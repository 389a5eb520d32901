"""The Layout block of docs/architecture.md is the tree: every file and folder of the listed
folders has a line with its job, and every line names something that exists. Read from the file
system (no import)."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the folders the Layout block lists file by file (``./``: the repository's top level)
FOLDERS = (
    "./",
    "flashcore/",
    "flashcore/app/",
    "flashcore/peers/",
    "backends/torch/",
    "backends/torch/kernels/",
    "backends/jax/",
    "backends/tf/",
    "conformance/",
    "conformance/adapters/",
)
SKIPPED = {"__init__.py"}  # the folder's own line describes the package


def layout_block(text: str) -> dict[str, dict[str, str]]:
    """{folder: {entry: job}} of the Layout code block in docs/architecture.md: a folder line
    starts at column 0 (``flashcore/app/   the application``), its entries are indented by two
    spaces (``  cli.py   the flashcore command``)."""
    found = re.search(r"## Layout\n.*?```text\n(.*?)```", text, re.S)
    assert found, "docs/architecture.md has no '## Layout' section with a ```text block"
    groups: dict[str, dict[str, str]] = {}
    current = None
    for line in found.group(1).splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            current = line.split()[0]
            assert current not in groups, f"Layout lists {current} twice"
            groups[current] = {}
        elif line.startswith("  ") and not line.startswith("   "):
            assert current is not None, f"Layout entry before any folder: {line!r}"
            name, _, job = line.strip().partition(" ")
            assert job.strip(), f"Layout: {current}{name} has no job written beside it"
            assert name not in groups[current], f"Layout lists {current}{name} twice"
            groups[current][name] = job.strip()
    return groups


def _ignored() -> list[str]:
    lines = (ROOT / ".gitignore").read_text().splitlines() if (ROOT / ".gitignore").exists() else []
    return [ln.strip().rstrip("/") for ln in lines if ln.strip() and not ln.startswith("#")]


def tree(folder: str) -> set[str]:
    """The entries of ``folder`` as the Layout names them (folders with a trailing /), without
    hidden, ignored (.gitignore) and skipped names."""
    path = ROOT / folder
    patterns = _ignored()
    out = set()
    for child in path.iterdir():
        if child.name.startswith(".") or child.name in SKIPPED:
            continue
        if any(fnmatch.fnmatch(child.name, p) for p in patterns):
            continue
        out.add(child.name + "/" if child.is_dir() else child.name)
    return out


def differences(groups: dict[str, dict[str, str]], trees: dict[str, set[str]]) -> list[str]:
    """One line per file missing from the Layout block, and per line naming nothing."""
    out = []
    for folder, entries in trees.items():
        listed = set(groups.get(folder, {}))
        if folder not in groups:
            out.append(f"Layout has no {folder} group")
        out += [
            f"{folder}{n} is not in the Layout of docs/architecture.md"
            for n in sorted(entries - listed)
        ]
        out += [
            f"the Layout of docs/architecture.md lists {folder}{n}, not in the tree"
            for n in sorted(listed - entries)
        ]
    out += [
        f"the Layout of docs/architecture.md lists a folder {g} that the test does not check"
        for g in groups
        if g not in trees
    ]
    return out


def _trees() -> dict[str, set[str]]:
    return {folder: tree(folder) for folder in FOLDERS}


def test_the_layout_section_is_the_tree():
    groups = layout_block((ROOT / "docs" / "architecture.md").read_text())
    bad = differences(groups, _trees())
    assert not bad, "\n".join(bad)


def test_a_file_missing_from_the_layout_fails():
    groups = layout_block((ROOT / "docs" / "architecture.md").read_text())
    trees = _trees()
    planted = {**trees, "backends/tf/": trees["backends/tf/"] | {"sampling.py"}}
    assert differences(groups, planted) == [
        "backends/tf/sampling.py is not in the Layout of docs/architecture.md"
    ]
    gone = {**trees, "flashcore/app/": trees["flashcore/app/"] - {"train.py"}}
    assert differences(groups, gone) == [
        "the Layout of docs/architecture.md lists flashcore/app/train.py, not in the tree"
    ]


def test_the_backends_use_one_file_name_per_job():
    """A job that two backends have lives under the same name: the names below are the whole
    layout, and a backend's files are a subset of it."""
    shared = {"adapter.py", "bench.py", "decode.py", "engine.py", "io.py", "layers.py", "lm.py"}
    shared |= {"loss.py", "module.py", "naming.py", "xp.py"}
    extras = {"torch": {"kernels/", "parallel.py", "context_parallel.py", "hf.py"}}
    extras |= {"jax": {"kernels.py", "parallel.py", "context_parallel.py", "functional.py"}}
    extras["jax"] |= {"compiler.py", "shard.py"}
    extras["torch"] |= {"shard.py"}
    for backend in ("torch", "jax"):  # deployment exports: ONNX; StableHLO and SavedModel
        extras[backend] |= {"export.py"}
    extras |= {"tf": {"kernels.py"}}
    for backend, extra in extras.items():
        assert tree(f"backends/{backend}/") == shared | extra, backend
