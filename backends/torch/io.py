"""Weight files with native torch tensors: the canonical file and the torch file.

    save(path, module)                       torch file: the module's state_dict + config + tag
    load(path, *, config=None, device=None)  -> a new module (FLASH, GAU, TransformerBlock or LM)
    save_canonical(path, module)             canonical safetensors via safetensors.torch
    save_canonical_tensors(path, tensors, config)   the same from canonical tensors
    load_canonical(path, *, device=None)     -> a new module, in the file's dtype
    write_params(path, params, config, *, extra=None)   canonical weights -> torch file (for
                                             flashcore.app.convert; extra: metadata strings)
    read_params(path, *, config=None)        torch file -> (canonical NumPy weights, config)
    read_extra(path)                         torch file -> its extra metadata strings

The torch file is ``torch.save`` of ``{"format": "flashcore-torch", "format_version": "1",
"config": <JSON>, "state_dict": {native name: tensor}}``: native names and layout (``nn.Linear``
weights ``[out, in]``), exactly ``module.state_dict()``. It is read with
``torch.load(weights_only=True)``. A bare state dict (no tag) is read only with an explicit
``config=``. Every tensor keeps its dtype (bfloat16 included); every write is atomic.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

import flashcore as fc
from flashcore.io import WeightFileError, atomic_write, make_metadata, read_header
from flashcore.weightmeta import (
    check_file_params,
    config_from_json,
    extra_of,
    from_native,
    make_tag,
    read_tag,
    to_native,
)

from .module import CanonicalModule, _to_numpy, _to_tensor, block_class
from .naming import naming_table

__all__ = [
    "save",
    "load",
    "save_canonical",
    "save_canonical_tensors",
    "load_canonical",
    "write_params",
    "read_params",
    "read_extra",
]

Config = fc.FlashConfig | fc.TransformerConfig | fc.LMConfig


def _module_class(config: Config) -> type[CanonicalModule]:
    return block_class(config)


def _transpose(t: torch.Tensor) -> torch.Tensor:
    return t.mT


def _write(
    path: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    config: Config,
    extra: dict[str, str] | None = None,
) -> Path:
    path = Path(path)
    sd = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    obj = {**make_tag("torch", config, extra, reserved=("state_dict",)), "state_dict": sd}
    atomic_write(path, lambda tmp: torch.save(obj, tmp))
    return path


def write_params(
    path: str | os.PathLike, params: dict, config: Config, *, extra: dict[str, str] | None = None
) -> Path:
    """Canonical weights (NumPy, bfloat16 via ml_dtypes, or tensors) -> a torch file at ``path``.

    Names and shapes are checked first; each tensor keeps its dtype; kernels are transposed to
    ``nn.Linear``'s ``[out, in]`` exactly where the naming table says so. ``extra``: metadata
    strings stored beside the tag (:func:`read_extra` gives them back).
    """
    fc.check_params(params, config)
    tensors = {k: _to_tensor(v) for k, v in params.items()}
    return _write(path, to_native(tensors, naming_table(config), _transpose), config, extra)


def read_extra(path: str | os.PathLike) -> dict[str, str]:
    """A torch file's extra metadata strings (what ``write_params(extra=...)`` stored; {} if none)."""
    path = Path(path)
    obj = _read_state_dict(path)
    if not (isinstance(obj, dict) and "format" in obj):
        return {}  # a bare state dict carries nothing beside its tensors
    read_tag(path, {k: v for k, v in obj.items() if k != "state_dict"}, "torch")
    return extra_of(obj, reserved=("state_dict",))


def save(path: str | os.PathLike, module: CanonicalModule) -> Path:
    """A flashcore.torch module -> a torch file: ``module.state_dict()`` with its config."""
    sd = module.state_dict()
    want = {n for n, _ in module.naming.values()}
    if set(sd) != want:  # a module with state beyond its parameters: not this format
        raise ValueError(
            f"{type(module).__name__}: state_dict names {sorted(set(sd) ^ want)} are not in "
            "its naming table"
        )
    return _write(path, sd, module.config)


def _read_state_dict(path: Path) -> object:
    if not path.is_file():
        raise FileNotFoundError(f"no weight file at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightFileError(
            f"{path}: not a readable torch file (truncated, corrupt or not a weights-only "
            f"torch.save?): {type(err).__name__}: {str(err)[:300]}"
        ) from err


def read_params(
    path: str | os.PathLike, *, config: Config | None = None, tensors: bool = False
) -> tuple[dict, Config]:
    """A torch file -> (canonical weights, config).

    NumPy arrays in each tensor's dtype (bfloat16 via ml_dtypes); ``tensors=True``: CPU tensors.
    ``config``: required for a bare state dict; for a tagged file it must equal the stored one.
    Raises WeightFileError naming the file for a foreign, truncated or mismatched file.
    """
    path = Path(path)
    obj = _read_state_dict(path)
    if isinstance(obj, dict) and "format" in obj:
        stored = read_tag(path, {k: v for k, v in obj.items() if k != "state_dict"}, "torch")
        if config is not None and config != stored:
            raise WeightFileError(f"{path}: holds weights for {stored!r}, not for {config!r}")
        config, sd = stored, obj.get("state_dict")
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if config is None:
            raise WeightFileError(
                f"{path}: a bare state dict with no flashcore config; give the config "
                "(config=..., on the command line --config config.json holding config.to_dict())"
            )
        sd = obj
    else:
        raise WeightFileError(
            f"{path}: not a flashcore torch file nor a state dict (holds {type(obj).__name__})"
        )
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightFileError(f"{path}: its state_dict is not a dict of tensors")
    params = from_native(path, sd, naming_table(config), _transpose)
    check_file_params(path, params, config)
    not_float = sorted(k for k, v in params.items() if not v.is_floating_point())
    if not_float:
        raise WeightFileError(f"{path}: tensors that are not floating point: {not_float}")
    if tensors:
        return {k: v.contiguous() for k, v in params.items()}, config
    return {k: _to_numpy(v) for k, v in params.items()}, config


def _build(params: dict[str, torch.Tensor], config: Config, path: Path, device) -> CanonicalModule:
    dtypes = {v.dtype for v in params.values()}
    if len(dtypes) != 1:
        raise WeightFileError(f"{path}: tensors of mixed dtypes {sorted(map(str, dtypes))}")
    module = _module_class(config)(config, init=False, dtype=dtypes.pop(), device=device)
    module.load_canonical(params)
    return module


def load(path: str | os.PathLike, *, config: Config | None = None, device=None) -> CanonicalModule:
    """A torch file -> a new module in the file's dtype (``config``: needed for a bare state
    dict only)."""
    params, config = read_params(path, config=config, tensors=True)
    return _build(params, config, Path(path), device)


def save_canonical(path: str | os.PathLike, module: CanonicalModule) -> Path:
    """A module -> a canonical safetensors file (``safetensors.torch``; bfloat16 stays bfloat16)."""
    return save_canonical_tensors(path, module.to_canonical(tensors=True), module.config)


def save_canonical_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], config: Config
) -> Path:
    """Canonical CPU tensors (kernels ``[in, out]``) -> a canonical safetensors file, atomically;
    names and shapes are checked against ``config`` first."""
    from safetensors.torch import save_file

    fc.check_params(tensors, config)
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = make_metadata(config)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


def load_canonical(path: str | os.PathLike, *, device=None) -> CanonicalModule:
    """A canonical safetensors file -> a new module in the file's dtype (native tensors)."""
    from safetensors.torch import load_file

    path = Path(path)
    config = config_from_json(path, read_header(path).get("config", ""))
    try:
        params = load_file(str(path))
    except Exception as err:
        raise WeightFileError(f"{path}: tensors unreadable (truncated or corrupt?): {err}") from err
    check_file_params(path, params, config)
    return _build(params, config, path, device)
