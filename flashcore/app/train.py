"""``flashcore train``: train a language model into a run folder; ``--resume`` it.

    flashcore train [--arch flash|gau|transformer] [--backend torch|jax|tf] [--steps N] [--out RUN]
                    [--data PATH] [--keep K] [--force] [--bf16] ...   (see --help)
    flashcore train --resume RUN [--steps N] [--backend B] [--eval-every N] ...
    flashcore train --objective mlm ...   (masked LM: a bidirectional block, :mod:`flashcore.mlm`)
    flashcore train --data DIR_OR_BIN [--vocab-size N] ...     (token ids: :mod:`.tokens`)
    flashcore train --data TEXT --tokenizer tokenizer.json ... (text through a tokenizer)

The data (:mod:`flashcore.app.data`, docs/data.md) sets the model's vocabulary: 256 for bytes,
the token corpus' or tokenizer's size otherwise (one more for a masked LM's mask token). A run
with a tokenizer keeps a copy, ``RUN/tokenizer.json``, for ``eval`` and ``generate``; every
checkpoint records the corpus fingerprint and the tokenizer's sha256 (``corpus_sha256``,
``tokenizer_sha256``), and ``--resume`` refuses data or a tokenizer that differ from them.

The run folder (layout: :mod:`flashcore.app.runstate`) holds ``run.json`` (the arguments),
``log.jsonl``, one folder per checkpoint under ``ckpt/`` (weights, AdamW moments, the data
sampler's state; each published whole, the newest ``--keep`` kept) and ``model.safetensors``, the
newest checkpoint's weights, which any backend loads. ``--resume RUN`` continues the same loss
curve from the newest complete checkpoint, whatever moment the run was stopped or killed at.
``--out`` on a folder that holds a run is an error unless ``--force``; a lock file stops a second
process from writing the same run (:mod:`flashcore.app.runlock`).

Data parallel, automatically: under torchrun (``WORLD_SIZE`` > 1) the torch engine trains one
DistributedDataParallel replica per process; the jax engine shards each batch over all the devices
it sees. ``--batch`` is the global batch either way (divisible by the number of workers): every
process draws the same batches, the engine splits them, the loss curve is the single-process one,
and only the main process writes logs and checkpoints (and holds the lock).

    torchrun --standalone --nproc_per_node=2 -m flashcore train --batch 8 ...

``--shard [N]`` shards the parameters and AdamW state, ``--context-parallel N`` splits every
sequence along t (FLASH): :mod:`flashcore.app.scale`, docs/scale-out.md.

``flashcore eval`` and ``flashcore generate`` live in :mod:`flashcore.app.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from .. import io, mlm
from ..config import FlashConfig, LMConfig, TransformerConfig
from ..params import init
from . import progress, runstate, scale
from .cli_args import nonneg_int, positive
from .data import VOCAB_SIZE, Corpus, DataError, load_corpus, sample_batch
from .engine import BACKENDS, OptimConfig, ParallelError, load_engine
from .evaluate import (
    eval_main,
    evaluate,
    evaluate_checkpoint,
    generate_main,
    results_table,
    score_label,
)
from .runlock import RunLock, RunLocked
from .schedule import lr_at
from .tblog import EVENTS_DIR, EventLog

__all__ = [
    "train_main",
    "eval_main",
    "generate_main",
    "build_config",
    "evaluate",
    "evaluate_checkpoint",
    "results_table",
    "lr_at",
    "resume_conflicts",
    "data_metadata",
    "RESUME_MAY_CHANGE",
]

# what --resume may change; every other argument is the run's and must not contradict it
RESUME_MAY_CHANGE = (
    "steps", "stop_after", "backend", "eval_every", "eval_tokens", "log_every", "keep", "quiet",
    "checkpoint_activations",
)  # fmt: skip
_NOT_RUN_ARGS = ("out", "resume", "force", *scale.LAYOUT_ARGS)  # how to start, not what the run is


class ArgumentConflict(ValueError):
    """Arguments that contradict the run being resumed (or each other)."""


def build_config(args: argparse.Namespace, vocab_size: int = VOCAB_SIZE) -> LMConfig:
    """The LMConfig the command-line options describe, for data of ``vocab_size`` ids (256:
    bytes). ``--objective mlm``: a bidirectional block and the vocabulary grown by the mask token
    (id ``vocab_size``; for bytes :data:`flashcore.mlm.BYTE_MLM_VOCAB`)."""
    masked = getattr(args, "objective", "clm") == "mlm"
    causal = not masked
    if args.arch == "transformer":
        block: FlashConfig | TransformerConfig = TransformerConfig(
            dim=args.dim,
            heads=args.heads,
            ffn_dim=getattr(args, "ffn_dim", None),
            causal=causal,
            dropout=args.dropout,
        )
    else:
        block = FlashConfig(
            dim=args.dim,
            kind=args.arch,
            expansion=args.expansion,
            qk_dim=args.qk_dim,
            chunk_size=args.chunk,
            causal=causal,
            max_len=max(args.context, 1),
            rel_bias="learned" if args.arch == "flash" else "t5",
            dropout=args.dropout,
            init=getattr(args, "init", "paper"),  # a run older than --init: the paper's start
        )
    vocab = vocab_size + 1 if masked else vocab_size
    config = LMConfig(block=block, vocab_size=vocab, num_layers=args.layers)
    if masked:
        mlm.check_config(config, vocab_size)
    return config


def train_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="flashcore train", description="Train a language model (bytes or tokens)."
    )
    ap.add_argument("--arch", choices=["flash", "gau", "transformer"], default="flash")
    ap.add_argument(
        "--objective", choices=["clm", "mlm"], default="clm",
        help="clm: next-byte prediction (causal); mlm: BERT-style masked bytes (bidirectional)",
    )  # fmt: skip
    ap.add_argument(
        "--backend", choices=BACKENDS, default=None, help="default: torch, or the run's"
    )
    ap.add_argument("--dim", type=positive(int), default=128)
    ap.add_argument("--layers", type=positive(int), default=4)
    ap.add_argument("--qk-dim", type=positive(int), default=64)
    ap.add_argument("--expansion", type=positive(float), default=2.0)
    ap.add_argument("--chunk", type=positive(int), default=64, help="FLASH chunk size C")
    ap.add_argument("--heads", type=positive(int), default=4, help="Transformer++ heads")
    ap.add_argument(
        "--ffn-dim", type=positive(int), default=None,
        help="Transformer++ SwiGLU width (default: 8/3 dim, rounded up to a multiple of 8)",
    )  # fmt: skip
    ap.add_argument("--context", type=positive(int), default=256)
    ap.add_argument("--batch", type=positive(int), default=8)
    ap.add_argument("--steps", type=positive(int), default=300)
    ap.add_argument("--lr", type=positive(float), default=3e-3)
    ap.add_argument("--warmup", type=nonneg_int, default=30)
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
    ap.add_argument(
        "--init", choices=["uniform", "paper"], default="uniform",
        help="the FLASH / GAU start (FlashConfig.init): uniform (default) starts the relative-bias "
        "weights at n^-1/2 so that relu^2 attention starts alive; paper starts them at 0, where "
        "it can stay dead (docs/init.md)",
    )  # fmt: skip
    ap.add_argument(
        "--rel-bias-init", type=finite_float, default=0.0,
        help="start every relative-position bias weight of the FLASH / GAU layers at this value "
        "instead of --init's (default 0: --init's)",
    )  # fmt: skip
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast / mixed precision")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--data", type=Path,
        help="bytes: a file or folder (default: the Python stdlib); token ids: a .bin / .npy file "
        "or a folder with train.bin and val.bin (flashcore tokenize's); text with --tokenizer",
    )  # fmt: skip
    ap.add_argument(
        "--tokenizer", type=Path, default=None,
        help="a Hugging Face tokenizer.json: encodes --data's text (or names what its ids mean)",
    )  # fmt: skip
    ap.add_argument(
        "--vocab-size", type=positive(int), default=None,
        help="the token ids' vocabulary (default: meta.json's, the tokenizer's, 256 for bytes)",
    )  # fmt: skip
    ap.add_argument("--eval-every", type=nonneg_int, default=100, help="0: only at the end")
    ap.add_argument("--eval-tokens", type=positive(int), default=32768)
    ap.add_argument("--log-every", type=positive(int), default=10)
    ap.add_argument("--out", type=Path, default=Path("runs/latest"))
    ap.add_argument("--resume", type=Path, help="continue the run saved in this folder")
    ap.add_argument(
        "--force", action="store_true", help="replace the run already in --out (it is deleted)"
    )
    ap.add_argument(
        "--keep", type=positive(int), default=2, help="checkpoints kept (newest; default 2)"
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument(
        "--stop-after", type=positive(int), default=None,
        help="stop (and save) after this step, keeping the --steps schedule; resume later",
    )  # fmt: skip
    scale.add_arguments(ap)  # --shard, --context-parallel
    _scale_out_flags(ap)
    return ap


def _scale_out_flags(ap: argparse.ArgumentParser) -> None:
    """Training past one small machine's memory (docs/scale-out.md)."""
    ap.add_argument(
        "--grad-accum", type=positive(int), default=1,
        help="split each step's batch into N micro-batches (forward and backward one after the "
        "other, one optimizer step): the step of the whole batch in 1/N of the activation "
        "memory; N must divide the batch of each data-parallel worker (default 1)",
    )  # fmt: skip
    ap.add_argument(
        "--checkpoint-activations", action="store_true",
        help="recompute each block's activations in the backward pass instead of keeping them "
        "(less memory, more time; the same gradients)",
    )  # fmt: skip


def finite_float(text: str) -> float:
    """argparse type: a finite float."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def initial_params(config: LMConfig, args: argparse.Namespace) -> dict:
    """``flashcore.init(config, seed=args.seed)`` (the start ``config.block.init`` names), with
    every ``*.rel_bias.weight`` set to ``args.rel_bias_init`` when that is not 0 (a run of an
    older version has none: 0)."""
    params = init(config, seed=args.seed)
    start = float(getattr(args, "rel_bias_init", 0.0) or 0.0)
    if start:
        for name, value in params.items():
            if name.endswith(".rel_bias.weight"):
                params[name] = np.full_like(value, start)
    return params


def _given(argv: list[str]) -> dict:
    """The arguments written on the command line (not the defaults), parsed."""
    ap = train_parser()
    for action in ap._actions:
        action.default = argparse.SUPPRESS
    return vars(ap.parse_args(argv))


def _plain(value):
    return str(value) if isinstance(value, Path) else value


def resume_conflicts(given: dict, saved: dict) -> list[str]:
    """Lines ``--arch: the run has flash, you gave gau``, one per given argument that is not in
    :data:`RESUME_MAY_CHANGE` and differs from the run's (``saved``; a missing one: its default)."""
    defaults = vars(train_parser().parse_args([]))
    lines = []
    for key, value in given.items():
        if key in RESUME_MAY_CHANGE or key in _NOT_RUN_ARGS:
            continue
        have = saved.get(key, _plain(defaults.get(key)))
        if _plain(value) != have:
            flag = "--" + key.replace("_", "-")
            lines.append(f"{flag}: the run has {have}, you gave {_plain(value)}")
    return lines


# -- the command -----------------------------------------------------------------------------


def train_main(argv: list[str] | None = None, *, announce: bool = True) -> int:
    """``flashcore train ARGV`` -> exit code (2: a bad argument, file, run folder or lock).
    ``announce``: print where the checkpoint went at the end (the demo prints its own line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = train_parser()
    args = ap.parse_args(argv)
    try:
        return _train(args, _given(argv), ap, announce)
    except (
        DataError, io.WeightFileError, FileNotFoundError, ParallelError, RunLocked,
        ArgumentConflict,
    ) as err:  # fmt: skip
        print(f"flashcore train: {err}", file=sys.stderr)
        return 2


def _resume_args(args, given: dict, ap):
    """-> args merged with the run's, params, config, optimizer state, RunState (None: from
    step 0), the checkpoint, notes to print."""
    run = args.resume
    if args.force:
        raise ArgumentConflict("--force starts a new run and --resume continues one: pass one")
    if "out" in given and Path(given["out"]).resolve() != run.resolve():
        raise ArgumentConflict(f"--resume writes into the run's own folder {run}; drop --out")
    if not run.is_dir():
        raise FileNotFoundError(f"--resume {run}: no such run folder")
    notes: list[str] = []
    ckpt = runstate.latest(run, notes=notes)
    params = opt_state = resume = None
    if ckpt is not None:
        params, config, opt_state, resume = runstate.load_checkpoint(ckpt)
        saved = resume.args
    else:
        try:
            saved = runstate.read_run_info(run)
        except FileNotFoundError:
            raise runstate.RunStateError(
                f"--resume {run}: no run there (no run.json, no complete checkpoint)"
                + "".join(f"\n  {n}" for n in notes)
            ) from None
        notes.append(f"{run}: no complete checkpoint yet; starting the run again from step 0")
    saved = {"init": "paper", **saved}  # a run older than --init started from the paper's start
    conflicts = resume_conflicts(given, saved)
    if conflicts:
        allowed = ", ".join("--" + k.replace("_", "-") for k in RESUME_MAY_CHANGE)
        raise ArgumentConflict(
            f"--resume {run}: arguments that contradict the run (--resume may change only "
            f"{allowed}):\n  " + "\n  ".join(conflicts)
        )
    merged = {**vars(args), **saved}
    for key in RESUME_MAY_CHANGE:
        if key in given:
            merged[key] = given[key]
    merged.update(out=run, resume=run, force=False, quiet=args.quiet)
    merged["stop_after"] = args.stop_after
    merged.update({key: getattr(args, key) for key in scale.LAYOUT_ARGS})  # the command's own
    for key in ("data", "tokenizer"):
        merged[key] = Path(merged[key]) if merged.get(key) else None
    if "steps" not in given:
        merged["steps"] = saved.get("steps", args.steps)
    args = argparse.Namespace(**merged)
    done = resume.step if resume else 0
    if args.steps <= done:
        ap.error(f"--steps {args.steps} must exceed the {done} steps already done")
    corpus = _load_data(args)
    if resume is None:
        config = build_config(args, corpus.vocab_size)
        params = initial_params(config, args)
    else:
        _check_same_data(run, ckpt, config, corpus, getattr(args, "objective", "clm"))
    return args, params, config, opt_state, resume, ckpt, notes, corpus


def _load_data(args) -> Corpus:
    """The run's corpus (``--data``, ``--tokenizer``, ``--vocab-size``), every split checked to
    hold a window of ``--context``."""
    corpus = load_corpus(
        args.data,
        tokenizer=getattr(args, "tokenizer", None),
        vocab_size=getattr(args, "vocab_size", None),
    )
    corpus.check_context(args.context)
    return corpus


def data_metadata(corpus: Corpus) -> dict[str, str]:
    """What a checkpoint records of its data: corpus name and fingerprint, the kind of ids
    (bytes, tokens, text) and, with a tokenizer, its sha256."""
    meta = {"corpus": corpus.name, "corpus_sha256": corpus.fingerprint, "data_kind": corpus.kind}
    if corpus.tokenizer_sha256:
        meta["tokenizer_sha256"] = corpus.tokenizer_sha256
    return meta


def _check_same_data(run: Path, ckpt, config: LMConfig, corpus: Corpus, objective: str) -> None:
    """DataError unless ``corpus`` is the data (and tokenizer) ``ckpt`` was trained on."""
    saved = io.read_header(ckpt.model)
    now = data_metadata(corpus)
    for key, what in (("corpus_sha256", "corpus"), ("tokenizer_sha256", "tokenizer")):
        if saved.get(key, now.get(key)) != now.get(key):  # an older checkpoint without: no check
            raise DataError(
                f"--resume {run}: the {what} differs from the one the run trained on "
                f"({key} {str(saved.get(key))[:12]}... in {ckpt.model}, now "
                f"{str(now.get(key))[:12]}... from {corpus.tokenizer if what == 'tokenizer' else corpus.name}); "
                "resume with the run's data, or start a new run"
            )
    want = corpus.vocab_size + (objective == "mlm")
    if config.vocab_size != want:
        raise DataError(
            f"--resume {run}: the model has a vocabulary of {config.vocab_size} but "
            f"{corpus.name} needs {want}"
        )


def _train(args: argparse.Namespace, given: dict, ap, announce: bool) -> int:
    ckpt, notes = None, []
    if args.resume is not None:
        args, params, config, opt_state, resume, ckpt, notes, corpus = _resume_args(args, given, ap)
    else:
        present = runstate.holds_run(args.out)
        if present and not args.force:
            raise runstate.RunStateError(
                f"{args.out} already holds a run ({', '.join(present)}); continue it with "
                f"--resume {args.out}, or start over there (deleting it) with --force"
            )
        args.backend = args.backend or "torch"
        try:
            build_config(args)  # the options first: a bad one fails before the data is read
        except ValueError as err:
            ap.error(str(err))
        corpus = _load_data(args)
        config = build_config(args, corpus.vocab_size)
        if args.rel_bias_init and args.arch == "transformer":
            ap.error(
                "--rel-bias-init needs --arch flash or gau (Transformer++ has no relative bias)"
            )
        if "init" in given and args.arch == "transformer":
            ap.error("--init needs --arch flash or gau (it chooses their start)")
        params = initial_params(config, args)
        opt_state = resume = None
    scale.check(args)
    engine = load_engine(args.backend)(
        config,
        params,
        dtype="bfloat16" if args.bf16 else "float32",
        optim=OptimConfig(weight_decay=args.weight_decay, grad_clip=args.grad_clip),
        seed=args.seed,
        data_parallel=True,
        **scale.engine_options(args),
        grad_accum=getattr(args, "grad_accum", 1),  # a run older than --grad-accum: 1
        checkpoint_activations=getattr(args, "checkpoint_activations", False),
    )
    lock = RunLock(args.out)
    try:
        if args.batch % engine.workers:
            raise ParallelError(
                f"--batch {args.batch} is the global batch and must be divisible by the "
                f"{engine.workers} data-parallel workers ({engine.workers_note})"
            )
        _check_grad_accum(args, engine)
        if engine.is_main:  # only the main data-parallel worker writes, under the lock
            lock.acquire()
            for text in [*notes, lock.note]:  # at once: a crash below must not swallow them
                if text:
                    progress.note(text)
            _prepare_folder(args, resume, ckpt, progress.note, corpus)
        return _train_loop(args, engine, config, params, opt_state, resume, corpus, announce)
    finally:
        lock.release()
        engine.close()


def _check_grad_accum(args, engine) -> None:
    """ParallelError unless --grad-accum divides each data-parallel worker's rows."""
    n, rows = getattr(args, "grad_accum", 1), args.batch // engine.workers
    if rows % n:
        per = f"each of the {engine.workers} workers has {rows}" if engine.workers > 1 else ""
        raise ParallelError(
            f"--grad-accum {n} must divide the batch of each data-parallel worker: --batch "
            f"{args.batch}{', ' + per if per else ''} rows, not a multiple of {n}"
        )


def _prepare_folder(args, resume, ckpt, say, corpus: Corpus) -> None:
    """Under the lock: a new run's folder (emptied with --force, run.json and the tokenizer's
    copy written), or a resumed run's repaired (leftovers of a killed save removed, the log cut
    back to the checkpoint)."""
    run = args.out
    saved_args = {k: _plain(v) for k, v in vars(args).items()}
    if args.resume is None:
        present = runstate.holds_run(run)
        if present and not args.force:  # appeared since the check: another process's
            raise RunLocked(f"{run}: another process started a run there just now")
        runstate.remove_run(run)
        runstate.write_run_info(run, saved_args)
        if corpus.tokenizer is not None:
            runstate.copy_tokenizer(run, corpus.tokenizer)
        return
    if corpus.tokenizer is not None and not (run / runstate.TOKENIZER).is_file():
        runstate.copy_tokenizer(run, corpus.tokenizer)
    for text in runstate.clean_partials(run):
        say(text)
    now = runstate.latest(run)
    if (now and now.step) != (ckpt and ckpt.step):
        raise RunLocked(f"{run}: another process saved a checkpoint meanwhile; resume again")
    dropped = runstate.trim_log(run, resume.step if resume else 0)
    if dropped:
        say(f"{run / 'log.jsonl'}: dropped {dropped} records after the checkpoint")
    if ckpt is not None:
        runstate.publish_model(run, ckpt)
    if not (run / "run.json").exists():
        runstate.write_run_info(run, saved_args)


def _train_loop(args, engine, config, params, opt_state, resume, corpus, announce) -> int:
    """The steps, logs, evaluations and checkpoints of :func:`_train`, on a ready engine."""
    say = progress.note if engine.is_main else (lambda text: None)
    rng = np.random.default_rng(args.seed)
    start = 0
    if resume is not None:
        engine.load_optimizer_state(opt_state)
        rng.bit_generator.state = resume.rng_state
        start = resume.step
    saved_args = {k: _plain(v) for k, v in vars(args).items()}
    log = (args.out / "log.jsonl" if engine.is_main else Path(os.devnull)).open("a")
    events = EventLog(args.out / EVENTS_DIR if engine.is_main else None, start=start, say=say)
    n_params = sum(v.size for v in params.values())
    parallel = f", data parallel over {engine.workers_note}" if engine.workers_note else ""
    say(
        f"{'resuming' if resume else 'training'} {args.arch} "
        f"{'masked LM' if getattr(args, 'objective', 'clm') == 'mlm' else 'LM'}, "
        f"{n_params:,} parameters, "
        f"backend {args.backend}{parallel}, {'bf16' if args.bf16 else 'fp32'}; "
        f"{corpus.describe()}"
    )
    tokens_per_step = args.batch * args.context
    objective = getattr(args, "objective", "clm")
    t_last, loss = time.perf_counter(), float("nan")
    sched = dict(
        lr=args.lr,
        warmup=args.warmup,
        steps=args.steps,
        schedule=args.schedule,
        min_ratio=args.min_lr_ratio,
    )
    last = min(args.steps, args.stop_after or args.steps)
    quiet = args.quiet or not engine.is_main
    with progress.bar(args.steps, desc="train", quiet=quiet, initial=start, unit="step") as bar:
        for step in range(start + 1, last + 1):
            x, y = sample_batch(corpus.train, args.batch, args.context, rng)
            count = None  # the causal LM counts every position
            if objective == "mlm":  # the same rng: a resumed run masks as it would have
                x, y, count = mlm.mask_tokens(
                    x, rng, mask_id=corpus.vocab_size, vocab_size=corpus.vocab_size + 1
                )
            lr = lr_at(step, **sched)
            loss = engine.train_step(x, y, lr, count)
            bar.update(1)
            if not math.isfinite(loss):
                say(f"step {step}: loss is {loss}; stopping (lower --lr or use fp32)")
                events.close()
                return 1
            if step % args.log_every == 0 or step == last:
                now = time.perf_counter()
                rate = tokens_per_step * min(args.log_every, step - start) / (now - t_last)
                t_last = now
                bar.set_postfix_str(f"loss {loss:.4f}, {rate / 1e3:.1f}k tok/s", refresh=False)
                rec = {"step": step, "loss": loss, "lr": lr, "tokens_per_s": rate}
                norm = getattr(engine, "grad_norm", None)
                if norm is not None and math.isfinite(norm):
                    rec["grad_norm"] = norm
                log.write(json.dumps({**rec, "time": time.time()}) + "\n")
                events.scalars(step, "train", {k: v for k, v in rec.items() if k != "step"})
            if (args.eval_every and step % args.eval_every == 0) or step == last:
                ev = evaluate(
                    engine,
                    corpus.valid,
                    context=args.context,
                    batch=args.batch,
                    max_tokens=args.eval_tokens,
                    objective=objective,
                    bytes_per_token=corpus.bytes_per_token,
                )
                bpb = ev["bits_per_byte"]
                say(
                    f"step {step}: held-out loss {ev['loss']:.4f} nats/token, "
                    f"{'unknown' if bpb is None else f'{bpb:.4f}'} {score_label(objective)}"
                )
                log.write(json.dumps({"step": step, "eval": ev, "time": time.time()}) + "\n")
                log.flush()
                # gathered on every worker (sharded: collectives), written by the main one
                weights, moments = engine.params(), engine.optimizer_state()
                events.scalars(step, "eval", {"loss": ev["loss"], "bits_per_byte": bpb})
                events.flush()
                if engine.is_main:
                    runstate.save_checkpoint(
                        args.out,
                        weights,
                        moments,
                        config,
                        runstate.RunState(step, rng.bit_generator.state, saved_args),
                        model_meta={**data_metadata(corpus), "train_loss": f"{loss:.6f}"},
                        keep=args.keep,
                    )
                t_last = time.perf_counter()
            log.flush()
    log.close()
    events.close()
    if announce:
        say(f"checkpoint: {args.out / 'model.safetensors'}")
    return 0
