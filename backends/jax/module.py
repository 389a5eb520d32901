"""The base of every flashcore.jax module: construction from canonical params, the canonical <->
native round trip (through :func:`flashcore.jax.naming.naming_table` and nothing else), and the
dropout stream.

Parameters are ``nnx.Param`` under Flax-style names (kernels ``[in, out]``, norms ``scale`` /
``bias``, embeddings ``embedding``), placed in :class:`Group` sub-modules by their native path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import flashcore as fc
from flashcore.config import ClassRegistry, FlashConfig, LMConfig, TransformerConfig

from . import functional
from .naming import Table, naming_table

__all__ = ["CanonicalModule", "Group", "block_class", "CLASSES"]

#: The module class of each kind of config; FLASH, GAU and TransformerBlock (layers.py) and LM
#: (lm.py) register themselves.
CLASSES = ClassRegistry()


def block_class(config) -> type[CanonicalModule]:
    """The module class of a config: FLASH, GAU, TransformerBlock or LM (the finder every
    backend has under this name)."""
    return CLASSES(config)


class Group(nnx.Module):
    """A named group of native parameters (one sub-layer: ``uvz``, ``norm``, ...)."""


def _get(module: nnx.Module, path: str) -> nnx.Param:
    node = module
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def _place(module: nnx.Module, path: str, value: jax.Array) -> None:
    *groups, leaf = path.split(".")
    node = module
    for part in groups:
        if not hasattr(node, part):
            setattr(node, part, Group())
        node = getattr(node, part)
    setattr(node, leaf, nnx.Param(value))


def _native(value: jax.Array, transpose: bool) -> jax.Array:
    return value.T if transpose else value


def _cast_all(params: dict, dtypes: dict) -> dict[str, jax.Array]:
    """{name: jnp array in ``dtypes[name]``} (None: keep the dtype) for every name of ``dtypes``;
    ValueError naming every value that cannot be converted (and nothing returned)."""
    out, errors = {}, []
    for name, dtype in dtypes.items():
        try:
            out[name] = jnp.asarray(params[name], dtype=dtype)
        except (TypeError, ValueError, RuntimeError) as err:
            errors.append(f"{name}: cannot be converted to a {dtype or 'jax'} array: {err}")
    if errors:
        raise ValueError("parameters cannot be converted: " + "; ".join(errors))
    return out


def _batch_time(tokens) -> tuple[int, int]:
    """(b, t) of token ids for drawing masks; a wrong rank is left to the spec's own check."""
    shape = tuple(np.shape(tokens)) + (1, 1)  # np.shape: jax and NumPy arrays, nested lists
    return shape[0], shape[1]


def _fork(rngs) -> nnx.RngStream | None:
    """The dropout stream of ``rngs`` (an Rngs: its ``dropout`` stream, else its default; an
    RngStream), forked; None for None."""
    if isinstance(rngs, nnx.Rngs):
        return rngs["dropout"].fork()
    if isinstance(rngs, nnx.RngStream):
        return rngs.fork()
    if rngs is None:
        return None
    raise TypeError(f"dropout rngs must be an nnx.Rngs, nnx.RngStream or None, got {type(rngs)}")


class CanonicalModule(nnx.Module):
    """Shared: construction from canonical params and the canonical <-> native round trip."""

    config: FlashConfig | TransformerConfig | LMConfig

    def _dropout_init(self, rngs, dropout_rngs, deterministic: bool) -> None:
        self.deterministic = deterministic
        self.dropout_rngs = nnx.data(_fork(dropout_rngs if dropout_rngs is not None else rngs))

    def _masks(self, b: int, t: int, dropout, deterministic, rngs) -> dict | None:
        """The keep-masks of one call: ``dropout`` if given, None when deterministic or p = 0,
        else fresh ones from ``rngs`` (the call's) or the module's dropout stream."""
        if dropout is not None:
            return dropout
        det = self.deterministic if deterministic is None else deterministic
        if det or fc.dropout.rate(self.config) == 0.0:
            return None
        source = rngs if rngs is not None else self.dropout_rngs
        if isinstance(source, nnx.Rngs):
            key = source["dropout"]()
        elif isinstance(source, nnx.RngStream):
            key = source()
        elif isinstance(source, jax.Array):
            key = source
        elif source is None:
            raise ValueError(
                f"{type(self).__name__}: dropout={fc.dropout.rate(self.config)} in training mode "
                "(deterministic=False) needs a dropout stream: build with rngs= or dropout_rngs=, "
                "pass rngs= to the call, or call .eval() for the deterministic layer"
            )
        else:
            raise TypeError(f"rngs must be an nnx.Rngs, nnx.RngStream or a key, got {type(source)}")
        return functional.dropout_masks(self.config, key, b, t)

    def _build(self, config, rngs: nnx.Rngs | None, params: dict | None, dtype) -> dict:
        """Check and return the canonical params to build from (given, or drawn from ``rngs``)."""
        if (rngs is None) == (params is None):
            raise TypeError(f"{type(self).__name__} takes exactly one of rngs= or params=")
        self.config = config
        if params is None:
            return functional.init(config, rngs.params(), dtype or jnp.float32)
        fc.check_params(params, config)
        return _cast_all(params, dict.fromkeys(params, dtype))

    @property
    def table(self) -> Table:
        """The naming table of this module's config (see :func:`naming_table`)."""
        return naming_table(self.config)

    def to_canonical(self) -> dict[str, jax.Array]:
        """{canonical name: array}, exactly the names and shapes of ``param_spec(config)``."""
        return {k: _native(_get(self, p)[...], t) for k, (p, t) in self.table.items()}

    def load_canonical(self, params: dict) -> None:
        """Set every parameter from a canonical dict (any array type), cast to the module's dtypes.

        Raises ValueError naming missing / unexpected names, bad shapes, non-floating values or
        values that cannot be cast; every value is checked and cast first, so then nothing changes.
        """
        fc.check_params(params, self.config)
        dtypes = {name: _get(self, path)[...].dtype for name, (path, _) in self.table.items()}
        cast = _cast_all(params, dtypes)
        new = {}
        for name, (path, transpose) in self.table.items():
            var = _get(self, path)
            value = _native(cast[name], transpose)
            if value.shape != var[...].shape:  # unreachable unless the table is wrong
                raise ValueError(f"{name} -> {path}: shape {value.shape} != {var[...].shape}")
            new[path] = value
        for path, value in new.items():
            _get(self, path).set_value(value)
