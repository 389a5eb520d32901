"""Weight files for the Flax NNX modules: the canonical file and the Flax msgpack file.

    save(path, module)                   Flax file: the native parameter tree + config + tag
    load(path)                           -> a new module (FLASH, GAU, TransformerBlock or LM)
    save_canonical(path, module)         canonical safetensors (flashcore.io; bfloat16 kept)
    load_canonical(path)                 -> a new module
    write_params(path, params, config, *, extra=None)   canonical weights -> Flax file (for
                                         flashcore.app.convert; extra: metadata strings)
    read_params(path)                    Flax file -> (canonical NumPy weights, config)
    read_extra(path)                     Flax file -> its extra metadata strings

The JAX convention used here is Flax's msgpack serialization
(``flax.serialization.msgpack_serialize``), which keeps every dtype bit-exactly, bfloat16
included, and needs no checkpoint manager. The file holds one map: ``format`` =
"flashcore-flax", ``format_version`` = "1", ``config`` (JSON) and ``params``: the modules' native
parameter tree (``nnx.state(module, nnx.Param)`` as nested dicts, list indices as strings, e.g.
``params["layers"]["0"]["uvz"]["kernel"]``), leaves as arrays in their own dtype. Writes are
atomic. JAX without x64 computes in float32: a float64 file loads into float32 modules (the file
itself and ``read_params`` keep float64).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from flax import serialization

import flashcore as fc
from flashcore.io import WeightFileError, atomic_write
from flashcore.io import load as _load_canonical_numpy
from flashcore.io import save as _save_canonical_numpy
from flashcore.weightmeta import (
    check_file_params,
    extra_of,
    from_native,
    make_tag,
    read_tag,
    to_native,
)

from .module import _get, block_class
from .naming import naming_table

__all__ = [
    "save",
    "load",
    "save_canonical",
    "load_canonical",
    "write_params",
    "read_params",
    "read_extra",
]

Config = fc.FlashConfig | fc.TransformerConfig | fc.LMConfig


def _nest(flat: dict[str, np.ndarray]) -> dict:
    """{"a.b.c": x} -> {"a": {"b": {"c": x}}}."""
    out: dict = {}
    for path, value in flat.items():
        *groups, leaf = path.split(".")
        node = out
        for g in groups:
            node = node.setdefault(g, {})
        node[leaf] = value
    return out


def _flatten(tree, prefix: str = "") -> dict:
    """{"a": {"b": {"c": x}}} -> {"a.b.c": x}."""
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out = {}
    for k, v in tree.items():
        out |= _flatten(v, f"{prefix}{k}.")
    return out


def _write(
    path: str | os.PathLike,
    native: dict[str, np.ndarray],
    config: Config,
    extra: dict[str, str] | None = None,
) -> Path:
    path = Path(path)
    tag = make_tag("flax", config, extra, reserved=("params",))
    blob = serialization.msgpack_serialize({**tag, "params": _nest(native)})
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(blob))
    return path


def write_params(
    path: str | os.PathLike, params: dict, config: Config, *, extra: dict[str, str] | None = None
) -> Path:
    """Canonical weights (any arrays; bfloat16 via ml_dtypes) -> a Flax file at ``path``;
    ``extra``: metadata strings stored beside the tag (:func:`read_extra`)."""
    fc.check_params(params, config)
    arrays = {k: np.asarray(v) for k, v in params.items()}
    return _write(path, to_native(arrays, naming_table(config), np.transpose), config, extra)


def save(path: str | os.PathLike, module) -> Path:
    """A flashcore.jax module -> a Flax file (its native parameters, each in its own dtype)."""
    native = {p: np.asarray(_get(module, p)[...]) for p, _ in module.table.values()}
    return _write(path, native, module.config)


def _read_tree(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"no weight file at {path}")
    try:
        tree = serialization.msgpack_restore(path.read_bytes())
    except Exception as err:
        raise WeightFileError(
            f"{path}: not a readable msgpack file (truncated or corrupt?): {err}"
        ) from err
    if not isinstance(tree, dict):
        raise WeightFileError(f"{path}: not a flashcore flax weight file (no map at the top)")
    return tree


def read_extra(path: str | os.PathLike) -> dict[str, str]:
    """A Flax file's extra metadata strings (what ``write_params(extra=...)`` stored; {} if none)."""
    path = Path(path)
    tree = _read_tree(path)
    read_tag(path, {k: v for k, v in tree.items() if k != "params"}, "flax")
    return extra_of(tree, reserved=("params",))


def read_params(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], Config]:
    """A Flax file -> (canonical NumPy weights, each in its stored dtype, config).

    Raises WeightFileError naming the file for a foreign, truncated or mismatched file.
    """
    path = Path(path)
    tree = _read_tree(path)
    config = read_tag(path, {k: v for k, v in tree.items() if k != "params"}, "flax")
    if not isinstance(tree.get("params"), dict):
        raise WeightFileError(f"{path}: no params tree in the file")
    native = {k: np.asarray(v) for k, v in _flatten(tree["params"]).items()}
    params = from_native(path, native, naming_table(config), np.transpose)
    check_file_params(path, params, config)
    return params, config


def load(path: str | os.PathLike):
    """A Flax file -> a new module holding the stored weights (each in its stored dtype)."""
    params, config = read_params(path)
    return block_class(config)(config, params=params)


def save_canonical(path: str | os.PathLike, module) -> Path:
    """A module -> a canonical safetensors file (bfloat16 through ml_dtypes, bit-exact)."""
    params = {k: np.asarray(v) for k, v in module.to_canonical().items()}
    return _save_canonical_numpy(path, params, module.config)


def load_canonical(path: str | os.PathLike):
    """A canonical safetensors file -> a new module in the file's dtypes."""
    params, config = _load_canonical_numpy(path)
    return block_class(config)(config, params=params)
