"""Corpora for the language-model job: bytes, token-id arrays, and text through a tokenizer.

``--data`` takes three kinds of input (docs/data.md has the formats):

- **bytes** (the default): the standard library's own ``.py`` files (this interpreter's, no
  download), or the files of ``--data FILE_OR_FOLDER``, read as bytes (vocabulary 256),
  concatenated in sorted path order with a NUL byte between files;
- **token ids** (:mod:`flashcore.app.tokens`): a flat ``.bin`` (little-endian uint16 or uint32, as
  nanoGPT's prepare scripts write it) or ``.npy`` array, or a folder holding ``train.bin`` and
  ``val.bin`` (what ``flashcore tokenize`` writes), memory-mapped, never read whole; the vocabulary
  from ``--vocab-size`` or a ``meta.json`` beside the file;
- **text through a tokenizer** (``--tokenizer tokenizer.json``, :mod:`flashcore.app.tokenizer`):
  the files of a text file or folder, each encoded, joined by the tokenizer's end-of-text id.

The held-out split is deterministic: of several files, those whose relative path hashes into the
last ``holdout`` fraction (stable when files are added); of one file, its last ``holdout``
fraction; a token folder's ``val.bin``.

    corpus = load_corpus(None)                 # the standard library, bytes
    corpus = load_corpus("notes/")             # every regular file under a folder, or one file
    corpus = load_corpus("data/owt/")          # train.bin + val.bin (+ meta.json)
    corpus = load_corpus("notes/", tokenizer="tokenizer.json")
    x, y = sample_batch(corpus.train, batch=8, context=512, rng=np.random.default_rng(0))
    for x, y in eval_batches(corpus.valid, batch=8, context=512, max_tokens=65536): ...
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "Corpus",
    "DataError",
    "Documents",
    "load_corpus",
    "read_documents",
    "sample_batch",
    "eval_batches",
    "VOCAB_SIZE",
]

VOCAB_SIZE = 256
SEPARATOR = b"\x00"


class DataError(ValueError):
    """Training data that cannot be used: missing, unreadable, empty, too small or inconsistent
    (the message names the file)."""


@dataclass(frozen=True)
class Corpus:
    """Train and held-out token streams. train, valid: (n,) unsigned ints in [0, vocab_size)
    (uint8 bytes, or a token file's uint16 / uint32, possibly memory-mapped).

    kind: "bytes", "tokens" (a token-id array) or "text" (text through a tokenizer).
    valid_bytes: the text bytes the held-out tokens stand for (bits per byte); None: unknown.
    tokenizer, tokenizer_sha256: the tokenizer.json that made (or, for "tokens", names) the ids.
    sources: what the train and held-out splits are, for messages (file names).
    """

    name: str
    train: np.ndarray
    valid: np.ndarray
    files: int
    fingerprint: str  # sha256 of both streams: identifies the data a checkpoint was trained on
    vocab_size: int = VOCAB_SIZE
    kind: str = "bytes"
    valid_bytes: int | None = None
    tokenizer: Path | None = None
    tokenizer_sha256: str | None = None
    sources: tuple[str, str] = ("train split", "held-out split")

    @property
    def bytes_per_token(self) -> float | None:
        """Held-out text bytes per held-out token (1 for bytes); None when unknown."""
        if self.kind == "bytes":
            return 1.0
        if not self.valid_bytes or not len(self.valid):
            return None
        return self.valid_bytes / len(self.valid)

    def check_context(self, context: int, *, train: bool = True) -> None:
        """DataError naming the file unless the splits (``train``: both, else the held-out one)
        hold at least ``context + 1`` tokens."""
        if train:
            _check_len(self.train, context, "train", self.sources[0])
        _check_len(self.valid, context, "held-out", self.sources[1])

    def describe(self) -> str:
        unit = "bytes" if self.kind == "bytes" else "tokens"
        vocab = "" if self.kind == "bytes" else f", vocabulary {self.vocab_size:,}"
        return (
            f"{self.name}: {self.files} files, {len(self.train):,} train {unit}, "
            f"{len(self.valid):,} held-out {unit}{vocab} (sha256 {self.fingerprint[:12]})"
        )


@dataclass(frozen=True)
class Documents:
    """The files of a corpus, split: train, valid: [(path, content)], in sorted path order."""

    name: str
    files: int
    train: list[tuple[Path, bytes]]
    valid: list[tuple[Path, bytes]]


def _stdlib_files() -> tuple[Path, list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    skip = {"site-packages", "dist-packages", "__pycache__"}
    files = [
        p
        for p in root.rglob("*.py")
        if p.is_file() and not skip.intersection(p.relative_to(root).parts)
    ]
    return root, sorted(files)


def _user_files(path: Path) -> tuple[Path, list[Path]]:
    if not path.exists():
        raise DataError(f"--data {path}: no such file or folder")
    if path.is_file():
        return path.parent, [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(f"--data {path}: the folder holds no files")
    return path, files


def _check_holdout(holdout: float) -> None:
    if not 0.0 < holdout < 1.0:
        raise DataError(f"holdout must be in (0, 1), got {holdout}")


def read_documents(
    path: str | os.PathLike | None = None, holdout: float = 0.05, *, text: bool = False
) -> Documents:
    """The files of the standard library (``path=None``) or at ``path``, split into train and
    held-out: several files by a hash of each relative path, a single file by its last
    ``holdout`` fraction (``text``: the cut moved forward to a UTF-8 character boundary)."""
    _check_holdout(holdout)
    root, files = _stdlib_files() if path is None else _user_files(Path(path))
    name = "python-stdlib" if path is None else str(path)
    contents = []
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as err:
            raise DataError(f"cannot read {f}: {err}") from err
        if data:
            contents.append((zlib.crc32(str(f.relative_to(root)).encode()) % 10_000, f, data))
    held = [h < holdout * 10_000 for h, _, _ in contents]
    if len(contents) > 1 and not any(held):  # a few files: hold out the lowest hash
        held[min(range(len(contents)), key=lambda i: contents[i][0])] = True
    if len(contents) > 1 and all(held):
        held[max(range(len(contents)), key=lambda i: contents[i][0])] = False
    train = [(f, d) for (_, f, d), h in zip(contents, held) if not h]
    valid = [(f, d) for (_, f, d), h in zip(contents, held) if h]
    if len(files) == 1 and contents:
        _, f, data = contents[0]
        cut = int(len(data) * (1 - holdout))
        while text and cut < len(data) and (data[cut] & 0xC0) == 0x80:  # a continuation byte
            cut += 1
        train, valid = [(f, data[:cut])], [(f, data[cut:])]
    if not train or not valid:
        raise DataError(
            f"{name}: need data for both the train and the held-out split "
            f"({len(train)} train files, {len(valid)} held-out files); add more data"
        )
    return Documents(name, len(files), train, valid)


def load_corpus(
    path: str | os.PathLike | None = None,
    holdout: float = 0.05,
    *,
    tokenizer: str | os.PathLike | None = None,
    vocab_size: int | None = None,
) -> Corpus:
    """The corpus at ``path`` (None: the standard library), split into train and held-out.

    A ``.bin`` / ``.npy`` file, or a folder holding ``train.bin`` and ``val.bin`` (or ``.npy``):
    token ids (:func:`flashcore.app.tokens.load_token_corpus`; ``tokenizer`` then names the
    tokenizer of the ids). Else, with ``tokenizer``: the text of the files, encoded
    (:func:`flashcore.app.tokenizer.load_text_corpus`). Else bytes. ``vocab_size``: must agree
    with the data's (its meta.json, its tokenizer, or 256 for bytes).
    """
    from . import tokens

    if path is not None and tokens.is_token_data(Path(path)):
        return tokens.load_token_corpus(
            Path(path), holdout, vocab_size=vocab_size, tokenizer=tokenizer
        )
    if tokenizer is not None:
        from .tokenizer import load_text_corpus

        return load_text_corpus(path, tokenizer, holdout, vocab_size=vocab_size)
    if vocab_size is not None and vocab_size != VOCAB_SIZE:
        raise DataError(
            f"--vocab-size {vocab_size}: {path or 'the standard library'} is read as bytes "
            f"(vocabulary {VOCAB_SIZE}); give token ids (.bin / .npy) or a --tokenizer"
        )
    docs = read_documents(path, holdout)
    train = np.frombuffer(SEPARATOR.join(d for _, d in docs.train), dtype=np.uint8)
    valid = np.frombuffer(SEPARATOR.join(d for _, d in docs.valid), dtype=np.uint8)
    digest = hashlib.sha256(train.tobytes() + b"|" + valid.tobytes()).hexdigest()
    return Corpus(
        docs.name, train, valid, docs.files, digest, valid_bytes=len(valid),
        sources=(f"{docs.name} (train split)", f"{docs.name} (held-out split)"),
    )  # fmt: skip


def _check_len(data: np.ndarray, context: int, what: str, source: str | None = None) -> None:
    if context < 1:
        raise DataError(f"context must be >= 1, got {context}")
    if len(data) < context + 1:
        where = f"{source}: " if source else ""
        raise DataError(
            f"{where}the {what} split has {len(data)} tokens, fewer than context + 1 = "
            f"{context + 1}; use a shorter --context or more data"
        )


def sample_batch(
    data: np.ndarray, batch: int, context: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random windows. -> inputs, targets: (batch, context) int64, targets = inputs shifted by one.

    Only the windows are read (gathered from a memory-mapped array) and converted to int64."""
    _check_len(data, context, "train")
    starts = rng.integers(0, len(data) - context, size=batch)
    windows = np.stack([data[s : s + context + 1] for s in starts]).astype(np.int64)
    return windows[:, :-1], windows[:, 1:]


def eval_batches(
    data: np.ndarray, batch: int, context: int, max_tokens: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Consecutive non-overlapping windows from the start of ``data`` (deterministic), at most
    ``max_tokens`` predicted tokens. Yields inputs, targets: (<= batch, context) int64."""
    _check_len(data, context, "held-out")
    n = (len(data) - 1) // context
    if max_tokens is not None:
        n = max(1, min(n, max_tokens // context))
    for first in range(0, n, batch):
        rows = min(first + batch, n) - first
        span = np.asarray(data[first * context : (first + rows) * context + 1]).astype(np.int64)
        idx = np.arange(rows)[:, None] * context + np.arange(context + 1)[None, :]
        windows = span[idx]  # (rows, context + 1)
        yield windows[:, :-1], windows[:, 1:]
