"""The README's quickstart runs as written."""

import re
from pathlib import Path

import pytest


def test_quickstart_block_runs():
    pytest.importorskip("torch", reason="the quickstart ends with the torch namespace")
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## Quickstart\n\n```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {}
    exec(compile(block, "README.md quickstart", "exec"), scope)
    assert tuple(scope["y"].shape) == (2, 1000, 512)
