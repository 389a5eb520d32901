"""The documentation pages: the Python blocks that moved out of the README still run as written,
every page is in the site's navigation, and every relative link of the README and of the pages
names a file of the repository (`mkdocs build --strict` in the README's test command checks the
site's own links and the API reference)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# folders of measured results (generated reports), served by the site but not in its navigation
RESULTS = ("bench/", "quality/", "init/")


def _blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(encoding="utf-8"), re.S)


def test_backends_spec_block_runs():
    pytest.importorskip("torch", reason="the block ends with the torch namespace")
    (block,) = _blocks("backends.md")
    scope: dict = {}
    exec(compile(block, "docs/backends.md", "exec"), scope)
    assert tuple(scope["y"].shape) == (2, 1000, 512)


def _nav_pages() -> set[str]:
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = text.split("\nnav:\n", 1)[1]
    return set(re.findall(r":\s*([\w./-]+\.md)\s*$", nav, re.M))


def test_every_page_is_in_the_navigation():
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    pages = {p for p in pages if not p.startswith(RESULTS)}
    nav = _nav_pages()
    assert pages - nav == set(), "pages missing from mkdocs.yml's nav"
    assert nav - pages == set(), "mkdocs.yml's nav names pages that do not exist"


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:|#", t)]


@pytest.mark.parametrize("path", ["README.md", *sorted(p.name for p in DOCS.glob("*.md"))])
def test_relative_links_name_files_of_the_repository(path):
    file = ROOT / path if path == "README.md" else DOCS / path
    for link in _links(file):
        target = (file.parent / link.split("#")[0]).resolve()
        assert target.is_relative_to(ROOT), f"{path}: {link} points outside the repository"
        assert target.exists(), f"{path}: {link} names no file"


def test_no_text_names_a_file_outside_the_repository():
    for file in [ROOT / "README.md", *DOCS.glob("*.md")]:
        text = file.read_text(encoding="utf-8")
        assert "/work/" not in text and "PAPER.md" not in text, file.name
