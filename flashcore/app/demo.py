"""``flashcore demo``: the main job, end to end in a few minutes on a laptop-class CPU.

Trains a small byte-level FLASH language model with the torch backend on the embedded corpus (the
Python standard library's own source), saves it as a canonical checkpoint, evaluates that same file
in every installed backend, and prints one table (backend, held-out loss, bits per byte, tokens/s)
and where the checkpoint went.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import train

DEFAULT = [
    "--arch", "flash", "--dim", "128", "--layers", "4", "--qk-dim", "64", "--chunk", "64",
    "--context", "256", "--batch", "8", "--lr", "3e-3", "--warmup", "20",
    "--eval-every", "0", "--eval-tokens", "16384", "--log-every", "10",
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="flashcore demo", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--out", type=Path, default=None, help="default: runs/demo-<date>-<time>")
    ap.add_argument("--backends", default="all", help="backends to evaluate in (default: all)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.out is None:  # a new folder every run: never touch an earlier run's checkpoint
        args.out = Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    if args.out.exists() and any(args.out.iterdir()):
        print(f"flashcore demo: {args.out} is not empty; pass another --out", file=sys.stderr)
        return 2
    extra = ["--quiet"] if args.quiet else []
    argv = [*DEFAULT, "--steps", str(args.steps), "--out", str(args.out), *extra]
    rc = train.train_main(argv, announce=False)  # the checkpoint line is printed below, once
    if rc:
        return rc
    rows = train.evaluate_checkpoint(args.out, args.backends, eval_tokens=16384)
    print()
    print(train.results_table(rows))
    done = [r for r in rows if "loss" in r]
    if len(done) > 1:
        spread = max(r["loss"] for r in done) - min(r["loss"] for r in done)
        print(f"\nlargest loss difference between backends: {spread:.2e} nats")
    print(f"checkpoint: {(args.out / 'model.safetensors').resolve()}")
    return 0
