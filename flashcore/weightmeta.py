"""The tag every flashcore weight file carries, shared by the native formats of the backends.

A native file (torch, Flax, Keras) stores, next to its tensors, three strings:

    format          "flashcore-<kind>"  (kind: torch, flax, keras)
    format_version  "1"
    config          the flashcore config as JSON (``config.to_dict()``)

so that it can be loaded or converted without guessing, and, optionally, extra strings beside them
(a run checkpoint's ``step``, ``corpus``, ``corpus_sha256``, ``train_loss``), which ``flashcore
convert`` carries from format to format (:func:`extra_of`). This module writes and checks the tag and
names the file in every error (:class:`flashcore.io.WeightFileError`); it imports NumPy only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .config import FlashConfig, LMConfig, TransformerConfig, config_from_dict
from .io import WeightFileError, make_metadata
from .params import check_params

__all__ = [
    "NATIVE_VERSION",
    "make_tag",
    "read_tag",
    "extra_of",
    "config_from_json",
    "check_file_params",
    "common_dtype",
    "to_native",
    "from_native",
]

NATIVE_VERSION = 1

AnyConfig = FlashConfig | TransformerConfig | LMConfig


_TAG_KEYS = ("format", "format_version", "config")


def make_tag(
    kind: str,
    config: AnyConfig,
    extra: dict[str, str] | None = None,
    *,
    reserved: tuple[str, ...] = (),
) -> dict[str, str]:
    """{"format": "flashcore-<kind>", "format_version": "1", "config": JSON, **extra} for a native
    file. ``reserved``: the container's own keys (e.g. ``state_dict``), which ``extra`` must not
    use (ValueError)."""
    clash = sorted(set(extra or {}) & set(reserved))
    if clash:
        raise ValueError(f"extra metadata keys {clash} are reserved in a flashcore-{kind} file")
    tag = make_metadata(config, extra)  # the canonical file's, with this format's name and version
    return {**tag, "format": f"flashcore-{kind}", "format_version": str(NATIVE_VERSION)}


def extra_of(tag: dict, *, reserved: tuple[str, ...] = ()) -> dict[str, str]:
    """The extra strings of a file's tag: everything but format, format_version, config and the
    container's ``reserved`` keys (values given back as bytes are decoded)."""
    skip = set(_TAG_KEYS) | set(reserved)
    return {
        k: v.decode() if isinstance(v, bytes) else str(v) for k, v in tag.items() if k not in skip
    }


def config_from_json(path: str | os.PathLike, text: str) -> AnyConfig:
    """A config from its JSON text; WeightFileError naming ``path`` when unusable."""
    try:
        data = json.loads(text)
        return config_from_dict(data)
    except (ValueError, TypeError, KeyError) as err:
        raise WeightFileError(f"{path}: the stored config is unusable: {err}") from err


def read_tag(path: str | os.PathLike, tag: dict, kind: str) -> AnyConfig:
    """Check a native file's tag (format, version) and return its config.

    ``tag``: the file's stored strings (values may be str or bytes or ints, as the container
    gives them back). Raises WeightFileError naming the file for a foreign, too new or bad file.
    """
    tag = {k: v.decode() if isinstance(v, bytes) else v for k, v in tag.items()}
    want = f"flashcore-{kind}"
    if tag.get("format") != want:
        raise WeightFileError(
            f"{path}: not a flashcore {kind} weight file (format={tag.get('format')!r}, "
            f"expected {want!r})"
        )
    try:
        version = int(tag.get("format_version", ""))
    except (TypeError, ValueError):
        raise WeightFileError(f"{path}: bad format_version {tag.get('format_version')!r}") from None
    if version > NATIVE_VERSION:
        raise WeightFileError(
            f"{path}: written in {want} format version {version}, newer than this flashcore reads "
            f"({NATIVE_VERSION}); upgrade flashcore"
        )
    if not isinstance(tag.get("config"), str):
        raise WeightFileError(f"{path}: no config stored in the file")
    return config_from_json(path, tag["config"])


def check_file_params(path: str | os.PathLike, params: dict, config: AnyConfig) -> None:
    """check_params (exact names, every shape) as WeightFileError naming ``path``."""
    try:
        check_params(params, config)
    except ValueError as err:
        raise WeightFileError(f"{Path(path)}: {err}") from err


def common_dtype(params: dict) -> np.dtype:
    """The one dtype of every array in ``params`` (NumPy dtypes; bfloat16 via ml_dtypes).

    Formats that build a module to write (Keras) need one dtype; mixed dtypes raise ValueError
    listing them rather than being cast silently.
    """
    dtypes = {np.asarray(v).dtype for v in params.values()}
    if len(dtypes) != 1:
        names = sorted(str(d) for d in dtypes)
        raise ValueError(f"weights of mixed dtypes {names}: this format needs a single dtype")
    return dtypes.pop()


def to_native(params: dict, table: dict[str, tuple[str, bool]], transpose) -> dict:
    """Canonical -> native names through a naming table ``{canonical: (native, transpose)}``.

    ``transpose(a)``: the framework's 2-d transpose, applied exactly where the table says so.
    ``params`` must already hold exactly the table's names (check_params).
    """
    return {n: transpose(params[c]) if t else params[c] for c, (n, t) in table.items()}


def from_native(
    path: str | os.PathLike, native: dict, table: dict[str, tuple[str, bool]], transpose
) -> dict:
    """Native -> canonical names through a naming table; the name sets must match exactly.

    Raises WeightFileError naming ``path`` and listing the missing and unexpected native names.
    """
    want = {n for n, _ in table.values()}
    missing = sorted(want - set(native))
    unexpected = sorted(set(native) - want)
    if missing or unexpected:
        raise WeightFileError(
            f"{Path(path)}: tensor names do not match the stored config: "
            f"missing {missing}, unexpected {unexpected}"
        )
    return {c: transpose(native[n]) if t else native[n] for c, (n, t) in table.items()}
