"""mkdocs hook: the API reference's source tree.

mkdocstrings reads the code statically (griffe), by package name and folder. The wheel maps
``backends/<fw>`` to ``flashcore.<fw>`` and ``conformance`` to ``flashcore.conformance``
(pyproject.toml's package-dir), which no folder of the repository spells. This hook builds that
layout once, as symbolic links under ``build/api-src/flashcore`` (build/ is ignored by git), when
mkdocs loads it, before any page is rendered; mkdocs.yml points mkdocstrings' ``paths`` there.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "build" / "api-src"


def build_source_tree(root: Path = ROOT, out: Path = SOURCE) -> Path:
    """Link every package of pyproject's package-dir to its import path under ``out``:
    ``flashcore``'s files, then ``flashcore.torch`` -> ``backends/torch`` and so on.
    Returns ``out``."""
    package_dir = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    top = package_dir["flashcore"]
    if out.exists():
        shutil.rmtree(out)
    pkg = out / "flashcore"
    pkg.mkdir(parents=True)
    for entry in (root / top).iterdir():  # the spec's own files and subpackages
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for name, folder in sorted(package_dir.items()):
        parts = name.split(".")[1:]
        target = pkg.joinpath(*parts)
        if parts and not target.exists():  # flashcore.torch, flashcore.conformance, ...
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(root / folder, target_is_directory=True)
    return out


build_source_tree()
