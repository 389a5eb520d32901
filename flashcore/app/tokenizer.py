"""Hugging Face ``tokenizers`` files for the language-model job, and ``flashcore tokenize``.

    flashcore tokenize SRC --vocab-size N --out DIR [--holdout 0.05] [--min-frequency 2] [--force]

trains a byte-level BPE (the ``tokenizers`` library's ``BpeTrainer``, GPT-2's byte-level
pre-tokenizer and decoder, one special token ``<|endoftext|>`` = id 0) on the train split of the
text file or folder SRC (the held-out files never reach the trainer), encodes both splits and
writes ``DIR/tokenizer.json``, ``train.bin``, ``val.bin`` and ``meta.json`` (formats:
:mod:`flashcore.app.tokens`, docs/data.md). Everything is written into a hidden sibling folder
and renamed to DIR at the end: an error leaves no DIR, or the old one untouched.

Text through a tokenizer (``flashcore train --data TEXT --tokenizer tokenizer.json``,
:func:`load_text_corpus`): every file is decoded as UTF-8 (a file that is not is refused by name),
encoded without the tokenizer's own special tokens, and the documents are joined by its
``<|endoftext|>`` id when it has one (else run together).

The ``tokenizers`` library is the ``text`` extra (``pip install 'flashcore[text]'``); token-id
arrays (``.bin`` / ``.npy``) need no tokenizer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from .cli_args import positive
from .data import Corpus, DataError, read_documents
from .runstate import file_sha256, fsync_dir, fsync_file

__all__ = [
    "END_OF_TEXT",
    "TOKEN_FILES",
    "require_tokenizers",
    "file_sha256",
    "vocab_size_of",
    "load_tokenizer",
    "encode_documents",
    "encode_text",
    "decode_ids",
    "load_text_corpus",
    "train_bpe",
    "tokenize",
    "tokenize_main",
]

END_OF_TEXT = "<|endoftext|>"
TOKEN_FILES = ("tokenizer.json", "train.bin", "val.bin", "meta.json")  # what tokenize writes


def require_tokenizers():
    """The ``tokenizers`` module, or DataError saying how to install it."""
    try:
        import tokenizers
    except ImportError as err:
        raise DataError(
            f"a tokenizer needs the tokenizers library ({err}): pip install 'flashcore[text]'"
        ) from None
    return tokenizers


def vocab_size_of(tok) -> int:
    """The number of ids a tokenizer can emit (its added tokens included)."""
    return int(tok.get_vocab_size(with_added_tokens=True))


def load_tokenizer(path: str | os.PathLike, *, vocab_size: int | None = None):
    """The ``tokenizers.Tokenizer`` saved at ``path`` (a tokenizer.json). DataError naming the
    file when it is missing or does not parse, or when its size is not ``vocab_size``."""
    path = Path(path)
    tokenizers = require_tokenizers()
    if not path.is_file():
        raise DataError(f"--tokenizer {path}: no such file")
    try:
        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as err:  # the library raises a bare Exception for a bad file
        raise DataError(
            f"{path}: not a Hugging Face tokenizers file (tokenizer.json): {err}"
        ) from None
    if vocab_size is not None and vocab_size_of(tok) != vocab_size:
        raise DataError(
            f"{path}: the tokenizer has {vocab_size_of(tok):,} ids but the vocabulary size is "
            f"{vocab_size:,} (--vocab-size or meta.json)"
        )
    return tok


def encode_documents(tok, texts: list[str]) -> np.ndarray:
    """The documents' ids, joined by the tokenizer's ``<|endoftext|>`` id if it has one ->
    (n,) uint32."""
    sep = tok.token_to_id(END_OF_TEXT)
    parts: list[np.ndarray] = []
    for i, enc in enumerate(tok.encode_batch(texts, add_special_tokens=False)):
        if i and sep is not None:
            parts.append(np.array([sep], np.uint32))
        parts.append(np.asarray(enc.ids, np.uint32))
    return np.concatenate(parts) if parts else np.zeros(0, np.uint32)


def encode_text(tok, text: str) -> np.ndarray:
    """One text's ids (no special tokens added) -> (n,) int64."""
    return np.asarray(tok.encode(text, add_special_tokens=False).ids, np.int64)


def decode_ids(tok, ids) -> str:
    """Text of ids (special tokens dropped)."""
    return tok.decode([int(i) for i in ids])


def _texts(parts: list[tuple[Path, bytes]]) -> list[str]:
    out = []
    for path, data in parts:
        try:
            out.append(data.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise DataError(
                f"{path}: not UTF-8 text (byte {err.start}); a tokenizer reads text: remove "
                "the file, or train on bytes (no --tokenizer)"
            ) from None
    return out


def _text_bytes(parts: list[tuple[Path, bytes]]) -> int:
    return sum(len(d) for _, d in parts)


def load_text_corpus(
    path, tokenizer, holdout: float = 0.05, *, vocab_size: int | None = None
) -> Corpus:
    """The text files at ``path`` (None: the standard library), split as bytes corpora are
    (:func:`flashcore.app.data.read_documents`), encoded by ``tokenizer`` (a tokenizer.json)."""
    tok_path = Path(tokenizer)
    tok = load_tokenizer(tok_path, vocab_size=vocab_size)
    docs = read_documents(path, holdout, text=True)
    train = encode_documents(tok, _texts(docs.train))
    valid = encode_documents(tok, _texts(docs.valid))
    vocab = vocab_size_of(tok)
    digest = hashlib.sha256(train.tobytes() + b"|" + valid.tobytes()).hexdigest()
    return Corpus(
        docs.name, train, valid, docs.files, digest, vocab_size=vocab, kind="text",
        valid_bytes=_text_bytes(docs.valid), tokenizer=tok_path,
        tokenizer_sha256=file_sha256(tok_path),
        sources=(f"{docs.name} (train split)", f"{docs.name} (held-out split)"),
    )  # fmt: skip


def train_bpe(texts: list[str], vocab_size: int, *, min_frequency: int = 2):
    """A byte-level BPE of ``vocab_size`` ids (``<|endoftext|>`` = 0, the 256 byte symbols, then
    merges) trained on ``texts`` with the tokenizers library. Deterministic for given texts."""
    tokenizers = require_tokenizers()
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=len(texts))
    return tok


def _replaceable(out: Path) -> bool:
    """True when ``out`` holds only what tokenize writes (so --force may delete it)."""
    return out.is_dir() and all(p.name in TOKEN_FILES for p in out.iterdir())


def tokenize(
    src, out: Path, vocab_size: int, *, holdout: float = 0.05, min_frequency: int = 2,
    force: bool = False,
) -> dict:  # fmt: skip
    """``flashcore tokenize``: train the BPE on ``src``'s train split, write ``out`` whole (module
    docstring) -> the meta.json written. DataError (nothing written) on bad input."""
    out = Path(out)
    if out.exists() and not force:
        raise DataError(f"--out {out} exists; pass --force to replace it")
    if out.exists() and not _replaceable(out):
        raise DataError(
            f"--out {out}: holds files other than {', '.join(TOKEN_FILES)}; not replacing it"
        )
    if vocab_size < 257:
        raise DataError(
            f"--vocab-size {vocab_size}: a byte-level BPE needs at least 257 ids "
            "(256 bytes and <|endoftext|>)"
        )
    docs = read_documents(src, holdout, text=True)
    train_texts, valid_texts = _texts(docs.train), _texts(docs.valid)
    tok = train_bpe(train_texts, vocab_size, min_frequency=min_frequency)
    if vocab_size_of(tok) != vocab_size:
        raise DataError(
            f"{docs.name}: the text gives only {vocab_size_of(tok):,} ids (no more pairs seen "
            f"{min_frequency}+ times), not --vocab-size {vocab_size:,}; use "
            f"--vocab-size {vocab_size_of(tok)} or less, a lower --min-frequency, or more text"
        )
    dtype = "uint16" if vocab_size <= 1 << 16 else "uint32"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        tok.save(str(tmp / "tokenizer.json"))
        files = {}
        for name, texts, parts in (
            ("train.bin", train_texts, docs.train),
            ("val.bin", valid_texts, docs.valid),
        ):
            ids = encode_documents(tok, texts)
            ids.astype(np.dtype(dtype).newbyteorder("<")).tofile(tmp / name)
            files[name] = {
                "tokens": int(len(ids)),
                "text_bytes": _text_bytes(parts),
                "documents": len(parts),
            }
        meta = {
            "format": "flashcore-tokens",
            "format_version": 1,
            "vocab_size": vocab_size,
            "dtype": dtype,
            "tokenizer": "tokenizer.json",
            "tokenizer_sha256": file_sha256(tmp / "tokenizer.json"),
            "end_of_text_id": tok.token_to_id(END_OF_TEXT),
            "source": docs.name,
            "holdout": holdout,
            "files": files,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        for name in TOKEN_FILES:
            fsync_file(tmp / name)
        if out.exists():
            trash = out.parent / f".{out.name}.trash-{os.getpid()}"
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def tokenize_main(argv: list[str] | None = None) -> int:
    """``flashcore tokenize ARGV`` -> exit code (2: bad input, nothing written)."""
    ap = argparse.ArgumentParser(
        prog="flashcore tokenize",
        description="Train a byte-level BPE on text and write a token corpus (docs/data.md).",
    )
    ap.add_argument("src", type=Path, help="a text file or a folder of text files")
    ap.add_argument("--vocab-size", type=positive(int), required=True, help="ids, >= 257")
    ap.add_argument("--out", type=Path, required=True, help="the folder to write")
    ap.add_argument(
        "--holdout", type=float, default=0.05, help="held-out fraction (by file; default 0.05)"
    )
    ap.add_argument(
        "--min-frequency", type=positive(int), default=2, help="of a pair merged (default 2)"
    )
    ap.add_argument("--force", action="store_true", help="replace an earlier tokenize's --out")
    args = ap.parse_args(argv)
    try:
        meta = tokenize(
            args.src, args.out, args.vocab_size, holdout=args.holdout,
            min_frequency=args.min_frequency, force=args.force,
        )  # fmt: skip
    except DataError as err:
        print(f"flashcore tokenize: {err}", file=sys.stderr)
        return 2
    train, valid = meta["files"]["train.bin"], meta["files"]["val.bin"]
    print(
        f"{args.out}: vocabulary {meta['vocab_size']:,}, train {train['tokens']:,} tokens "
        f"({train['text_bytes'] / max(train['tokens'], 1):.2f} bytes/token), held-out "
        f"{valid['tokens']:,} tokens ({valid['documents']} documents)"
    )
    return 0
