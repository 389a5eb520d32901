"""Deployment exports: a layer or an LM as a serving artifact with a dynamic batch and length.

    export(fmt, params, config, dst, inputs=("tokens",), dtype="float32")  -> Path (a folder)
    load(dst)                                                -> Exported: (numpy inputs) -> output

Formats (:data:`FORMATS`): ``onnx`` (traced by ``torch.onnx.export``, run by onnxruntime),
``stablehlo`` (``jax.export``, run by ``jax.export.deserialize``), ``savedmodel`` (the same jax
trace as a TensorFlow SavedModel through ``jax2tf``, run by ``tf.saved_model.load`` / TF
Serving). Each is traced once at a length that is not a multiple of the chunk size C and runs at
any batch b >= 1 and length 1 <= t <= :func:`max_length`: the spec builds every table that
depends on t (RoPE angles, padding to a multiple of C, the causal mask, GAU's T x T bias) in the
graph when t is symbolic (:func:`flashcore._xp.is_static`).

The folder ``dst`` holds the artifact and ``flashcore-export.json`` (format, input names,
dtype, the config); it is written into a temporary folder next to ``dst``, loaded back and run
once, then renamed into place, so a failed export leaves nothing at ``dst``.

The exported computation is :func:`forward`: ``lm_logits`` (tokens (b, t) -> logits (b, t, v))
or the block's function (x (b, t, d) -> (b, t, d)), in inference mode (no dropout), on the named
inputs: ``tokens`` / ``x`` and optionally ``mask`` ((b, t) bool) and ``token_type_ids`` ((b, t)
int64, LMs with token types). Packed sequences (``segment_ids``) are a training input and are not
exported: the NaN containment of packed rows scans in ceil(log2 t) doubling steps, a count that a
symbolic t does not fix (:func:`flashcore.nonfinite.reach`); a server sends one sequence a row.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .config import LMConfig, config_from_dict

__all__ = [
    "FORMATS",
    "Format",
    "ExportError",
    "METADATA",
    "OPTIONAL_INPUTS",
    "NOT_EXPORTED",
    "input_names",
    "max_length",
    "forward",
    "example_inputs",
    "export",
    "load",
    "Exported",
    "staging_folder",
    "unsupported",
    "replace_folder",
]

METADATA = "flashcore-export.json"
OPTIONAL_INPUTS = ("mask", "token_type_ids")
NOT_EXPORTED = {
    "segment_ids": "packed sequences (segment_ids) are a training input; an export takes one "
    "sequence a row (the NaN containment of packed rows scans ceil(log2 t) steps, which a "
    "symbolic t does not fix)",
}


@dataclasses.dataclass(frozen=True)
class Format:
    """A deployment format: the backend functions (``module:function``) that write it
    (``write(params, config, folder, names, dtype, example)``) and load it (``load(folder,
    meta)`` -> a function of the NumPy feeds), the packages it needs and the extra that installs
    them."""

    name: str
    write: str
    load: str
    needs: str
    extra: str
    refuses: str | None = None  # module:function, config -> why the format cannot express it

    def function(self, which: str):
        """The ``write`` or ``load`` function, imported now (ExportError names the extra)."""
        module, _, attr = getattr(self, which).partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError as err:
            raise ExportError(
                f"the {self.name} export needs {self.needs} "
                f"(pip install 'flashcore[{self.extra}]'): {err}"
            ) from err


_JAX = "flashcore.jax.export"
FORMATS: dict[str, Format] = {
    "onnx": Format(
        "onnx",
        "flashcore.torch.export:write_onnx",
        "flashcore.torch.export:load_onnx",
        "torch, onnx, onnxscript and onnxruntime",
        "export",
    ),
    "stablehlo": Format(
        "stablehlo", f"{_JAX}:write_stablehlo", f"{_JAX}:load_stablehlo", "jax", "jax"
    ),
    "savedmodel": Format(
        "savedmodel",
        f"{_JAX}:write_savedmodel",
        f"{_JAX}:load_savedmodel",
        "jax and tensorflow",
        "jax,tf",
        f"{_JAX}:savedmodel_refuses",
    ),
}


class ExportError(ValueError):
    """An export that cannot be done: an unknown format, a missing extra, an existing folder."""


def input_names(config, *, mask: bool = False, token_type_ids: bool = False) -> tuple[str, ...]:
    """The artifact's inputs, in order: ``tokens`` (LM) or ``x`` (layer), then the optional ones
    asked for."""
    lm = isinstance(config, LMConfig)
    if token_type_ids and not (lm and config.type_vocab_size):
        raise ExportError("token_type_ids need an LM with LMConfig.type_vocab_size > 0")
    names = ["tokens" if lm else "x"]
    names += [n for n, on in zip(OPTIONAL_INPUTS, (mask, token_type_ids)) if on]
    return tuple(names)


def max_length(config) -> int:
    """The longest t an export runs at: a learned GAU bias has one weight per offset up to
    ``bias_span``; every other layer is bounded only by the RoPE tables
    (:data:`flashcore.ops.ROPE_MAX_POSITION`)."""
    from .ops import REL_BIASES, ROPE_MAX_POSITION

    block = getattr(config, "block", config)
    if getattr(block, "kind", None) == "gau" and REL_BIASES[block.rel_bias].bounded:
        return block.bias_span
    return ROPE_MAX_POSITION - 1


def forward(params: dict, inputs: dict, *, config, xp):
    """The exported computation on named inputs (see the module doc): (b, t, v) logits or the
    (b, t, d) layer output."""
    from .lm import block_fn, lm_logits

    kw = dict(mask=inputs.get("mask"), xp=xp)
    if isinstance(config, LMConfig):
        types = inputs.get("token_type_ids")
        return lm_logits(params, inputs["tokens"], config=config, token_type_ids=types, **kw)
    return block_fn(config)(params, inputs["x"], config=config, **kw)


def example_inputs(config, names, b: int, t: int, dtype: str = "float32", seed: int = 0) -> dict:
    """NumPy inputs for ``names`` of batch ``b`` and length ``t``: random tokens or x, every
    position real, one segment, token type 0."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in names:
        if name == "tokens":
            out[name] = rng.integers(0, config.vocab_size, (b, t), dtype=np.int64)
        elif name == "x":
            out[name] = rng.standard_normal((b, t, config.dim)).astype(dtype)
        elif name == "mask":
            out[name] = np.ones((b, t), bool)
        else:
            out[name] = np.zeros((b, t), np.int64)
    return out


def trace_length(config) -> int:
    """The length an export is traced at: > 1 and not a multiple of the chunk size (so that no
    branch of the trace takes t = 1 or t = k C for granted)."""
    block = getattr(config, "block", config)
    c = getattr(block, "chunk_size", 4)
    return min(c + 3 if c > 3 else 7, max_length(config))


def unsupported(fmt: str, config) -> str | None:
    """Why the format ``fmt`` cannot express a model of ``config`` (None: it can)."""
    f = _format(fmt)
    return None if f.refuses is None else f.function("refuses")(config)


def _format(fmt: str) -> Format:
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {sorted(FORMATS)}")
    return FORMATS[fmt]


def export(
    fmt: str,
    params: dict,
    config,
    dst: str | os.PathLike,
    *,
    inputs: tuple[str, ...] | None = None,
    dtype: str = "float32",
    force: bool = False,
) -> Path:
    """Write the folder ``dst``: ``params`` (canonical, NumPy) of ``config`` as a ``fmt``
    artifact with the inputs ``inputs`` (default: :func:`input_names` without options) in
    ``dtype`` ('float32' or 'float64'). Returns ``dst``.

    Raises ExportError for an unknown format, a missing extra, an unknown input or dtype, or an
    existing ``dst`` without ``force`` (which replaces it only once the new folder is complete).
    """
    write = _format(fmt).function("write")
    why = unsupported(fmt, config)
    if why:
        raise ExportError(f"the {fmt} export cannot express this model: {why}")
    names = tuple(inputs) if inputs is not None else input_names(config)
    for name in set(names) & set(NOT_EXPORTED):
        raise ExportError(f"input {name!r}: {NOT_EXPORTED[name]}")
    allowed = {input_names(config)[0], *OPTIONAL_INPUTS}
    if not names or set(names) - allowed or names[0] != input_names(config)[0]:
        raise ExportError(f"inputs {names}: the first must be {input_names(config)[0]!r}, the "
                          f"others among {list(OPTIONAL_INPUTS)}")  # fmt: skip
    if dtype not in ("float32", "float64"):
        raise ExportError(f"dtype must be float32 or float64, got {dtype!r}")
    dst = Path(dst)
    tmp = staging_folder(dst, force)
    try:
        t = trace_length(config)
        example = example_inputs(config, names, 2, t, dtype)
        write(params, config, tmp, names, dtype, example)
        meta = {"format": fmt, "inputs": list(names), "dtype": dtype, "config": config.to_dict()}
        (tmp / METADATA).write_text(json.dumps(meta, indent=1, sort_keys=True))
        check = example_inputs(config, names, 1, max(1, t - 2), dtype, seed=1)
        load(tmp)(**check)  # the folder as a reader sees it, at another batch and length
        _sync(tmp)
        replace_folder(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def _sync(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def staging_folder(dst: Path, force: bool) -> Path:
    """A new empty temporary folder beside ``dst`` to write into; ExportError when ``dst``
    exists (without ``force``) or is a file."""
    if (dst.exists() or dst.is_symlink()) and not force:
        raise ExportError(f"{dst} exists; pass --force to replace it")
    if dst.exists() and not dst.is_dir():
        raise ExportError(f"{dst} is a file, not a folder; remove it first")
    dst.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))


def replace_folder(tmp: Path, dst: Path) -> None:
    """Rename the complete folder ``tmp`` to ``dst``; an old ``dst`` goes only once that worked
    (put back if the rename fails)."""
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        os.replace(dst, old / dst.name)
    try:
        os.replace(tmp, dst)
    except BaseException:
        if old is not None:  # put the previous folder back
            os.replace(old / dst.name, dst)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class Exported:
    """A loaded export: ``exported(**inputs)`` with NumPy inputs named as ``inputs`` -> the NumPy
    output. ``format``, ``inputs``, ``dtype`` and ``config`` come from the folder's metadata."""

    def __init__(self, folder: Path, meta: dict, run):
        self.folder, self.format = folder, meta["format"]
        self.inputs, self.dtype = tuple(meta["inputs"]), meta["dtype"]
        self.config = config_from_dict(meta["config"])
        self._run = run

    def __call__(self, **inputs) -> np.ndarray:
        missing = [n for n in self.inputs if n not in inputs]
        unknown = sorted(set(inputs) - set(self.inputs))
        if missing or unknown:
            raise ValueError(f"{self.folder}: the export takes {list(self.inputs)}; "
                             f"missing {missing}, unknown {unknown}")  # fmt: skip
        feeds = {}
        for name in self.inputs:
            a = np.asarray(inputs[name])
            if name == "x":
                a = a.astype(self.dtype)
            elif name == "mask":
                a = a.astype(bool)
            else:
                a = a.astype(np.int64)
            feeds[name] = np.ascontiguousarray(a)
        return np.asarray(self._run(feeds))


def load(folder: str | os.PathLike) -> Exported:
    """The export in ``folder`` (written by :func:`export`), ready to run."""
    folder = Path(folder)
    path = folder / METADATA
    if not path.is_file():
        raise ExportError(f"{folder} is not a flashcore export (no {METADATA})")
    try:
        meta = json.loads(path.read_text())
        fmt = meta["format"]
    except (ValueError, KeyError, TypeError) as err:
        raise ExportError(f"{path}: unreadable export metadata: {err}") from err
    return Exported(folder, meta, _format(fmt).function("load")(folder, meta))
