"""Byte-level corpora for the language-model job: the embedded default and user files.

The default corpus needs no download and exists wherever Python does: the standard library's own
``.py`` files (this interpreter's), read as bytes (vocabulary 256), concatenated in sorted path
order with a NUL byte between files. The last ``holdout`` fraction of the files (by a hash of
their relative path, so the split is stable when files are added) is held out for evaluation.

    corpus = load_corpus(None)                 # the standard library
    corpus = load_corpus("notes/")             # every regular file under a folder, or one file
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

__all__ = ["Corpus", "DataError", "load_corpus", "sample_batch", "eval_batches", "VOCAB_SIZE"]

VOCAB_SIZE = 256
SEPARATOR = b"\x00"


class DataError(ValueError):
    """Training data that cannot be used: missing, unreadable, empty or too small."""


@dataclass(frozen=True)
class Corpus:
    """Train and held-out byte streams. train, valid: (n,) uint8."""

    name: str
    train: np.ndarray
    valid: np.ndarray
    files: int
    fingerprint: str  # sha256 of both streams: identifies the data a checkpoint was trained on

    def describe(self) -> str:
        return (
            f"{self.name}: {self.files} files, {len(self.train):,} train bytes, "
            f"{len(self.valid):,} held-out bytes (sha256 {self.fingerprint[:12]})"
        )


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


def load_corpus(path: str | os.PathLike | None = None, holdout: float = 0.05) -> Corpus:
    """The standard library (``path=None``) or the files at ``path``, split into train and held-out.

    A single file is split by bytes (the last ``holdout`` fraction is held out); several files are
    split by file, on a hash of each relative path.
    """
    if not 0.0 < holdout < 1.0:
        raise DataError(f"holdout must be in (0, 1), got {holdout}")
    root, files = _stdlib_files() if path is None else _user_files(Path(path))
    name = "python-stdlib" if path is None else str(path)
    contents = []
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as err:
            raise DataError(f"cannot read {f}: {err}") from err
        if data:
            contents.append((zlib.crc32(str(f.relative_to(root)).encode()) % 10_000, data))
    held = [h < holdout * 10_000 for h, _ in contents]
    if len(contents) > 1 and not any(held):  # a few files: hold out the lowest hash
        held[min(range(len(contents)), key=lambda i: contents[i][0])] = True
    if len(contents) > 1 and all(held):
        held[max(range(len(contents)), key=lambda i: contents[i][0])] = False
    train_parts = [d for (_, d), h in zip(contents, held) if not h]
    valid_parts = [d for (_, d), h in zip(contents, held) if h]
    if len(files) == 1 and (train_parts or valid_parts):
        data = (train_parts + valid_parts)[0]
        cut = int(len(data) * (1 - holdout))
        train_parts, valid_parts = [data[:cut]], [data[cut:]]
    if not train_parts or not valid_parts:
        raise DataError(
            f"{name}: need data for both the train and the held-out split "
            f"({len(train_parts)} train files, {len(valid_parts)} held-out files); add more data"
        )
    train = np.frombuffer(SEPARATOR.join(train_parts), dtype=np.uint8)
    valid = np.frombuffer(SEPARATOR.join(valid_parts), dtype=np.uint8)
    digest = hashlib.sha256(train.tobytes() + b"|" + valid.tobytes()).hexdigest()
    return Corpus(name, train, valid, len(files), digest)


def _check_len(data: np.ndarray, context: int, what: str) -> None:
    if context < 1:
        raise DataError(f"context must be >= 1, got {context}")
    if len(data) < context + 1:
        raise DataError(
            f"the {what} split has {len(data)} bytes, fewer than context + 1 = {context + 1}; "
            "use a shorter --context or more data"
        )


def sample_batch(
    data: np.ndarray, batch: int, context: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random windows. -> inputs, targets: (batch, context) int64, targets = inputs shifted by one."""
    _check_len(data, context, "train")
    starts = rng.integers(0, len(data) - context, size=batch)
    idx = starts[:, None] + np.arange(context + 1)[None, :]
    windows = data[idx].astype(np.int64)  # (batch, context + 1)
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
        rows = np.arange(first, min(first + batch, n))
        idx = rows[:, None] * context + np.arange(context + 1)[None, :]
        windows = data[idx].astype(np.int64)
        yield windows[:, :-1], windows[:, 1:]
