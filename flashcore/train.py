"""``flashcore train``, ``flashcore eval`` and ``flashcore generate``: byte-level language models.

    flashcore train [--arch flash|gau|transformer] [--backend torch|jax|tf] [--steps N] [--out DIR]
                    [--data PATH] [--resume DIR] [--bf16] ...   (see --help)
    flashcore eval DIR_OR_FILE [--backend torch,jax,tf] [--eval-tokens N]
    flashcore generate DIR_OR_FILE --prompt TEXT [--max-new N] [--temperature T] [--top-k K]

A run directory holds ``model.safetensors`` (canonical weights and config; any backend loads it),
``train_state.safetensors`` (AdamW moments in canonical layout, the step, the data sampler's state
and the run's arguments) and ``log.jsonl``. ``--resume DIR`` continues the same loss curve.

Data parallel, automatically: under torchrun (``WORLD_SIZE`` > 1) the torch engine trains one
DistributedDataParallel replica per process; the jax engine shards each batch over all the devices
it sees. ``--batch`` is the global batch either way (divisible by the number of workers): every
process draws the same batches, the engine splits them, the loss curve is the single-process one,
and only the main process writes logs and checkpoints.

    torchrun --standalone --nproc_per_node=2 -m flashcore train --batch 8 ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import io
from .config import FlashConfig, LMConfig, TransformerConfig
from .data import VOCAB_SIZE, DataError, eval_batches, load_corpus, sample_batch
from .engine import BACKENDS, OptimConfig, ParallelError, load_engine
from .params import init

__all__ = ["train_main", "eval_main", "generate_main", "build_config", "evaluate", "lr_at"]

STATE_FORMAT = "flashcore-train-state"


def lr_at(
    step: int, *, lr: float, warmup: int, steps: int, schedule: str, min_ratio: float
) -> float:
    """Learning rate at ``step`` (1-based): linear warmup, then cosine / linear decay or constant."""
    if warmup and step <= warmup:
        return lr * step / warmup
    if schedule == "constant" or steps <= warmup:
        return lr
    frac = min(1.0, (step - warmup) / max(1, steps - warmup))
    if schedule == "linear":
        return lr * (1.0 - (1.0 - min_ratio) * frac)
    return lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac)))


def build_config(args: argparse.Namespace) -> LMConfig:
    """The LMConfig the command-line options describe."""
    if args.arch == "transformer":
        block: FlashConfig | TransformerConfig = TransformerConfig(
            dim=args.dim, heads=args.heads, causal=True, dropout=args.dropout
        )
    else:
        block = FlashConfig(
            dim=args.dim,
            kind=args.arch,
            expansion=args.expansion,
            qk_dim=args.qk_dim,
            chunk_size=args.chunk,
            causal=True,
            max_len=max(args.context, 1),
            rel_bias="learned" if args.arch == "flash" else "t5",
            dropout=args.dropout,
        )
    return LMConfig(block=block, vocab_size=VOCAB_SIZE, num_layers=args.layers)


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _nonneg_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def train_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="flashcore train", description="Train a byte-level LM.")
    ap.add_argument("--arch", choices=["flash", "gau", "transformer"], default="flash")
    ap.add_argument(
        "--backend", choices=BACKENDS, default=None, help="default: torch, or the run's"
    )
    ap.add_argument("--dim", type=_positive(int), default=128)
    ap.add_argument("--layers", type=_positive(int), default=4)
    ap.add_argument("--qk-dim", type=_positive(int), default=64)
    ap.add_argument("--expansion", type=_positive(float), default=2.0)
    ap.add_argument("--chunk", type=_positive(int), default=64, help="FLASH chunk size C")
    ap.add_argument("--heads", type=_positive(int), default=4, help="Transformer++ heads")
    ap.add_argument("--context", type=_positive(int), default=256)
    ap.add_argument("--batch", type=_positive(int), default=8)
    ap.add_argument("--steps", type=_positive(int), default=300)
    ap.add_argument("--lr", type=_positive(float), default=3e-3)
    ap.add_argument("--warmup", type=_nonneg_int, default=30)
    ap.add_argument("--schedule", choices=["cosine", "linear", "constant"], default="cosine")
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        help="dropout rate p in [0, 1) on the attention weights and each block's output before "
        "its residual (training steps only; see docs/math.md)",
    )
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast / mixed precision")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, help="a text file or folder (default: the Python stdlib)")
    ap.add_argument("--eval-every", type=_nonneg_int, default=100, help="0: only at the end")
    ap.add_argument("--eval-tokens", type=_positive(int), default=32768)
    ap.add_argument("--log-every", type=_positive(int), default=10)
    ap.add_argument("--out", type=Path, default=Path("runs/latest"))
    ap.add_argument("--resume", type=Path, help="continue the run saved in this directory")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument(
        "--stop-after", type=_positive(int), default=None,
        help="stop (and save) after this step, keeping the --steps schedule; resume later",
    )  # fmt: skip
    return ap


# -- progress --------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr (a line per update when stderr is not a terminal)."""

    def __init__(self, total: int, start: int, quiet: bool, muted: bool = False):
        self.total, self.start, self.quiet, self.muted = total, start, quiet or muted, muted
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        if self.quiet:
            return
        done = (step - self.start) / max(1, self.total - self.start)
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (1 - done) if done > 0 else 0.0
        width = 24
        bar = "#" * int(width * step / self.total) + "." * (width - int(width * step / self.total))
        line = (
            f"step {step:>6}/{self.total} [{bar}] loss {loss:.4f} | "
            f"{tokens_per_s / 1e3:7.1f}k tok/s | eta {int(eta) // 60}m{int(eta) % 60:02d}s"
        )
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr)
        sys.stderr.flush()

    def note(self, text: str) -> None:
        if self.muted:  # a data-parallel worker other than the main one
            return
        if self.tty and not self.quiet:
            print(file=sys.stderr)
        print(text, file=sys.stderr)


# -- checkpoints -----------------------------------------------------------------------------


@dataclass
class RunState:
    step: int
    rng_state: dict
    args: dict


def save_run(
    out: Path, engine, config: LMConfig, state: RunState, corpus, train_loss: float
) -> None:
    """model.safetensors then train_state.safetensors, each written atomically; both carry the step."""
    from safetensors.numpy import save_file

    meta = {"step": str(state.step), "corpus": corpus.name, "corpus_sha256": corpus.fingerprint}
    io.save(
        out / "model.safetensors",
        engine.params(),
        config,
        extra={**meta, "train_loss": f"{train_loss:.6f}"},
    )
    opt = {k: np.asarray(v).copy(order="C") for k, v in engine.optimizer_state().items()}
    smeta = {
        "format": STATE_FORMAT,
        "step": str(state.step),
        "rng": json.dumps(state.rng_state),
        "args": json.dumps(state.args),
    }
    io._atomic_write(
        out / "train_state.safetensors", lambda tmp: save_file(opt, tmp, metadata=smeta)
    )


def load_run(directory: Path) -> tuple[dict, LMConfig, dict, RunState]:
    """-> params, config, optimizer state, run state. Errors name the file and the problem."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    model_path, state_path = directory / "model.safetensors", directory / "train_state.safetensors"
    params, config = io.load(model_path)
    if not state_path.is_file():
        raise io.WeightFileError(
            f"{state_path}: missing; cannot resume without the optimizer state"
        )
    try:
        with safe_open(str(state_path), "np") as f:
            meta = f.metadata() or {}
        opt = load_file(str(state_path))
    except Exception as err:
        raise io.WeightFileError(
            f"{state_path}: unreadable (truncated or corrupt?): {err}"
        ) from err
    if meta.get("format") != STATE_FORMAT:
        raise io.WeightFileError(f"{state_path}: not a flashcore training state")
    model_step = io.read_header(model_path).get("step")
    if model_step != meta.get("step"):
        raise io.WeightFileError(
            f"{directory}: model.safetensors is at step {model_step} but train_state.safetensors at "
            f"step {meta.get('step')} (a save was interrupted); resume from a consistent copy"
        )
    state = RunState(int(meta["step"]), json.loads(meta["rng"]), json.loads(meta["args"]))
    return params, config, opt, state


def _resolve_model(path: Path) -> Path:
    return path / "model.safetensors" if path.is_dir() else path


# -- evaluation ------------------------------------------------------------------------------


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


# -- commands --------------------------------------------------------------------------------


def train_main(argv: list[str] | None = None) -> int:
    ap = train_parser()
    args = ap.parse_args(argv)
    try:
        return _train(args, ap)
    except (DataError, io.WeightFileError, FileNotFoundError, ParallelError) as err:
        print(f"flashcore train: {err}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    resume = None
    if args.resume is not None:
        params, config, opt_state, resume = load_run(args.resume)
        saved = dict(resume.args)
        saved.update(
            steps=args.steps,
            out=str(args.resume),
            resume=str(args.resume),
            quiet=args.quiet,
            stop_after=args.stop_after,
        )
        if args.backend is not None:  # a run may move to another backend
            saved["backend"] = args.backend
        args = argparse.Namespace(**{**vars(args), **saved})
        args.out, args.data = Path(args.out), (Path(args.data) if args.data else None)
        if args.steps <= resume.step:
            ap.error(f"--steps {args.steps} must exceed the {resume.step} steps already done")
    else:
        args.backend = args.backend or "torch"
        try:
            config = build_config(args)
        except ValueError as err:
            ap.error(str(err))
        params = init(config, seed=args.seed)
        opt_state = None
    corpus = load_corpus(args.data)
    sample_batch(corpus.train, 1, args.context, np.random.default_rng(0))  # data long enough?
    list(eval_batches(corpus.valid, 1, args.context, args.context))
    engine = load_engine(args.backend)(
        config,
        params,
        dtype="bfloat16" if args.bf16 else "float32",
        optim=OptimConfig(weight_decay=args.weight_decay, grad_clip=args.grad_clip),
        seed=args.seed,
        data_parallel=True,
    )
    try:
        return _train_loop(args, engine, config, params, opt_state, resume, corpus)
    finally:
        engine.close()


def _train_loop(
    args: argparse.Namespace,
    engine,
    config: LMConfig,
    params: dict[str, np.ndarray],
    opt_state: dict[str, np.ndarray] | None,
    resume: RunState | None,
    corpus,
) -> int:
    """The steps, logs, evaluations and checkpoints of :func:`_train`, on a ready engine."""
    if args.batch % engine.workers:
        raise ParallelError(
            f"--batch {args.batch} is the global batch and must be divisible by the "
            f"{engine.workers} data-parallel workers ({engine.workers_note})"
        )
    rng = np.random.default_rng(args.seed)
    start = 0
    if resume is not None:
        engine.load_optimizer_state(opt_state)
        rng.bit_generator.state = resume.rng_state
        start = resume.step
    saved_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    if engine.is_main:  # only the main data-parallel worker writes
        args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "log.jsonl" if engine.is_main else Path(os.devnull)).open("a")
    n_params = sum(v.size for v in params.values())
    progress = Progress(args.steps, start, args.quiet, muted=not engine.is_main)
    parallel = f", data parallel over {engine.workers_note}" if engine.workers > 1 else ""
    progress.note(
        f"{'resuming' if resume else 'training'} {args.arch} LM, {n_params:,} parameters, "
        f"backend {args.backend}{parallel}, {'bf16' if args.bf16 else 'fp32'}; "
        f"{corpus.describe()}"
    )
    tokens_per_step = args.batch * args.context
    t_last, loss = time.perf_counter(), float("nan")
    sched = dict(
        lr=args.lr,
        warmup=args.warmup,
        steps=args.steps,
        schedule=args.schedule,
        min_ratio=args.min_lr_ratio,
    )
    last = min(args.steps, args.stop_after or args.steps)
    for step in range(start + 1, last + 1):
        x, y = sample_batch(corpus.train, args.batch, args.context, rng)
        lr = lr_at(step, **sched)
        loss = engine.train_step(x, y, lr)
        if not math.isfinite(loss):
            progress.note(f"step {step}: loss is {loss}; stopping (lower --lr or use fp32)")
            return 1
        if step % args.log_every == 0 or step == last:
            now = time.perf_counter()
            rate = tokens_per_step * min(args.log_every, step - start) / (now - t_last)
            t_last = now
            progress.update(step, loss, rate)
            log.write(
                json.dumps(
                    {
                        "step": step,
                        "loss": loss,
                        "lr": lr,
                        "tokens_per_s": rate,
                        "time": time.time(),
                    }
                )
                + "\n"
            )
        if (args.eval_every and step % args.eval_every == 0) or step == last:
            ev = evaluate(
                engine,
                corpus.valid,
                context=args.context,
                batch=args.batch,
                max_tokens=args.eval_tokens,
            )
            progress.note(
                f"step {step}: held-out loss {ev['loss']:.4f} nats, {ev['bits_per_byte']:.4f} bits/byte"
            )
            log.write(json.dumps({"step": step, "eval": ev, "time": time.time()}) + "\n")
            if engine.is_main:
                state = RunState(step, rng.bit_generator.state, saved_args)
                save_run(args.out, engine, config, state, corpus, loss)
            t_last = time.perf_counter()
        log.flush()
    log.close()
    progress.note(f"checkpoint: {args.out / 'model.safetensors'}")
    return 0


def eval_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="flashcore eval", description="Held-out loss of a checkpoint."
    )
    ap.add_argument("checkpoint", type=Path, help="a run directory or a model.safetensors")
    ap.add_argument("--backend", default="torch", help="comma-separated, or 'all' (installed ones)")
    ap.add_argument("--data", type=Path)
    ap.add_argument("--context", type=_positive(int), default=None, help="default: the run's")
    ap.add_argument("--batch", type=_positive(int), default=8)
    ap.add_argument("--eval-tokens", type=_positive(int), default=32768)
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
    model_path = _resolve_model(Path(path))
    params, config = io.load(model_path)
    if not isinstance(config, LMConfig):
        raise ValueError(f"{model_path} holds a single layer, not a language model")
    if context is None:
        state_path = model_path.parent / "train_state.safetensors"
        context = 256
        if state_path.is_file():
            from safetensors import safe_open

            with safe_open(str(state_path), "np") as f:
                context = int(
                    json.loads((f.metadata() or {}).get("args", "{}")).get("context", 256)
                )
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
    ap.add_argument("--max-new", type=_nonneg_int, default=200)
    ap.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    ap.add_argument("--top-k", type=_positive(int), default=None)
    ap.add_argument("--backend", choices=BACKENDS, default="torch")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.temperature < 0:
        ap.error("--temperature must be >= 0")
    prompt = np.frombuffer(args.prompt.encode(), dtype=np.uint8).astype(np.int64)[None, :]
    if prompt.size == 0:
        ap.error("--prompt must not be empty")
    try:
        params, config = io.load(_resolve_model(args.checkpoint))
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
