"""Token-id corpora: flat arrays of ids, memory-mapped, checked in one streamed pass.

A token corpus is either

- one file, ``X.bin`` (little-endian uint16 or uint32, no header: what nanoGPT's prepare scripts
  write) or ``X.npy`` (any unsigned or signed integer dtype, 1-D), split deterministically: its
  last ``holdout`` fraction is held out; or
- a folder holding ``train.bin`` (or ``train.npy``) and ``val.bin`` (or ``val.npy``): the two
  splits as they are (what ``flashcore tokenize`` writes).

The vocabulary size comes from ``--vocab-size`` or from ``meta.json`` beside the file(s); when
both are given they must agree. ``meta.json`` (every field but ``vocab_size`` optional)::

    {"format": "flashcore-tokens", "format_version": 1,
     "vocab_size": 1000,                 ids lie in [0, vocab_size)
     "dtype": "uint16",                  of the .bin files: uint16 (the default) or uint32
     "tokenizer": "tokenizer.json",      the tokenizer that made the ids, beside meta.json
     "tokenizer_sha256": "...",          its sha256 (checked when present)
     "end_of_text_id": 0,                the id that separates documents (informative)
     "files": {"train.bin": {"tokens": 12345, "text_bytes": 51234, "documents": 40},
               "val.bin":   {"tokens": 678,   "text_bytes": 2801,  "documents": 2}}}

``files.<name>.tokens`` is checked against the file's length (a truncated file is refused);
``files.<val file>.text_bytes`` (the UTF-8 bytes the held-out ids encode) gives ``flashcore eval``
its bits per byte; without it (a bare ``.bin``, or one file split in two) bits per byte is
reported as unknown rather than guessed.

Every id is checked to lie in ``[0, vocab_size)`` in blocks of :data:`BLOCK` ids (the maximum
and minimum of each block, over the memory map), in the same pass that hashes the data for the
run's fingerprint; nothing but the block in hand is in memory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .data import Corpus, DataError

__all__ = [
    "META",
    "META_FORMAT",
    "TOKEN_SUFFIXES",
    "SPLIT_FILES",
    "BLOCK",
    "is_token_data",
    "read_meta",
    "open_ids",
    "scan_ids",
    "load_token_corpus",
]

META = "meta.json"
META_FORMAT = "flashcore-tokens"
TOKEN_SUFFIXES = (".bin", ".npy")
SPLIT_FILES = {"train": ("train.bin", "train.npy"), "valid": ("val.bin", "val.npy")}
BIN_DTYPES = ("uint16", "uint32")
BLOCK = 1 << 22  # ids per block of the checking pass (8-16 MiB)


def _split_file(folder: Path, split: str) -> Path | None:
    found = [folder / n for n in SPLIT_FILES[split] if (folder / n).is_file()]
    if len(found) > 1:
        raise DataError(f"{folder}: holds both {found[0].name} and {found[1].name}; keep one")
    return found[0] if found else None


def is_token_data(path: Path) -> bool:
    """True for a ``.bin`` / ``.npy`` file, or a folder holding train.bin / .npy and val.bin /
    .npy (such a folder is read as token ids, not as text)."""
    if path.is_file():
        return path.suffix in TOKEN_SUFFIXES
    if path.is_dir():
        return all(any((path / n).is_file() for n in SPLIT_FILES[split]) for split in SPLIT_FILES)
    return False


def read_meta(folder: Path) -> dict | None:
    """``folder/meta.json``, checked (None when there is none)."""
    path = folder / META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not readable JSON: {err}") from err
    if not isinstance(meta, dict):
        raise DataError(f"{path}: must hold a JSON object")
    vocab = meta.get("vocab_size")
    if vocab is not None and (isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1):
        raise DataError(f"{path}: vocab_size must be a whole number >= 1, got {vocab!r}")
    if meta.get("dtype", "uint16") not in BIN_DTYPES:
        raise DataError(f"{path}: dtype must be one of {BIN_DTYPES}, got {meta.get('dtype')!r}")
    if not isinstance(meta.get("files", {}), dict):
        raise DataError(f"{path}: files must be an object {{file name: {{tokens, text_bytes}}}}")
    version = meta.get("format_version", 1)
    if meta.get("format", META_FORMAT) == META_FORMAT and isinstance(version, int) and version > 1:
        raise DataError(f"{path}: format_version {version} is newer than this flashcore reads (1)")
    return meta


def open_ids(path: Path, dtype: str = "uint16") -> np.ndarray:
    """The ids of a ``.bin`` (``dtype``: uint16 or uint32, little-endian) or ``.npy`` file,
    memory-mapped: (n,). DataError naming the file when it is not a whole 1-D integer array."""
    if path.suffix == ".npy":
        try:
            ids = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: not a readable .npy array: {err}") from err
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise DataError(
                f"{path}: must hold a flat (1-D) integer array of token ids, got "
                f"shape {ids.shape} dtype {ids.dtype}"
            )
        return ids
    if dtype not in BIN_DTYPES:
        raise DataError(f"{path}: dtype must be one of {BIN_DTYPES}, got {dtype!r}")
    le = np.dtype(dtype).newbyteorder("<")
    size = path.stat().st_size
    if size % le.itemsize:
        raise DataError(
            f"{path}: {size} bytes is not a whole number of {dtype} ids ({le.itemsize} bytes "
            f"each): a truncated file, or not {dtype} (meta.json's dtype)"
        )
    if size == 0:
        return np.zeros(0, le)
    return np.memmap(path, dtype=le, mode="r")


def scan_ids(ids: np.ndarray, vocab_size: int, source: str) -> str:
    """One pass over ``ids`` (n,) in blocks: DataError naming ``source`` at the first id outside
    [0, vocab_size); -> the sha256 of the ids' bytes and dtype."""
    h = hashlib.sha256(str(ids.dtype.str).encode() + b"|")
    signed = np.issubdtype(ids.dtype, np.signedinteger)
    for first in range(0, len(ids), BLOCK):
        block = np.ascontiguousarray(ids[first : first + BLOCK])
        high, low = int(block.max()), int(block.min()) if signed else 0
        if high >= vocab_size or low < 0:
            at = first + int(np.argmax((block >= vocab_size) | (block < 0)))
            raise DataError(
                f"{source}: token id {int(ids[at])} at position {at:,} is outside the "
                f"vocabulary [0, {vocab_size}) (--vocab-size or meta.json's vocab_size)"
            )
        h.update(memoryview(block).cast("B"))
    return h.hexdigest()


def _vocab(meta: dict | None, meta_path: Path, vocab_size: int | None, where: Path) -> int:
    have = None if meta is None else meta.get("vocab_size")
    if have is not None and vocab_size is not None and have != vocab_size:
        raise DataError(f"--vocab-size {vocab_size} disagrees with {meta_path}'s vocab_size {have}")
    if have is None and vocab_size is None:
        raise DataError(
            f"{where}: token ids need a vocabulary size: pass --vocab-size, or write "
            f'{meta_path} with {{"vocab_size": N}} (docs/data.md)'
        )
    return int(have if have is not None else vocab_size)


def _counted(meta: dict | None, meta_path: Path, path: Path, ids: np.ndarray) -> dict:
    """meta.json's entry for ``path`` (its token count checked against the file)."""
    entry = (meta or {}).get("files", {}).get(path.name, {})
    if not isinstance(entry, dict):
        raise DataError(f"{meta_path}: files.{path.name} must be an object")
    want = entry.get("tokens")
    if want is not None and (isinstance(want, bool) or not isinstance(want, int)):
        raise DataError(f"{meta_path}: files.{path.name}.tokens must be a whole number")
    if want is not None and want != len(ids):
        raise DataError(
            f"{path}: holds {len(ids):,} ids, {meta_path} says {want:,} (a truncated or "
            "replaced file?)"
        )
    return entry


def load_token_corpus(
    path: Path,
    holdout: float = 0.05,
    *,
    vocab_size: int | None = None,
    tokenizer=None,
) -> Corpus:
    """The token corpus at ``path`` (a file or a train/val folder; module docstring), every id
    checked. ``tokenizer``: a tokenizer.json naming what the ids mean (else meta.json's, if
    any); its size must agree with the vocabulary."""
    from .data import _check_holdout
    from .tokenizer import file_sha256, load_tokenizer

    folder = path if path.is_dir() else path.parent
    meta_path = folder / META
    meta = read_meta(folder)
    vocab = _vocab(meta, meta_path, vocab_size, path)
    dtype = (meta or {}).get("dtype", "uint16")
    if path.is_dir():
        train_path, valid_path = _split_file(path, "train"), _split_file(path, "valid")
        train, valid = open_ids(train_path, dtype), open_ids(valid_path, dtype)
        _counted(meta, meta_path, train_path, train)
        text_bytes = _counted(meta, meta_path, valid_path, valid).get("text_bytes")
        sources = (str(train_path), str(valid_path))
        files = 2
    else:
        _check_holdout(holdout)
        ids = open_ids(path, dtype)
        _counted(meta, meta_path, path, ids)
        cut = int(len(ids) * (1 - holdout))
        train, valid, text_bytes, files = ids[:cut], ids[cut:], None, 1
        sources = (f"{path} (first {1 - holdout:g})", f"{path} (last {holdout:g})")
    digests = [scan_ids(a, vocab, s) for a, s in zip((train, valid), sources)]
    fingerprint = hashlib.sha256("|".join(digests).encode()).hexdigest()
    tok_path = None
    if tokenizer is not None:
        tok_path = Path(tokenizer)
    elif meta is not None and meta.get("tokenizer"):
        tok_path = folder / meta["tokenizer"]
    tok_sha = None
    if tok_path is not None:
        load_tokenizer(tok_path, vocab_size=vocab)  # parses, and its size agrees
        tok_sha = file_sha256(tok_path)
        want = (meta or {}).get("tokenizer_sha256")
        if want and tokenizer is None and want != tok_sha:
            raise DataError(
                f"{tok_path}: sha256 {tok_sha[:12]}... but {meta_path} says {want[:12]}...: "
                "the tokenizer was replaced after the ids were written"
            )
    valid_bytes = int(text_bytes) if isinstance(text_bytes, int) and text_bytes > 0 else None
    return Corpus(
        str(path), train, valid, files, fingerprint, vocab_size=vocab, kind="tokens",
        valid_bytes=valid_bytes, tokenizer=tok_path, tokenizer_sha256=tok_sha, sources=sources,
    )  # fmt: skip
