"""Pretrained directories: ``config.json`` + ``model.safetensors``, the Hugging Face layout.

A directory written by ``FlashcoreForCausalLM.save_pretrained`` (:mod:`flashcore.torch.hf`) or by
``flashcore export`` holds:

    config.json         the Hugging Face config; ``model_type`` "flashcore" and, under the key
                        ``flashcore``, the LM config (``LMConfig.to_dict()``)
    model.safetensors   the canonical weight file (:mod:`flashcore.io`: canonical names,
                        kernels ``[in, out]``, the config in its metadata)

so that any backend reads it without transformers: ``flashcore.<backend>.LM.from_pretrained``.

    resolve(name_or_path, **hub)        -> Path of the directory (a local folder, or a Hub id
                                           fetched by huggingface_hub)
    check_config_json(directory, config)   config.json must agree with the weight file
    load(name_or_path, **hub)           -> (canonical NumPy params, LMConfig)

Hub ids (``"user/model"``) need ``huggingface_hub`` (the ``[hf]`` extra) and a network, or its
cache with ``local_files_only=True``. This module imports no framework.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .config import LMConfig, config_from_dict
from .io import WeightFileError
from .io import load as _load_canonical

__all__ = [
    "MODEL_TYPE",
    "CONFIG_KEY",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "GENERATION_CONFIG_NAME",
    "resolve",
    "check_config_json",
    "load",
    "weights_file",
]

MODEL_TYPE = "flashcore"  # config.json's model_type, registered with transformers' AutoConfig
CONFIG_KEY = "flashcore"  # config.json's key holding LMConfig.to_dict()
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
GENERATION_CONFIG_NAME = "generation_config.json"  # transformers' generate defaults (optional)


def _looks_like_path(name: str) -> bool:
    """A name that can only be a local path (a Hub id is ``name`` or ``owner/name``)."""
    return (
        name.startswith((".", "/", "~"))
        or os.sep in name.replace("/", "", 1)
        or name.count("/") > 1
        or (os.altsep is not None and os.altsep in name)
    )


def resolve(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
) -> Path:
    """The directory holding ``config.json`` and ``model.safetensors``.

    A local folder is used as it is. Anything else that is a valid Hub id is fetched with
    ``huggingface_hub.snapshot_download`` (only those two files and, when there is one,
    ``generation_config.json``), honouring ``revision``,
    ``cache_dir``, ``local_files_only``, ``token`` and ``force_download``. Raises
    FileNotFoundError naming the folder or id when neither works.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(
            f"{path}: a pretrained model is a folder holding {CONFIG_NAME} and {WEIGHTS_NAME}, "
            "not a file"
        )
    name = str(name_or_path)
    if _looks_like_path(name):
        raise FileNotFoundError(f"no folder at {path}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(
            f"no local folder {name!r}, and Hub ids need huggingface_hub: "
            "pip install 'flashcore[hf]'"
        ) from None
    try:
        got = snapshot_download(
            repo_id=name,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, GENERATION_CONFIG_NAME],
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
            force_download=force_download,
        )
    except Exception as err:  # offline, unknown repo, bad id: huggingface_hub's own errors
        raise FileNotFoundError(
            f"no local folder {name!r}, and the Hugging Face Hub could not provide it "
            f"({type(err).__name__}: {str(err)[:300]})"
        ) from err
    return Path(got)


def _weights_file(directory: Path) -> Path:
    path = directory / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {WEIGHTS_NAME} in this folder")
    return path


def check_config_json(directory: str | os.PathLike, config: LMConfig) -> None:
    """Check ``directory/config.json`` (when present) against the weight file's ``config``.

    Raises WeightFileError naming the file when it is unreadable, is not a flashcore config, or
    describes another model. A folder without config.json passes (the weights carry the config).
    """
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        return
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise WeightFileError(f"{path}: not readable JSON: {err}") from err
    if not isinstance(data, dict) or data.get("model_type") != MODEL_TYPE:
        got = data.get("model_type") if isinstance(data, dict) else None
        raise WeightFileError(f"{path}: model_type is {got!r}, not {MODEL_TYPE!r}")
    if CONFIG_KEY not in data:
        raise WeightFileError(f"{path}: no {CONFIG_KEY!r} entry (the flashcore LM config)")
    try:
        stored = config_from_dict(data[CONFIG_KEY])
    except (ValueError, TypeError, KeyError) as err:
        raise WeightFileError(f"{path}: its {CONFIG_KEY!r} entry is unusable: {err}") from err
    if stored != config:
        raise WeightFileError(
            f"{path} describes {stored!r}, but {WEIGHTS_NAME} holds weights for {config!r}"
        )


def load(name_or_path: str | os.PathLike, **hub) -> tuple[dict[str, np.ndarray], LMConfig]:
    """A pretrained directory (or Hub id: ``hub`` as in :func:`resolve`) -> (params, config).

    ``params``: canonical names -> NumPy arrays in the file's dtype (bfloat16 via ml_dtypes).
    The weight file is checked by :func:`flashcore.io.load`, config.json by
    :func:`check_config_json`; the config must be an :class:`LMConfig`.
    """
    directory = resolve(name_or_path, **hub)
    path = _weights_file(directory)
    params, config = _load_canonical(path)
    if not isinstance(config, LMConfig):
        raise WeightFileError(f"{path}: holds a {type(config).__name__}, not a language model")
    check_config_json(directory, config)
    return params, config


def weights_file(name_or_path: str | os.PathLike, **hub) -> tuple[Path, Path]:
    """-> (directory, its model.safetensors), resolved as in :func:`resolve`."""
    directory = resolve(name_or_path, **hub)
    return directory, _weights_file(directory)
