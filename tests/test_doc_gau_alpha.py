"""docs/gau-alpha.md runs as written, on a synthetic GAU-alpha folder of the Hub repo's layout
(config.json + pytorch_model.bin + vocab.txt; a 2-layer model from the gau-alpha package's layer
code): its Python blocks in order in one scope, then its shell block through the CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import _gau_alpha as ga  # skips without torch
import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "gau-alpha.md"
FOLDER = "chinese_GAU-alpha-char_L-24_H-768"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    for need in ("jax", "tensorflow", "tokenizers", "transformers"):
        pytest.importorskip(need, reason=f"the page uses {need}")
    monkeypatch.chdir(tmp_path)
    return ga.write_folder(tmp_path / FOLDER, ga.make_port(0, ga.torch.float32))


@pytest.mark.slow
def test_python_blocks_run(folder):
    scope: dict = {}
    blocks = _blocks("python")
    assert len(blocks) == 5
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name} block {i}", "exec"), scope)
    assert len(scope["top_torch"]) == 5 and scope["top_torch"] == scope["top_keras"]
    assert scope["params"]["embed.weight"].shape == (50, 32)
    assert (folder.parent / "gau-alpha-flashcore" / "config.json").is_file()


def test_shell_block_runs(folder):
    from flashcore.app.cli import main

    (block,) = _blocks("sh")
    for line in block.strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == "flashcore"
        assert main(argv[1:]) == 0, line
    import flashcore.torch

    lm = flashcore.torch.LM.from_pretrained(folder.parent / "gau-alpha-flashcore")
    assert lm.config.type_vocab_size == 2 and not lm.config.block.causal
