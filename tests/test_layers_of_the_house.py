"""The storeys of the house and the direction of their imports, read from the source with ``ast``
(nothing is imported).

    spec         flashcore.*  (config, params, ops, layers, lm, decode, checks, io, runtime, ...)
    backends     flashcore.torch, flashcore.jax, flashcore.tf
    conformance  flashcore.conformance  (the gate: backends plug adapters into it)
    application  flashcore.app, and flashcore.__main__ (``python -m flashcore``)

The spec imports no framework and nothing above it; a backend imports the spec (and the
conformance adapter base, in its adapter) but never another backend nor the application; the
conformance gate never imports the application. Imports inside functions count, and so does
``importlib.import_module`` with a literal name.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("torch", "jax", "jaxlib", "flax", "optax", "tensorflow", "keras", "triton")
BACKENDS = ("flashcore.torch", "flashcore.jax", "flashcore.tf")


def storey(module: str) -> str:
    """'spec', 'backend', 'conformance' or 'app' for a flashcore module's dotted name."""
    if module == "flashcore.__main__" or _under(module, "flashcore.app"):
        return "app"
    if _under(module, "flashcore.conformance"):
        return "conformance"
    if any(_under(module, b) for b in BACKENDS):
        return "backend"
    return "spec"


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def imported_names(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every absolute module name ``source`` (the text of ``module``) imports."""
    package = module if is_package else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            names.add(prefix)
            names.update(f"{prefix}.{a.name}" for a in node.names)  # a submodule, or a name
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def wrong_way(module: str, imported: str) -> str | None:
    """Why ``module`` importing ``imported`` runs the wrong way, or None when it may."""
    here = storey(module)
    top = imported.split(".")[0]
    if here == "spec":
        if top in FRAMEWORKS:
            return f"the spec imports the framework {top}"
        if top == "flashcore" and storey(imported) != "spec":
            return f"the spec imports the {storey(imported)} storey"
    if here == "backend":
        own = next(b for b in BACKENDS if _under(module, b))
        other = [b for b in BACKENDS if b != own and _under(imported, b)]
        if other:
            return f"a backend imports another backend ({other[0]})"
        if storey(imported) == "app" and top == "flashcore":
            return "a backend imports the application"
        if storey(imported) == "conformance" and top == "flashcore":
            if not module.endswith(".adapter"):
                return "a backend imports the conformance gate outside its adapter"
    if here == "conformance" and top == "flashcore" and storey(imported) == "app":
        return "the conformance gate imports the application"
    return None


def modules() -> list[tuple[str, Path]]:
    """(dotted name, file) of every module in the wheel's packages, from pyproject's package-dir."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    out = []
    for package, folder in tool["package-dir"].items():
        for path in sorted((ROOT / folder).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            out.append((name, path))
    return out


def violations(name: str, source: str, is_package: bool = False) -> list[str]:
    """One line per wrong-way arrow in ``source`` (``from a.b import c`` names a.b and a.b.c:
    reported once)."""
    found = {}
    for imported in sorted(imported_names(source, name, is_package)):
        why = wrong_way(name, imported)
        if why and why not in found:
            found[why] = f"{name} imports {imported}: {why}"
    return list(found.values())


def test_every_storey_is_present():
    seen = {storey(name) for name, _ in modules()}
    assert seen == {"spec", "backend", "conformance", "app"}
    names = {name for name, _ in modules()}
    assert {"flashcore.layers", "flashcore.app.cli", "flashcore.torch.layers"} <= names
    assert {"flashcore.jax.engine", "flashcore.tf.layers", "flashcore.conformance.runner"} <= names


def test_no_import_runs_the_wrong_way():
    bad = [
        v
        for name, path in modules()
        for v in violations(name, path.read_text(), path.stem == "__init__")
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "module, source, why",
    [
        ("flashcore.ops", "import torch\n", "the spec imports the framework torch"),
        ("flashcore.ops", "def f():\n    import jax.numpy as jnp\n", "framework jax"),
        ("flashcore.layers", "from .app import train\n", "the spec imports the app storey"),
        ("flashcore.io", "from flashcore.torch import io\n", "the spec imports the backend"),
        ("flashcore.decode", "from .conformance import golden\n", "the conformance storey"),
        ("flashcore.torch.lm", "from flashcore.jax import functional\n", "another backend"),
        ("flashcore.jax.kernels", "from ..tf.xp import xp\n", "another backend"),
        ("flashcore.tf.engine", "from flashcore.app.engine import BACKENDS\n", "application"),
        ("flashcore.torch", "from ..app import cli\n", "application"),
        ("flashcore.torch.io", "from flashcore.conformance import golden\n", "outside its adapter"),
        ("flashcore.conformance.report", "from ..app import train\n", "imports the application"),
        ("flashcore.params", "import importlib\nimportlib.import_module('keras')\n", "keras"),
    ],
)
def test_a_planted_wrong_way_import_is_caught(module, source, why):
    is_package = module == "flashcore.torch"
    found = violations(module, source, is_package)
    assert len(found) == 1 and why in found[0], found


@pytest.mark.parametrize(
    "module, source",
    [
        ("flashcore.app.train", "import torch\nfrom flashcore.torch import engine\n"),
        ("flashcore.__main__", "from .app.cli import main\n"),
        (
            "flashcore.torch.layers",
            "import torch\nfrom flashcore import decode\nfrom . import kernels\n",
        ),
        ("flashcore.jax.adapter", "from flashcore.conformance.adapters.base import Adapter\n"),
        ("flashcore.conformance.generate", "import torch\nimport flashcore as fc\n"),
        ("flashcore.layers", "from . import ops\nfrom .checks import check_x\nimport numpy\n"),
    ],
)
def test_imports_that_run_downward_pass(module, source):
    assert violations(module, source) == []


def test_a_wrong_way_import_planted_in_a_copy_of_a_real_module_fails():
    """The real flashcore/ops.py with one import added, checked as the suite checks the tree."""
    source = (ROOT / "flashcore" / "ops.py").read_text()
    assert violations("flashcore.ops", source) == []
    planted = source + "\n\ndef _fast(x):\n    from flashcore.torch.xp import xp\n\n    return xp\n"
    found = violations("flashcore.ops", planted)
    assert found and "flashcore.torch" in found[0], found


# -- no import cycles ------------------------------------------------------------------------


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """{module: the modules of ``sources`` it imports}, imports inside functions included.

    sources: {dotted name: (source text, is_package)}. ``from a import b`` is an edge to a.b
    when that is a module of ``sources``, else to a; an edge from a module to the package that
    holds it is left out (Python runs the package first anyway: that is no cycle of ours)."""
    graph = {}
    for name, (source, is_package) in sources.items():
        edges = set()
        for imported in imported_names(source, name, is_package):
            target = imported if imported in sources else imported.rpartition(".")[0]
            if target in sources and target != name and not _under(name, target):
                edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, on, stack, out = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _tree_sources() -> dict[str, tuple[str, bool]]:
    return {name: (path.read_text(), path.stem == "__init__") for name, path in modules()}


def test_no_import_cycles():
    """Not in the spec, the backends or the conformance gate (the application storey is not
    covered yet: flashcore.app.data, tokenizer and tokens import each other)."""
    sources = {k: v for k, v in _tree_sources().items() if storey(k) != "app"}
    found = cycles(import_graph(sources))
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_a_cycle_planted_in_a_function_of_a_copy_of_the_tree_is_caught():
    """The real sources, with one import placed inside a function of flashcore.ops that closes a
    loop (layers imports ops): the cycle test must see it."""
    sources = _tree_sources()
    assert not [c for c in cycles(import_graph(sources)) if "flashcore.ops" in c]
    text, pkg = sources["flashcore.ops"]
    sources["flashcore.ops"] = (text + "\n\ndef _late():\n    from . import layers\n", pkg)
    found = [c for c in cycles(import_graph(sources)) if "flashcore.ops" in c]
    assert found and "flashcore.layers" in found[0], found


@pytest.mark.parametrize(
    "graph, want",
    [
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ],
)
def test_cycles_of_a_fake_module_graph(graph, want):
    assert cycles(graph) == want
