"""Canonical weight files: safetensors with canonical names, the config and a format version.

    save(path, params, config)        -> Path      (atomic: a temporary file renamed into place)
    load(path, config=None)           -> (params, config)
    read_header(path)                 -> metadata dict

Metadata keys: ``format`` = "flashcore", ``format_version`` (an int as a string), ``config`` (the
config as JSON), and any ``extra`` strings the caller adds (e.g. training step). Arrays keep their
dtype, bfloat16 included (through ml_dtypes). A file that is missing, truncated, corrupt, from a
newer format version, or whose tensors do not match its config raises an error that names the file
and the problem; nothing is returned half-loaded.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .config import FlashConfig, LMConfig, TransformerConfig, config_from_dict
from .params import check_params

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "WeightFileError",
    "save",
    "load",
    "read_header",
    "atomic_write",
    "make_metadata",
]

FORMAT = "flashcore"
FORMAT_VERSION = 1

AnyConfig = FlashConfig | TransformerConfig | LMConfig


class WeightFileError(ValueError):
    """A canonical weight file that cannot be used: unreadable, foreign, too new, or mismatched."""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[str], object], *, suffix: str = ".tmp") -> None:
    """Call ``write(tmp)`` on a temporary file in ``path``'s folder, then rename it to ``path``;
    on any failure the temporary file is removed and ``path`` is untouched. ``suffix``: the
    temporary name's ending (for writers that insist on one, e.g. Keras' ``.weights.h5``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have made
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_metadata(config: AnyConfig, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The safetensors metadata of a canonical file: format, format_version, config, ``extra``."""
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(config.to_dict(), sort_keys=True),
    }
    for k, v in (extra or {}).items():
        if k in metadata:
            raise ValueError(f"extra metadata key {k!r} is reserved")
        metadata[k] = str(v)
    return metadata


def save(
    path: str | os.PathLike,
    params: dict[str, np.ndarray],
    config: AnyConfig,
    *,
    extra: dict[str, str] | None = None,
) -> Path:
    """Write ``params`` (canonical names -> NumPy arrays) and ``config`` to ``path``.

    The name set and every shape are checked against the config first; the file appears only
    when complete (written to a temporary file in the same folder, then renamed).
    """
    from safetensors.numpy import save_file

    check_params(params, config)
    path = Path(path)
    metadata = make_metadata(config, extra)
    arrays = {k: np.asarray(v).copy(order="C") for k, v in params.items()}
    atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=metadata))
    return path


def read_header(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a canonical weight file, validated (format and version)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weight file at {path}")
    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
    except Exception as err:
        raise WeightFileError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {err}"
        ) from err
    if meta.get("format") != FORMAT:
        raise WeightFileError(
            f"{path}: not a flashcore canonical weight file (metadata format={meta.get('format')!r}); "
            "convert it with `flashcore convert`"
        )
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise WeightFileError(
            f"{path}: bad format_version {meta.get('format_version')!r}"
        ) from None
    if version > FORMAT_VERSION:
        raise WeightFileError(
            f"{path}: written in format version {version}, newer than this flashcore reads "
            f"({FORMAT_VERSION}); upgrade flashcore"
        )
    return meta


def load(
    path: str | os.PathLike, config: AnyConfig | None = None
) -> tuple[dict[str, np.ndarray], AnyConfig]:
    """Read a canonical weight file -> (params, config).

    When ``config`` is given it must equal the file's. Names and shapes are checked against the
    config before anything is returned.
    """
    from safetensors.numpy import load_file

    path = Path(path)
    meta = read_header(path)
    try:
        stored = config_from_dict(json.loads(meta["config"]))
    except (KeyError, ValueError, TypeError) as err:
        raise WeightFileError(f"{path}: the config in its metadata is unusable: {err}") from err
    if config is not None and config != stored:
        raise WeightFileError(f"{path}: holds weights for {stored!r}, not for {config!r}")
    try:
        params = load_file(str(path))
    except Exception as err:
        raise WeightFileError(f"{path}: tensors unreadable (truncated or corrupt?): {err}") from err
    try:
        check_params(params, stored)
    except ValueError as err:
        raise WeightFileError(f"{path}: {err}") from err
    return params, stored
