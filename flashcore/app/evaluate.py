"""``flashcore eval`` and ``flashcore generate``: held-out loss and samples of a checkpoint.

    flashcore eval RUN_OR_FILE [--backend torch,jax,tf|all] [--eval-tokens N] [--json]
    flashcore generate RUN_OR_FILE --prompt TEXT [--max-new N] [--temperature T] [--top-k K]

A run folder (``flashcore train --out RUN``) stands for its newest complete checkpoint
(:func:`resolve_model`); a file is any canonical ``model.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from .. import io
from ..config import LMConfig
from . import runstate
from .cli_args import nonneg_int, positive
from .data import DataError, eval_batches, load_corpus
from .engine import BACKENDS, load_engine

__all__ = [
    "evaluate",
    "evaluate_checkpoint",
    "results_table",
    "eval_main",
    "generate_main",
    "resolve_model",
]


def resolve_model(path: Path) -> Path:
    """The weight file a path names: a file itself; for a run folder, its newest complete
    checkpoint's (checked by size), else ``model.safetensors`` in it."""
    path = Path(path)
    if not path.is_dir():
        return path
    ckpt = runstate.latest(path, hashes=False)
    return ckpt.model if ckpt is not None else path / "model.safetensors"


def _run_context(model_path: Path) -> int:
    """The context length of the run that saved ``model_path`` (256 when not known)."""
    state_path = model_path.parent / "train_state.safetensors"
    if state_path.is_file():
        from safetensors import safe_open

        with safe_open(str(state_path), "np") as f:
            return int(json.loads((f.metadata() or {}).get("args", "{}")).get("context", 256))
    try:
        return int(runstate.read_run_info(model_path.parent).get("context", 256))
    except (FileNotFoundError, io.WeightFileError):
        return 256


def evaluate(engine, data: np.ndarray, *, context: int, batch: int, max_tokens: int) -> dict:
    """Held-out loss (nats/token), bits per byte and tokens/s over the first ``max_tokens``."""
    total, count = 0.0, 0
    t0 = time.perf_counter()
    for x, y in eval_batches(data, batch, context, max_tokens):
        s, n = engine.eval_loss(x, y)
        total, count = total + s, count + n
    seconds = time.perf_counter() - t0
    loss = total / count
    return {
        "loss": loss,
        "bits_per_byte": loss / math.log(2),
        "tokens_per_s": count / seconds,
        "tokens": count,
    }


def eval_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="flashcore eval", description="Held-out loss of a checkpoint."
    )
    ap.add_argument("checkpoint", type=Path, help="a run directory or a model.safetensors")
    ap.add_argument("--backend", default="torch", help="comma-separated, or 'all' (installed ones)")
    ap.add_argument("--data", type=Path)
    ap.add_argument("--context", type=positive(int), default=None, help="default: the run's")
    ap.add_argument("--batch", type=positive(int), default=8)
    ap.add_argument("--eval-tokens", type=positive(int), default=32768)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    try:
        results = evaluate_checkpoint(
            args.checkpoint, args.backend, data=args.data, context=args.context, batch=args.batch,
            eval_tokens=args.eval_tokens, bf16=args.bf16,
        )  # fmt: skip
    except (DataError, io.WeightFileError, FileNotFoundError, ValueError, ImportError) as err:
        print(f"flashcore eval: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(results_table(results))
    return 0


def evaluate_checkpoint(path: Path, backends: str, *, data=None, context=None, batch=8,
                        eval_tokens=32768, bf16=False) -> list[dict]:  # fmt: skip
    """Evaluate one checkpoint in each requested backend -> rows of results."""
    model_path = resolve_model(Path(path))
    params, config = io.load(model_path)
    if not isinstance(config, LMConfig):
        raise ValueError(f"{model_path} holds a single layer, not a language model")
    if context is None:
        context = _run_context(model_path)
    corpus = load_corpus(data)
    names = (
        list(BACKENDS)
        if backends == "all"
        else [b.strip() for b in backends.split(",") if b.strip()]
    )
    rows = []
    for name in names:
        try:
            engine = load_engine(name)(config, params, dtype="bfloat16" if bf16 else "float32")
        except ImportError as err:
            if backends == "all":
                rows.append({"backend": name, "error": f"not installed ({err})"})
                continue
            raise
        ev = evaluate(engine, corpus.valid, context=context, batch=batch, max_tokens=eval_tokens)
        rows.append({"backend": name, **ev})
    return rows


def results_table(rows: list[dict]) -> str:
    lines = [f"{'backend':<8} {'loss (nats)':>12} {'bits/byte':>10} {'tokens/s':>10}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['backend']:<8} {r['error']}")
        else:
            lines.append(
                f"{r['backend']:<8} {r['loss']:>12.6f} {r['bits_per_byte']:>10.4f} {r['tokens_per_s']:>10.0f}"
            )
    return "\n".join(lines)


def generate_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="flashcore generate", description="Sample text from a checkpoint."
    )
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--max-new", type=nonneg_int, default=200)
    ap.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    ap.add_argument("--top-k", type=positive(int), default=None)
    ap.add_argument("--backend", choices=BACKENDS, default="torch")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.temperature < 0:
        ap.error("--temperature must be >= 0")
    prompt = np.frombuffer(args.prompt.encode(), dtype=np.uint8).astype(np.int64)[None, :]
    if prompt.size == 0:
        ap.error("--prompt must not be empty")
    try:
        params, config = io.load(resolve_model(args.checkpoint))
        engine = load_engine(args.backend)(config, params)
    except (io.WeightFileError, FileNotFoundError, ImportError) as err:
        print(f"flashcore generate: {err}", file=sys.stderr)
        return 2
    out = engine.generate(
        prompt, args.max_new, temperature=args.temperature, top_k=args.top_k, seed=args.seed
    )
    sys.stdout.write(
        bytes(out[0].astype(np.uint8).tolist()).decode("utf-8", errors="replace") + "\n"
    )
    return 0
