"""Importers of other implementations' checkpoints (flash-pytorch, GAU-alpha)."""

from __future__ import annotations

import os

__all__ = ["read_torch_state_dict"]


def read_torch_state_dict(path: str | os.PathLike, error: type[Exception] = ValueError) -> dict:
    """A ``torch.save``-d state dict (a dict of tensors) read with ``weights_only=True``; a file
    torch cannot read, or one holding anything else, raises ``error`` naming the file."""
    try:
        import torch
    except ImportError as err:
        raise error(f"{path}: a torch checkpoint needs torch: {err}") from err
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise error(
            f"{path}: not a readable torch file (truncated or corrupt?): {str(err)[:300]}"
        ) from err
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise error(f"{path}: not a state dict (a dict of tensors)")
    return sd
