"""The base of every flashcore.torch module: native parameters, canonical weight I/O and init.

A module holds its parameters the torch way (``nn.Linear`` weights ``[out, in]``) and hands the spec
a dict of canonical tensors built through its naming table (:mod:`flashcore.torch.naming`);
the math itself is ``flashcore``'s.

Canonical weight I/O:

- ``load_canonical(params)``: exact name set and every shape checked before anything is written;
  values are cast to each parameter's dtype and device. NumPy arrays (bfloat16 as
  ``ml_dtypes.bfloat16``) and tensors are accepted.
- ``to_canonical()``: NumPy arrays in the parameters' own dtype. NumPy has no bfloat16 of its own;
  bfloat16 parameters come back as ``ml_dtypes.bfloat16`` arrays (bit-exact; ml_dtypes ships with
  JAX and TensorFlow). ``to_canonical(tensors=True)`` returns contiguous CPU torch tensors in the
  native dtype instead, which is the route for ``safetensors.torch.save_file`` (safetensors' NumPy
  API has no bfloat16).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

import flashcore as fc
from flashcore.config import ClassRegistry

from .naming import naming_table

__all__ = ["ParamGroup", "CanonicalModule", "norm_params", "block_class", "CLASSES"]

Config = fc.FlashConfig | fc.TransformerConfig | fc.LMConfig

#: The module class of each kind of config; FLASH, GAU and TransformerBlock (layers.py) and LM
#: (lm.py) register themselves.
CLASSES = ClassRegistry()


def block_class(config) -> type[CanonicalModule]:
    """The module class of a config: FLASH, GAU, TransformerBlock or LM (the finder every
    backend has under this name)."""
    return CLASSES(config)


class ParamGroup(nn.Module):
    """Named parameters with no forward of their own (norm gains, scale-offset, bias tables)."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], *, device=None, dtype=None):
        super().__init__()
        for name, shape in shapes.items():
            self.register_parameter(
                name, nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
            )

    def extra_repr(self) -> str:
        return ", ".join(f"{n}={tuple(p.shape)}" for n, p in self.named_parameters())


def norm_params(kind: str, dim: int, affine: bool = True, **factory) -> ParamGroup:
    """scale: ``scale`` (1,); rms: ``weight`` (d,); layer: ``weight``, ``bias`` (d,); none for
    ``kind='none'`` or ``affine=False`` (an empty group)."""
    if kind == "none" or not affine:
        return ParamGroup({}, **factory)
    if kind == "scale":
        return ParamGroup({"scale": (1,)}, **factory)
    if kind == "rms":
        return ParamGroup({"weight": (dim,)}, **factory)
    return ParamGroup({"weight": (dim,), "bias": (dim,)}, **factory)


def _to_tensor(value) -> torch.Tensor:
    """A NumPy array (bfloat16 via ml_dtypes), tensor or array-like -> a detached tensor."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    a = np.asarray(value)
    if not (a.flags.c_contiguous and a.flags.writeable):  # (ascontiguousarray makes 0-d 1-d)
        a = a.copy(order="C")
    if a.dtype.name == "bfloat16":  # ml_dtypes: same bits as torch.bfloat16
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        try:
            import ml_dtypes
        except ImportError as err:
            raise TypeError(
                "bfloat16 parameters need ml_dtypes for a NumPy copy; use "
                "to_canonical(tensors=True) for torch tensors instead"
            ) from err
        return t.view(torch.uint16).numpy().view(ml_dtypes.bfloat16).copy()
    return t.numpy().copy()


def _tensors_only(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """A module's forward takes torch tensors, as every nn.Module does; NumPy arrays and lists get a
    TypeError that names the conversion (torch's own error comes from deep inside the math)."""
    if torch.compiler.is_compiling():  # traced calls: their inputs are tensors already
        return
    named = [(f"argument {i}", a) for i, a in enumerate(args)] + list(kwargs.items())
    for name, value in named:
        if isinstance(value, (np.ndarray, list)):  # noqa: UP038 (a tuple: torch.compile traces it)
            raise TypeError(
                f"{type(module).__name__} takes torch tensors, but {name} is a "
                f"{type(value).__module__}.{type(value).__qualname__}: convert it with "
                "torch.as_tensor(value) (torch.from_numpy(array) shares a NumPy array's memory), "
                "on the module's device"
            )


class CanonicalModule(nn.Module):
    """Base class: ``config``, the naming table and canonical weight I/O.

    Subclasses create their parameters in ``__init__`` and then call ``self._init(seed, init)``.
    """

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.naming = naming_table(config)  # {canonical: (native, transpose)}
        self.register_forward_pre_hook(_tensors_only, with_kwargs=True)

    # -- the spec's view of the parameters -------------------------------------------------
    def canonical_params(self) -> dict[str, torch.Tensor]:
        """Canonical name -> tensor (a transposed view where the table says so), differentiable."""
        native = dict(self.named_parameters())
        return {c: (native[n].mT if t else native[n]) for c, (n, t) in self.naming.items()}

    # -- init --------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, seed: int | None = None) -> None:
        """Set every parameter to ``flashcore.init(config, seed)`` (drawn in float64, then cast to
        each parameter's dtype). ``seed=None`` draws the seed from torch's global generator, so
        ``torch.manual_seed`` makes it reproducible."""
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        self.load_canonical(fc.init(self.config, seed=seed, dtype=np.float64))

    def _init(self, seed: int | None, init: bool) -> None:
        if init:
            self.reset_parameters(seed)

    # -- canonical weight I/O ----------------------------------------------------------------
    @torch.no_grad()
    def load_canonical(self, params: Mapping[str, np.ndarray | torch.Tensor]) -> None:
        """Load canonical weights (kernels ``[in, out]``). Raises ValueError before changing
        anything when names differ (missing and unexpected listed), a shape differs, a value is not
        floating, or a value cannot be cast to its parameter's dtype and device (every value is
        converted first; the parameters are written only when all succeeded).
        """
        spec = fc.param_spec(self.config)
        missing = sorted(set(spec) - set(params))
        unexpected = sorted(set(params) - set(spec))
        if missing or unexpected:
            raise ValueError(
                f"{type(self).__name__}.load_canonical: missing {missing}, unexpected {unexpected}"
            )
        native = dict(self.named_parameters())
        staged: list[tuple[torch.Tensor, torch.Tensor]] = []
        errors: list[str] = []
        for name, (native_name, transpose) in self.naming.items():
            try:
                value = _to_tensor(params[name])
            except (TypeError, ValueError, RuntimeError) as err:  # e.g. an object array
                errors.append(f"{name}: expected a floating array, got {type(params[name])}: {err}")
                continue
            if tuple(value.shape) != spec[name].shape:
                errors.append(f"{name}: expected {spec[name].shape}, got {tuple(value.shape)}")
                continue
            if not value.is_floating_point():
                errors.append(f"{name}: expected a floating dtype, got {value.dtype}")
                continue
            target = native[native_name]
            value = value.mT if transpose else value
            assert value.shape == target.shape, (name, native_name, value.shape, target.shape)
            try:  # cast now, so that a failure (a meta tensor, a missing device) changes nothing
                staged.append((target, value.to(device=target.device, dtype=target.dtype)))
            except (RuntimeError, NotImplementedError, TypeError) as err:
                errors.append(f"{name}: cannot be cast to {target.dtype} on {target.device}: {err}")
        if errors:
            raise ValueError(f"{type(self).__name__}.load_canonical: " + "; ".join(errors))
        for target, value in staged:
            target.copy_(value)

    def to_canonical(
        self, *, tensors: bool = False
    ) -> dict[str, np.ndarray] | dict[str, torch.Tensor]:
        """Canonical name -> weight (kernels ``[in, out]``) in each parameter's own dtype.

        NumPy by default (bfloat16 as ``ml_dtypes.bfloat16``); ``tensors=True``: contiguous CPU
        tensors, ready for ``safetensors.torch.save_file``.
        """
        out = {}
        for name, value in self.canonical_params().items():
            t = value.detach().cpu().contiguous()
            out[name] = t.clone() if tensors else _to_numpy(t)
        return out
