"""The ``flashcore`` command.

flashcore demo                       a short run of the spec on NumPy (the main job's stand-in)
flashcore conformance [...]          the conformance suite as a CI gate (see --help)
flashcore bench --backend B [...]    a backend's benchmark (see flashcore.<B>.bench)
flashcore weights-table              the canonical weight table (docs/weights.md)
flashcore convert SRC DST [...]      convert weights: canonical, torch, flax, keras, flash-pytorch
flashcore export RUN DST [--force]   a train run -> a Hugging Face directory (needs the [hf] extra)
flashcore train / eval / generate    train a byte-level LM, evaluate it, sample from it (see --help)

--verbose (with any command): keep TensorFlow's and absl's start-up log lines (silenced by default)
"""

from __future__ import annotations

import importlib
import sys

from . import benchtable

COMMANDS = {
    "demo": "flashcore.app.demo:main",
    "train": "flashcore.app.train:train_main",
    "eval": "flashcore.app.evaluate:eval_main",
    "generate": "flashcore.app.evaluate:generate_main",
    "quality": "flashcore.app.quality:main",
    "conformance": "flashcore.app.conformance:main",
    "weights-table": "flashcore.params:print_weight_table",
    "convert": "flashcore.app.convert:main",
    "export": "flashcore.app.export:main",
}


def _bench(argv: list[str]) -> int:
    backend = None
    if "--backend" in argv:
        i = argv.index("--backend")
        if i + 1 < len(argv):
            backend = argv[i + 1]
            argv = argv[:i] + argv[i + 2 :]
    if backend not in ("torch", "jax", "tf"):
        print("usage: flashcore bench --backend {torch,jax,tf} [options]", file=sys.stderr)
        return 2
    try:
        importlib.import_module(f"flashcore.{backend}.bench")  # its own dependencies present?
    except ImportError as err:
        print(f"flashcore bench: the {backend} benchmark is not available: {err}", file=sys.stderr)
        return 2
    if backend in benchtable.TABLE_BACKENDS:
        return benchtable.main(backend, argv)
    from . import torchbench  # the torch comparison run around flashcore.torch.bench

    return torchbench.main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" in argv:
        argv.remove("--verbose")
    else:
        from .quiet import quiet_frameworks

        quiet_frameworks()
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "bench":
        return _bench(rest)
    if name not in COMMANDS:
        print(f"flashcore: unknown command {name!r}\n{__doc__}", file=sys.stderr)
        return 2
    module, _, attr = COMMANDS[name].partition(":")
    return int(getattr(importlib.import_module(module), attr)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
