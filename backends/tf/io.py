"""Weight files for the Keras layers: the canonical file and the Keras weights file.

    save(path, layer)                    Keras weights file (``*.weights.h5``) + config + tag
    load(path)                           -> a new layer (FLASH, GAU, TransformerBlock or LM)
    save_canonical(path, layer)          canonical safetensors (flashcore.io; bfloat16 kept)
    load_canonical(path)                 -> a new layer
    write_params(path, params, config, *, extra=None)   canonical weights -> Keras file (for
                                         flashcore.app.convert; extra: metadata strings)
    read_params(path)                    Keras file -> (canonical NumPy weights, config)
    read_extra(path)                     Keras file -> its extra metadata strings

The Keras file is what ``keras.saving.save_weights(layer, path)`` writes (HDF5; Keras stores
variables by creation order under the layer's path and keeps bfloat16), plus three attributes on
the HDF5 root group, which Keras ignores: ``flashcore_format`` = "flashcore-keras",
``flashcore_format_version`` = "1" and ``flashcore_config`` (JSON), and ``flashcore_dtype`` (the
variables' dtype, so the layer is rebuilt in it and nothing is cast), and any extra metadata
strings as ``flashcore_<key>``. Keras insists on the
``.weights.h5`` suffix for reading and writing. Writes are atomic; the attributes are added to the
temporary file before it is renamed into place.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import h5py
import keras
import numpy as np

import flashcore as fc
from flashcore.io import WeightFileError, atomic_write
from flashcore.io import load as _load_canonical_numpy
from flashcore.io import save as _save_canonical_numpy
from flashcore.weightmeta import check_file_params, common_dtype, extra_of, make_tag, read_tag

from .module import block_class

__all__ = [
    "SUFFIX",
    "save",
    "load",
    "save_canonical",
    "load_canonical",
    "write_params",
    "read_params",
    "read_extra",
    "read_checkpoint",
]

SUFFIX = ".weights.h5"
_PREFIX = "flashcore_"

Config = fc.FlashConfig | fc.TransformerConfig | fc.LMConfig


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every variable of a TensorFlow checkpoint (a TF1 ``Saver`` checkpoint such as
    bert4keras' ``bert_model.ckpt``, given by its prefix), {name: NumPy array}, read with
    ``tf.train.load_checkpoint``. WeightFileError naming the path when it cannot be read."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(str(path))
        return {k: reader.get_tensor(k) for k in sorted(reader.get_variable_to_shape_map())}
    except Exception as err:  # NotFoundError, DataLossError, ...
        raise WeightFileError(f"{path}: not a readable TF checkpoint: {str(err)[:300]}") from err


def _check_suffix(path: Path) -> None:
    if not path.name.endswith(SUFFIX):
        raise WeightFileError(
            f"{path}: Keras weights files must be named *{SUFFIX} (Keras reads and writes no other "
            "name); rename it"
        )


def save(path: str | os.PathLike, layer, *, extra: dict[str, str] | None = None) -> Path:
    """A flashcore.tf layer -> a Keras weights file with the config and dtype as HDF5 attributes
    (``extra``: metadata strings stored beside them, :func:`read_extra`)."""
    path = Path(path)
    _check_suffix(path)
    tag = make_tag("keras", layer.config, extra, reserved=("dtype",))
    attrs = {_PREFIX + k: v for k, v in tag.items()}
    attrs[_PREFIX + "dtype"] = str(layer.dtype)

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            # Keras 3.15's weight store calls np.array(variable) (keras/src/backend/tensorflow/
            # core.py convert_to_numpy); NumPy 2 then warns once per variable that the
            # variable's __array__ takes no copy keyword. The values are copied either way.
            warnings.filterwarnings(
                "ignore", message="__array__ implementation doesn't accept a copy keyword",
                category=DeprecationWarning,
            )  # fmt: skip
            keras.saving.save_weights(layer, tmp)
        with h5py.File(tmp, "a") as f:
            f.attrs.update(attrs)

    atomic_write(path, write, suffix=SUFFIX)
    return path


def write_params(
    path: str | os.PathLike, params: dict, config: Config, *, extra: dict[str, str] | None = None
) -> Path:
    """Canonical weights of one dtype (bfloat16 via ml_dtypes) -> a Keras weights file."""
    fc.check_params(params, config)
    dtype = common_dtype(params)
    layer = block_class(config)(config, params=params, dtype=dtype.name)
    return save(path, layer, extra=extra)


def _read_tag(path: Path) -> dict:
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except Exception as err:
        raise WeightFileError(
            f"{path}: not a readable HDF5 file (truncated or corrupt?): {err}"
        ) from err
    return {k[len(_PREFIX) :]: v for k, v in attrs.items() if k.startswith(_PREFIX)}


def read_extra(path: str | os.PathLike) -> dict[str, str]:
    """A Keras file's extra metadata strings (what ``write_params(extra=...)`` stored; {} if none)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weight file at {path}")
    tag = _read_tag(path)
    read_tag(path, tag, "keras")
    return extra_of(tag, reserved=("dtype",))


def _read_attrs(path: Path) -> tuple[Config, str]:
    tag = _read_tag(path)
    config = read_tag(path, tag, "keras")
    dtype = tag.get("dtype")
    dtype = dtype.decode() if isinstance(dtype, bytes) else dtype
    if not isinstance(dtype, str):
        raise WeightFileError(f"{path}: no flashcore_dtype attribute")
    return config, dtype


def load(path: str | os.PathLike):
    """A Keras weights file -> a new layer in the stored dtype, holding the stored weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weight file at {path}")
    _check_suffix(path)
    config, dtype = _read_attrs(path)
    layer = block_class(config)(config, dtype=dtype)
    try:
        keras.saving.load_weights(layer, str(path))
    except Exception as err:
        raise WeightFileError(
            f"{path}: its weights do not fit the stored config {config!r}: {str(err)[:500]}"
        ) from err
    return layer


def read_params(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], Config]:
    """A Keras weights file -> (canonical NumPy weights in the stored dtype, config)."""
    layer = load(path)
    params = layer.to_canonical()
    check_file_params(path, params, layer.config)
    return params, layer.config


def save_canonical(path: str | os.PathLike, layer) -> Path:
    """A layer -> a canonical safetensors file (bfloat16 through ml_dtypes, bit-exact)."""
    return _save_canonical_numpy(path, layer.to_canonical(), layer.config)


def load_canonical(path: str | os.PathLike, *, dtype: str | None = None):
    """A canonical safetensors file -> a new layer (``dtype``: a Keras dtype or policy; default
    the file's dtype when it has one, else float32)."""
    params, config = _load_canonical_numpy(path)
    if dtype is None:
        try:
            dtype = common_dtype(params).name
        except ValueError:
            dtype = None
    return block_class(config)(config, params=params, dtype=dtype)
