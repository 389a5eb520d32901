"""Each backend's public API (its ``__all__``) is the table "Public API per backend" in
docs/architecture.md, and the names every backend shares are there in all three. Read from the
source with ``ast`` (no framework imported); where a framework is installed, the names are also checked on the imported
package, with the decoding methods every module carries."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("torch", "jax", "tf")
# the same job, the same name, in every backend
SHARED = {"FLASH", "GAU", "TransformerBlock", "LM", "CanonicalModule", "naming_table"}
SHARED |= {"decode", "io", "xp"}


def readme_table(text: str) -> dict[str, set[str]]:
    """{backend: names ticked in its column} of the public-API table in docs/architecture.md."""
    section = re.search(r"^#+ Public API per backend\n(.*?)(?:\n#|\Z)", text, re.S | re.M)
    assert section, "docs/architecture.md has no 'Public API per backend' section"
    lines = [ln for ln in section.group(1).splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cols = {b: header.index(b) for b in BACKENDS}
    out: dict[str, set[str]] = {b: set() for b in BACKENDS}
    for line in lines[2:]:  # after the header and the |---| row
        cells = [c.strip() for c in line.strip("|").split("|")]
        name = cells[0].strip("`")
        for b, i in cols.items():
            if cells[i] == "✓":
                out[b].add(name)
            elif cells[i]:
                raise AssertionError(
                    f"docs/architecture.md public API row {name!r}: {b} cell {cells[i]!r}"
                )
    return out


def declared_all(source: str) -> list[str]:
    """The literal ``__all__`` of a module's source."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise AssertionError("no literal __all__")


def bound_names(source: str) -> set[str]:
    """Top-level names a module's source binds (imports, assignments, defs, classes)."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
    return names


def mismatches(table: dict[str, set[str]], exported: dict[str, list[str]]) -> list[str]:
    """One line per name that the table of docs/architecture.md and a backend's ``__all__``
    disagree on."""
    out = []
    for b in BACKENDS:
        got = set(exported[b])
        out += [
            f"{b}: {n} is in __all__ but not ticked in docs/architecture.md" for n in got - table[b]
        ]
        out += [
            f"{b}: {n} is ticked in docs/architecture.md but not in __all__" for n in table[b] - got
        ]
    return sorted(out)


def _source(backend: str) -> str:
    return (ROOT / "backends" / backend / "__init__.py").read_text()


def _exported() -> dict[str, list[str]]:
    return {b: declared_all(_source(b)) for b in BACKENDS}


def test_the_readme_table_is_every_backends_all():
    table = readme_table((ROOT / "docs" / "architecture.md").read_text())
    bad = mismatches(table, _exported())
    assert not bad, "\n".join(bad)


def test_a_table_that_disagrees_with_all_fails():
    table = readme_table((ROOT / "docs" / "architecture.md").read_text())
    exported = _exported()
    missing_row = {b: names - {"FLASH"} for b, names in table.items()}
    assert mismatches(missing_row, exported) == [
        f"{b}: FLASH is in __all__ but not ticked in docs/architecture.md" for b in sorted(BACKENDS)
    ]
    extra = {**table, "tf": table["tf"] | {"functional"}}
    assert mismatches(extra, exported) == [
        "tf: functional is ticked in docs/architecture.md but not in __all__"
    ]
    with pytest.raises(AssertionError, match="cell"):
        readme_table(
            "### Public API per backend\n| name | torch | jax | tf |\n|-|-|-|-|\n| `x` | yes | | |\n#"
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_exported_name_is_bound_and_the_shared_ones_are_there(backend):
    names = declared_all(_source(backend))
    assert len(names) == len(set(names)), names
    assert not set(names) - bound_names(_source(backend))
    assert SHARED <= set(names), SHARED - set(names)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_imported_package_has_its_api_and_the_decoding_methods(backend):
    pytest.importorskip({"torch": "torch", "jax": "flax", "tf": "tensorflow"}[backend])
    pkg = importlib.import_module(f"flashcore.{backend}")
    missing = [n for n in pkg.__all__ if not hasattr(pkg, n)]
    assert not missing, missing
    for cls in ("FLASH", "GAU", "TransformerBlock", "LM"):
        for method in ("decode_init", "decode_step", "load_canonical", "to_canonical"):
            assert callable(getattr(getattr(pkg, cls), method, None)), (cls, method)
        assert issubclass(getattr(pkg, cls), pkg.CanonicalModule)
    for method in ("prefill", "generate", "from_pretrained", "hidden_states"):
        assert callable(getattr(pkg.LM, method, None)), method
