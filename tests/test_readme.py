"""The README runs as written and stays a product page (at most 250 lines): its quickstarts
(torch, JAX, Keras) run and give the shapes their comments say, its set-up section has exactly
the two commands, and `.ci/run` runs the second."""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_a_product_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; details go to docs/"


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert found, f"README has no '## {title}' section"
    return found.group(1)


def _quickstart(i: int) -> str:
    blocks = re.findall(r"```python\n(.*?)```", _section("Quickstart"), re.S)
    assert len(blocks) == 3, "the quickstart has one block each for torch, JAX and Keras"
    return blocks[i]


def _run(block: str, name: str) -> dict:
    scope: dict = {}
    exec(compile(block, f"README.md quickstart ({name})", "exec"), scope)
    return scope


def test_quickstart_torch():
    pytest.importorskip("torch")
    scope = _run(_quickstart(0), "torch")
    assert tuple(scope["y"].shape) == (2, 1000, 512)
    grads = [p.grad for p in scope["layer"].parameters()]
    assert grads and all(g is not None for g in grads)


def test_quickstart_jax():
    pytest.importorskip("flax")
    scope = _run(_quickstart(1), "jax")
    assert tuple(scope["y"].shape) == (2, 500, 256)
    assert set(scope["grads"]) == set(scope["params"])


def test_quickstart_keras():
    pytest.importorskip("tensorflow")
    pytest.importorskip("keras")
    scope = _run(_quickstart(2), "keras")
    assert tuple(scope["y"].shape) == (4, 500, 256)


def _commands() -> list[str]:
    """The set-up section's commands: the plain ``` blocks whose line starts with pip."""
    blocks = re.findall(r"```\n(.*?)```", _section("Set-up: the two commands"), re.S)
    return [b.strip() for b in blocks if b.startswith("pip ")]


def test_setup_has_the_two_commands():
    main, suite = _commands()  # exactly two: the main job, the whole test suite
    assert main == 'pip install -e ".[all]" && flashcore demo'
    steps = [s.strip() for s in suite.split("&&")]
    assert steps[0] == 'pip install -e ".[all,test]"'
    assert "mkdocs build --strict" in steps  # the documentation site is built in CI
    assert steps[-1].startswith("python -m pytest")


def test_ci_runs_the_readme_test_command():
    suite = _commands()[1]
    lines = [
        ln
        for ln in (ROOT / ".ci" / "run").read_text().splitlines()
        if ln and not ln.startswith(("#", "set ", "cd "))
    ]
    assert [shlex.split(ln) for ln in lines] == [shlex.split(suite)]
