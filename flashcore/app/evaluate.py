"""``flashcore eval`` and ``flashcore generate``: held-out loss and samples of a checkpoint.

    flashcore eval RUN_OR_FILE [--backend torch,jax,tf|all] [--eval-tokens N] [--json]
    flashcore generate RUN_OR_FILE --prompt TEXT [--max-new N] [--temperature T] [--top-k K]
                       [--top-p P] [--backend torch|jax|tf] [--seed S] [--json]

A run folder (``flashcore train --out RUN``) stands for its newest complete checkpoint
(:func:`resolve_model`); a file is any canonical ``model.safetensors``.

A masked LM (``flashcore train --objective mlm``; known by its bidirectional block,
:func:`objective_of`) is scored on masked positions only: the held-out windows are masked as in
training (:func:`flashcore.mlm.mask_tokens`), window ``i`` from its own generator
``default_rng((MLM_EVAL_SEED, i))``, so every evaluation of every backend, at any ``--batch``,
masks the same positions.
It reports masked-position bits per byte; it cannot generate.

``generate`` samples with :func:`flashcore.sampling.sample` (temperature, then top-k, then the
top-p nucleus; temperature 0: greedy) through the backend engine's decoder, the one
:func:`flashcore.decode.decode_method` names for the run (FLASH's state, a key/value cache, or
the forward rerun per token). It prints the prompt and its continuation as text (bytes that are
not UTF-8 shown as U+FFFD), or with ``--json`` the token ids too.

Both keep the backend's compiled programs in a persistent cache between runs (jax's and TF's
XLA compilation caches; ``$FLASHCORE_COMPILE_CACHE`` places it or, set to ``off``, turns it off;
default ``~/.cache/flashcore/compile``, see :func:`flashcore.app.engine.enable_compile_cache`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from .. import io, mlm
from ..config import LMConfig
from ..decode import decode_method
from . import runstate
from .cli_args import nonneg_int, positive, probability
from .data import DataError, eval_batches, load_corpus
from .engine import BACKENDS, enable_compile_cache, load_engine

__all__ = [
    "evaluate",
    "evaluate_checkpoint",
    "results_table",
    "eval_main",
    "generate_main",
    "resolve_model",
    "objective_of",
    "score_label",
    "MLM_EVAL_SEED",
]

MLM_EVAL_SEED = 16  # the held-out masking's seed: fixed, so evaluations compare


def objective_of(config: LMConfig) -> str:
    """ "clm" for a causal LM, "mlm" for a bidirectional one (which sees its next-byte targets, so
    only the masked-LM score means anything; MLMError if it cannot be one)."""
    if config.block.causal:
        return "clm"
    mlm.check_config(config, mlm.BYTE_MASK_ID)
    return "mlm"


def score_label(objective: str) -> str:
    """What bits/byte measures for an objective (for printed lines)."""
    return "masked-position bits/byte" if objective == "mlm" else "bits/byte"


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


def evaluate(
    engine,
    data: np.ndarray,
    *,
    context: int,
    batch: int,
    max_tokens: int,
    objective: str = "clm",
) -> dict:
    """Held-out loss (nats/token), bits per byte and tokens/s over the first ``max_tokens``.

    tokens/s is the steady rate: the full batches after the first (whose call compiles the
    jitted step in jax and tf, and a short last batch another), the time of the engine's
    ``eval_loss`` calls alone; with a single batch, that batch's time.

    objective "mlm": window ``i`` masked from ``default_rng((MLM_EVAL_SEED, i))``; loss, bits per
    byte and ``tokens`` are over the masked positions only (tokens/s still counts every input)."""
    if objective not in ("clm", "mlm"):
        raise ValueError(f"objective must be clm or mlm, got {objective!r}")
    total, count, seen = 0.0, 0, 0
    timed_tokens, timed_s, all_s = 0, 0.0, 0.0
    for i, (x, y) in enumerate(eval_batches(data, batch, context, max_tokens)):
        t0 = time.perf_counter()
        if objective == "mlm":
            s, n = engine.eval_loss(*_mask_windows(x, first=seen // x.shape[1]))
        else:
            s, n = engine.eval_loss(x, y)
        dt = time.perf_counter() - t0
        all_s += dt
        if i > 0 and x.shape[0] == batch:  # the first call compiles (jax, tf); a short last
            timed_tokens, timed_s = timed_tokens + x.size, timed_s + dt  # batch recompiles
        total, count, seen = total + s, count + n, seen + x.size
    loss = total / count
    if timed_tokens == 0:  # one batch only: its time, compilation included
        timed_tokens, timed_s = seen, all_s
    return {
        "loss": loss,
        "bits_per_byte": loss / math.log(2),
        "tokens_per_s": timed_tokens / timed_s,
        "tokens": count,
        "objective": objective,
    }


def _mask_windows(x: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out windows x: (b, t), the first being window number ``first``, masked each from its
    own seeded generator -> inputs, targets, loss mask: (b, t) each."""
    rows = [
        mlm.mask_tokens(x[i : i + 1], np.random.default_rng((MLM_EVAL_SEED, first + i)))
        for i in range(len(x))
    ]
    return tuple(np.concatenate(parts) for parts in zip(*rows))


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
    objective = objective_of(config)
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
            enable_compile_cache(name)
            engine_class = load_engine(name)
            engine = engine_class(config, params, dtype="bfloat16" if bf16 else "float32")
        except ImportError as err:
            if backends == "all":
                rows.append({"backend": name, "error": f"not installed ({err})"})
                continue
            raise
        ev = evaluate(
            engine,
            corpus.valid,
            context=context,
            batch=batch,
            max_tokens=eval_tokens,
            objective=objective,
        )
        rows.append({"backend": name, **ev})
    return rows


def results_table(rows: list[dict]) -> str:
    """A printable table of :func:`evaluate_checkpoint`'s rows (a masked LM's says so)."""
    lines = [f"{'backend':<8} {'loss (nats)':>12} {'bits/byte':>10} {'tokens/s':>10}"]
    if any(r.get("objective") == "mlm" for r in rows):
        lines.insert(0, "masked LM: loss and bits/byte at the masked positions only")
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
    ap.add_argument("--top-k", type=positive(int), default=None, help="keep the K likeliest")
    ap.add_argument(
        "--top-p", type=probability, default=None,
        help="keep the likeliest tokens whose probability sums to P, 0 < P <= 1 (nucleus)",
    )  # fmt: skip
    ap.add_argument("--backend", choices=BACKENDS, default="torch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--json", action="store_true",
        help="print {backend, decoder, prompt_tokens, new_tokens, text, seconds, new_tokens_per_s} as JSON",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.temperature < 0:
        ap.error("--temperature must be >= 0")
    prompt = np.frombuffer(args.prompt.encode(), dtype=np.uint8).astype(np.int64)[None, :]
    if prompt.size == 0:
        ap.error("--prompt must not be empty")
    try:
        params, config = io.load(resolve_model(args.checkpoint))
        if isinstance(config, LMConfig) and not config.block.causal:
            raise mlm.MLMError(
                f"{args.checkpoint} is a masked (bidirectional) LM, trained with --objective mlm: "
                "it predicts masked bytes, not the next one, and cannot generate text"
            )
        enable_compile_cache(args.backend)  # before the import: TF reads its flag once
        engine_class = load_engine(args.backend)
        engine = engine_class(config, params)
    except (io.WeightFileError, FileNotFoundError, ImportError, mlm.MLMError) as err:
        print(f"flashcore generate: {err}", file=sys.stderr)
        return 2
    opts = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    t0 = time.perf_counter()
    out = engine.generate(prompt, args.max_new, seed=args.seed, **opts)
    seconds = time.perf_counter() - t0
    tokens = out[0].astype(np.int64).tolist()
    text = bytes(out[0].astype(np.uint8).tolist()).decode("utf-8", errors="replace")
    if args.json:
        n = prompt.shape[1]
        report = {
            "backend": args.backend,
            "decoder": decode_method(config),
            "prompt_tokens": tokens[:n],
            "new_tokens": tokens[n:],
            "text": text,
            "seconds": seconds,  # the whole generate call: prompt, new tokens, any compilation
            "new_tokens_per_s": args.max_new / seconds if seconds > 0 else None,
        }
        print(json.dumps(report))
    else:
        sys.stdout.write(text + "\n")
    return 0
