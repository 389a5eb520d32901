"""The ``flashcore`` command: one sub-command per entry of :data:`COMMANDS`, whose table is also
what ``flashcore --help`` prints (:func:`usage`).

--verbose (with any command): keep TensorFlow's and absl's start-up log lines (silenced by default)
"""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple


class Command(NamedTuple):
    target: str  # "module:function" taking argv (list[str]) and returning an exit code
    args: str  # what follows the command's name, for the help
    summary: str  # one line: what it does


COMMANDS: dict[str, Command] = {
    "demo": Command(
        "flashcore.app.demo:main",
        "[--steps N]",
        "train a small FLASH LM with torch, evaluate it in every backend",
    ),
    "tokenize": Command(
        "flashcore.app.tokenizer:tokenize_main",
        "SRC --vocab-size N --out DIR",
        "train a byte-level BPE on text, write a token corpus (docs/data.md)",
    ),
    "train": Command(
        "flashcore.app.train:train_main", "[...]", "train an LM on bytes, token ids or text"
    ),
    "eval": Command(
        "flashcore.app.evaluate:eval_main", "CHECKPOINT [...]", "held-out loss of a checkpoint"
    ),
    "generate": Command(
        "flashcore.app.evaluate:generate_main",
        "CHECKPOINT --prompt P [...]",
        "sample text from a checkpoint",
    ),
    "quality": Command(
        "flashcore.app.quality:main",
        "[...]",
        "FLASH vs GAU vs Transformer++ at one size and time budget",
    ),
    "conformance": Command(
        "flashcore.app.conformance:main", "[...]", "the conformance suite as a CI gate"
    ),
    "bench": Command(
        "flashcore.app.bench:main",
        "[--backends B ...] [...]",
        "FLASH's speed in torch, jax, tf against flash-pytorch and Transformer++",
    ),
    "bench-loss": Command(
        "flashcore.app.loss_bench:main",
        "[--backends B,...] [--vocab V,...] [...]",
        "the LM loss's peak memory and time: chunked against each framework's plain path",
    ),
    "bench-remat": Command(
        "flashcore.app.remat_bench:main",
        "[--backends B,...] [--context T] [...]",
        "activation checkpointing's peak memory and time against keeping the activations",
    ),
    "weights-table": Command(
        "flashcore.params:print_weight_table", "", "the canonical weight table (docs/weights.md)"
    ),
    "convert": Command(
        "flashcore.app.convert:main",
        "SRC DST [...]",
        "convert weights: canonical, torch, flax, keras, flash-pytorch",
    ),
    "export": Command(
        "flashcore.app.export:main",
        "RUN DST [--format F] [--force]",
        "a train run -> a Hugging Face folder, or ONNX / StableHLO / SavedModel",
    ),
}


def usage() -> str:
    """The help text: every command of :data:`COMMANDS` with its one-line summary."""
    rows = [(f"flashcore {name} {c.args}".rstrip(), c.summary) for name, c in COMMANDS.items()]
    width = max(len(left) for left, _ in rows) + 2
    lines = ["usage: flashcore COMMAND [options]   (flashcore COMMAND --help for its options)", ""]
    lines += [f"{left:<{width}}{summary}" for left, summary in rows]
    lines += ["", __doc__.strip().splitlines()[-1]]
    return "\n".join(lines)


def framework_backends() -> list[str]:
    """The framework backends (torch, jax, tf): the conformance registry's entries that live in
    ``flashcore.<name>``; installed or not."""
    from flashcore.conformance.adapters import BUILTIN

    return [name for name, target in BUILTIN.items() if target.startswith(f"flashcore.{name}.")]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" in argv:
        argv.remove("--verbose")
    else:
        from .quiet import quiet_frameworks

        quiet_frameworks()
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"flashcore: unknown command {name!r}\n{usage()}", file=sys.stderr)
        return 2
    module, _, attr = COMMANDS[name].target.partition(":")
    return int(getattr(importlib.import_module(module), attr)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
