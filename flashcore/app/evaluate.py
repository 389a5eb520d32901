"""``flashcore eval`` and ``flashcore generate``: held-out loss and samples of a checkpoint.

    flashcore eval RUN_OR_FILE [--backend torch,jax,tf|all] [--eval-tokens N] [--json]
                   [--data PATH] [--tokenizer FILE] [--vocab-size N]
    flashcore generate RUN_OR_FILE --prompt TEXT [--max-new N] [--temperature T] [--top-k K]
                       [--top-p P] [--backend torch|jax|tf] [--seed S] [--json] [--tokenizer FILE]

A run folder (``flashcore train --out RUN``) stands for its newest complete checkpoint
(:func:`resolve_model`); a file is any canonical ``model.safetensors``.

``eval`` reads the run's own data (its ``--data``, ``--vocab-size``, and its tokenizer's copy
``RUN/tokenizer.json``) unless ``--data`` names other data, and reports the loss per token
(nats) and bits per byte: loss / ln 2 x held-out tokens / held-out text bytes (1 byte per token
for bytes; the text bytes of a token corpus from its meta.json; ``null`` / "unknown" when the
data does not say, e.g. a bare ``.bin``). A model trained with a tokenizer encodes ``generate``'s
prompt and decodes its output through that tokenizer (:func:`model_tokenizer`: ``--tokenizer``,
else ``RUN/tokenizer.json``, its sha256 checked against the checkpoint's ``tokenizer_sha256``).

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
from .data import Corpus, DataError, eval_batches, load_corpus
from .engine import BACKENDS, enable_compile_cache, load_engine

__all__ = [
    "evaluate",
    "evaluate_checkpoint",
    "results_table",
    "eval_main",
    "generate_main",
    "resolve_model",
    "objective_of",
    "model_tokenizer",
    "model_tokenizer_file",
    "score_label",
    "MLM_EVAL_SEED",
]

MLM_EVAL_SEED = 16  # the held-out masking's seed: fixed, so evaluations compare


def objective_of(config: LMConfig) -> str:
    """ "clm" for a causal LM, "mlm" for a bidirectional one (which sees its next-byte targets, so
    only the masked-LM score means anything; MLMError if it cannot be one)."""
    if config.block.causal:
        return "clm"
    mlm.check_config(config, config.vocab_size - 1)  # the mask token: the last id
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


def _run_folder(model_path: Path) -> Path:
    """The run folder a weight file belongs to (``RUN/ckpt/step-N/model.safetensors`` -> RUN),
    else the file's folder."""
    parent = model_path.parent
    return parent.parent.parent if parent.parent.name == "ckpt" else parent


def _run_args(model_path: Path) -> dict:
    """The arguments of the run that saved ``model_path`` ({} when not known)."""
    state_path = model_path.parent / "train_state.safetensors"
    if state_path.is_file():
        from safetensors import safe_open

        with safe_open(str(state_path), "np") as f:
            return dict(json.loads((f.metadata() or {}).get("args", "{}")))
    try:
        return runstate.read_run_info(model_path.parent)
    except (FileNotFoundError, io.WeightFileError):
        return {}


def _run_context(model_path: Path) -> int:
    """The context length of the run that saved ``model_path`` (256 when not known)."""
    return int(_run_args(model_path).get("context", 256))


def model_tokenizer(model_path: Path, config: LMConfig, given: Path | None = None):
    """The tokenizer of the model at ``model_path`` (a ``tokenizers.Tokenizer``), or None for a
    byte model: :func:`model_tokenizer_file`, loaded."""
    from .tokenizer import load_tokenizer

    path = model_tokenizer_file(model_path, config, given)
    return None if path is None else load_tokenizer(path)


def model_tokenizer_file(model_path: Path, config: LMConfig, given: Path | None = None):
    """The tokenizer.json of the model at ``model_path``, or None for a byte model. ``given``
    (--tokenizer), else the run's copy ``RUN/tokenizer.json`` (or one beside the file); its sha256
    must be the checkpoint's ``tokenizer_sha256`` and its size the model's vocabulary. DataError
    naming the file otherwise, or when a token model has no tokenizer."""
    from .tokenizer import file_sha256, load_tokenizer, vocab_size_of

    meta = io.read_header(model_path)
    want = meta.get("tokenizer_sha256")
    path = given
    if path is None and want:
        found = [
            p / runstate.TOKENIZER
            for p in (_run_folder(model_path), model_path.parent)
            if (p / runstate.TOKENIZER).is_file()
        ]
        if not found:
            raise DataError(
                f"{model_path} was trained with a tokenizer (sha256 {want[:12]}...) but no "
                f"{runstate.TOKENIZER} is in its run folder; pass --tokenizer FILE"
            )
        path = found[0]
    if path is None:
        if meta.get("data_kind") == "tokens":
            raise DataError(
                f"{model_path} was trained on token ids without a tokenizer; pass --tokenizer "
                "FILE (the tokenizer.json that made the ids) to read and write text"
            )
        return None
    tok = load_tokenizer(path)
    if want and file_sha256(Path(path)) != want:
        raise DataError(
            f"{path}: not the tokenizer {model_path} was trained with (sha256 "
            f"{file_sha256(Path(path))[:12]}..., the checkpoint's {want[:12]}...)"
        )
    extra = 0 if config.block.causal else 1  # a masked LM's mask token
    if vocab_size_of(tok) + extra != config.vocab_size:
        raise DataError(
            f"{path}: the tokenizer has {vocab_size_of(tok):,} ids but {model_path}'s "
            f"vocabulary is {config.vocab_size - extra:,}"
        )
    return Path(path)


def evaluate(
    engine,
    data: np.ndarray,
    *,
    context: int,
    batch: int,
    max_tokens: int,
    objective: str = "clm",
    bytes_per_token: float | None = 1.0,
) -> dict:
    """Held-out loss (nats/token), bits per byte and tokens/s over the first ``max_tokens``.

    bits per byte: loss / ln 2 / ``bytes_per_token`` (the held-out split's text bytes per token:
    1 for bytes); None when ``bytes_per_token`` is None (unknown).

    tokens/s is the steady rate: the full batches after the first (whose call compiles the
    jitted step in jax and tf, and a short last batch another), the time of the engine's
    ``eval_loss`` calls alone; with a single batch, that batch's time.

    objective "mlm": window ``i`` masked from ``default_rng((MLM_EVAL_SEED, i))`` with the
    model's last id as the mask token; loss, bits per byte and ``tokens`` are over the masked
    positions only (tokens/s still counts every input)."""
    if objective not in ("clm", "mlm"):
        raise ValueError(f"objective must be clm or mlm, got {objective!r}")
    vocab = engine.config.vocab_size if objective == "mlm" else None
    total, count, seen = 0.0, 0, 0
    timed_tokens, timed_s, all_s = 0, 0.0, 0.0
    for i, (x, y) in enumerate(eval_batches(data, batch, context, max_tokens)):
        t0 = time.perf_counter()
        if objective == "mlm":
            s, n = engine.eval_loss(*_mask_windows(x, first=seen // x.shape[1], vocab=vocab))
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
        "bits_per_byte": None if bytes_per_token is None else loss / math.log(2) / bytes_per_token,
        "tokens_per_s": timed_tokens / timed_s,
        "tokens": count,
        "objective": objective,
    }


def _mask_windows(
    x: np.ndarray, first: int, vocab: int = mlm.BYTE_MLM_VOCAB
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out windows x: (b, t), the first being window number ``first``, masked each from its
    own seeded generator (mask token ``vocab - 1``) -> inputs, targets, loss mask: (b, t) each."""
    rows = [
        mlm.mask_tokens(
            x[i : i + 1],
            np.random.default_rng((MLM_EVAL_SEED, first + i)),
            mask_id=vocab - 1,
            vocab_size=vocab,
        )  # fmt: skip
        for i in range(len(x))
    ]
    return tuple(np.concatenate(parts) for parts in zip(*rows))


def eval_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="flashcore eval", description="Held-out loss of a checkpoint."
    )
    ap.add_argument("checkpoint", type=Path, help="a run directory or a model.safetensors")
    ap.add_argument("--backend", default="torch", help="comma-separated, or 'all' (installed ones)")
    ap.add_argument("--data", type=Path, help="default: the run's data")
    ap.add_argument(
        "--tokenizer", type=Path, default=None,
        help="encodes --data's text (default: the run's tokenizer.json, for a token model)",
    )  # fmt: skip
    ap.add_argument("--vocab-size", type=positive(int), default=None, help="of --data's token ids")
    ap.add_argument("--context", type=positive(int), default=None, help="default: the run's")
    ap.add_argument("--batch", type=positive(int), default=8)
    ap.add_argument("--eval-tokens", type=positive(int), default=32768)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    try:
        results = evaluate_checkpoint(
            args.checkpoint, args.backend, data=args.data, context=args.context, batch=args.batch,
            eval_tokens=args.eval_tokens, bf16=args.bf16, tokenizer=args.tokenizer,
            vocab_size=args.vocab_size,
        )  # fmt: skip
    except (DataError, io.WeightFileError, FileNotFoundError, ValueError, ImportError) as err:
        print(f"flashcore eval: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(results_table(results))
    return 0


def eval_corpus(
    model_path: Path, config: LMConfig, *, data=None, tokenizer=None, vocab_size=None
) -> Corpus:
    """The held-out data to score the model at ``model_path`` on: ``data`` (else the run's own),
    text encoded by ``tokenizer`` (else the model's, :func:`model_tokenizer`); DataError when its
    vocabulary is not the model's."""
    from .tokens import is_token_data

    own = data is None and tokenizer is None and vocab_size is None
    if own:
        run_args = _run_args(model_path)
        data, vocab_size = run_args.get("data"), run_args.get("vocab_size")
    kind = io.read_header(model_path).get("data_kind", "bytes")
    if tokenizer is None and kind != "bytes" and (data is None or not is_token_data(Path(data))):
        tokenizer = _tokenizer_path(model_path, config)
    try:
        corpus = load_corpus(data, tokenizer=tokenizer, vocab_size=vocab_size)
    except DataError as err:
        if not own:
            raise
        raise DataError(f"the run's data: {err} (--data names other data)") from None
    want = corpus.vocab_size + (not config.block.causal)  # a masked LM's mask token
    if want != config.vocab_size:
        raise DataError(
            f"{corpus.name}: {corpus.vocab_size:,} ids, but the model {model_path} has a "
            f"vocabulary of {config.vocab_size:,}; evaluate it on its own kind of data"
        )
    return corpus


def _tokenizer_path(model_path: Path, config: LMConfig) -> Path:
    """The path of the model's tokenizer copy (checked by :func:`model_tokenizer`)."""
    model_tokenizer(model_path, config)
    for folder in (_run_folder(model_path), model_path.parent):
        if (folder / runstate.TOKENIZER).is_file():
            return folder / runstate.TOKENIZER
    raise DataError(f"{model_path}: no {runstate.TOKENIZER} in its run folder")


def evaluate_checkpoint(path: Path, backends: str, *, data=None, context=None, batch=8,
                        eval_tokens=32768, bf16=False, tokenizer=None,
                        vocab_size=None) -> list[dict]:  # fmt: skip
    """Evaluate one checkpoint in each requested backend -> rows of results (data: the run's
    unless ``data`` / ``tokenizer`` / ``vocab_size`` say otherwise, :func:`eval_corpus`)."""
    model_path = resolve_model(Path(path))
    params, config = io.load(model_path)
    if not isinstance(config, LMConfig):
        raise ValueError(f"{model_path} holds a single layer, not a language model")
    objective = objective_of(config)
    if context is None:
        context = _run_context(model_path)
    corpus = eval_corpus(model_path, config, data=data, tokenizer=tokenizer, vocab_size=vocab_size)
    corpus.check_context(context, train=False)
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
            bytes_per_token=corpus.bytes_per_token,
        )
        rows.append({"backend": name, **ev})
    return rows


def results_table(rows: list[dict]) -> str:
    """A printable table of :func:`evaluate_checkpoint`'s rows (a masked LM's says so)."""
    lines = [f"{'backend':<8} {'nats/token':>12} {'bits/byte':>10} {'tokens/s':>10}"]
    if any(r.get("objective") == "mlm" for r in rows):
        lines.insert(0, "masked LM: loss and bits/byte at the masked positions only")
    for r in rows:
        if "error" in r:
            lines.append(f"{r['backend']:<8} {r['error']}")
        else:
            bpb = r["bits_per_byte"]
            bpb_text = "unknown" if bpb is None else f"{bpb:.4f}"
            lines.append(
                f"{r['backend']:<8} {r['loss']:>12.6f} {bpb_text:>10} {r['tokens_per_s']:>10.0f}"
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
        "--tokenizer", type=Path, default=None,
        help="the tokenizer.json of the model's ids (default: the run's copy)",
    )  # fmt: skip
    ap.add_argument(
        "--json", action="store_true",
        help="print {backend, decoder, prompt_tokens, new_tokens, text, seconds, new_tokens_per_s} as JSON",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.temperature < 0:
        ap.error("--temperature must be >= 0")
    if not args.prompt:
        ap.error("--prompt must not be empty")
    try:
        model_path = resolve_model(args.checkpoint)
        params, config = io.load(model_path)
        if isinstance(config, LMConfig) and not config.block.causal:
            raise mlm.MLMError(
                f"{args.checkpoint} is a masked (bidirectional) LM, trained with --objective mlm: "
                "it predicts masked bytes, not the next one, and cannot generate text"
            )
        tok = model_tokenizer(model_path, config, args.tokenizer)
        if tok is None and config.vocab_size != 256:
            raise DataError(
                f"{model_path} has a vocabulary of {config.vocab_size}, not bytes (256), and no "
                "tokenizer; pass --tokenizer FILE"
            )
        prompt = _encode_prompt(tok, args.prompt)
        if prompt.size == 0:
            raise DataError(f"--prompt {args.prompt!r} encodes to no tokens")
        enable_compile_cache(args.backend)  # before the import: TF reads its flag once
        engine_class = load_engine(args.backend)
        engine = engine_class(config, params)
    except (io.WeightFileError, FileNotFoundError, ImportError, mlm.MLMError, DataError) as err:
        print(f"flashcore generate: {err}", file=sys.stderr)
        return 2
    opts = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    t0 = time.perf_counter()
    out = engine.generate(prompt, args.max_new, seed=args.seed, **opts)
    seconds = time.perf_counter() - t0
    tokens = out[0].astype(np.int64).tolist()
    text = _decode_output(tok, tokens)
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


def _encode_prompt(tok, prompt: str) -> np.ndarray:
    """The prompt's ids (1, n): its UTF-8 bytes, or the tokenizer's ids."""
    if tok is None:
        return np.frombuffer(prompt.encode(), dtype=np.uint8).astype(np.int64)[None, :]
    from .tokenizer import encode_text

    return encode_text(tok, prompt)[None, :]


def _decode_output(tok, tokens: list[int]) -> str:
    """Text of generated ids: bytes (not UTF-8 shown as U+FFFD), or the tokenizer's decoding."""
    if tok is None:
        return bytes(np.asarray(tokens).astype(np.uint8).tolist()).decode("utf-8", errors="replace")
    from .tokenizer import decode_ids

    return decode_ids(tok, tokens)
