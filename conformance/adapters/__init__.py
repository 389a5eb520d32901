"""Adapter registry. A backend is named by a built-in id or by ``module:Class`` (third parties)."""

from __future__ import annotations

import functools
import importlib
import os

from .base import Adapter, Result

__all__ = [
    "Adapter",
    "Result",
    "BUILTIN",
    "EXPORTS",
    "resolve",
    "load_adapter",
    "selected_backends",
]

# id -> "module:Class". Backend adapters live with their backend and import it lazily.
BUILTIN: dict[str, str] = {
    "numpy": "flashcore.conformance.adapters.spec:NumpyAdapter",
    "array_api_strict": "flashcore.conformance.adapters.spec:StrictAdapter",
    "torch": "flashcore.torch.adapter:TorchAdapter",
    "jax": "flashcore.jax.adapter:JaxAdapter",
    "tf": "flashcore.tf.adapter:TFAdapter",
}

# deployment exports (flashcore.deploy): each case is exported and its artifact run; not in the
# default selection (an ONNX trace takes tens of seconds a case), named with --backend
EXPORTS: dict[str, str] = {
    "onnx": "flashcore.conformance.adapters.export:OnnxAdapter",
    "stablehlo": "flashcore.conformance.adapters.export:StableHLOAdapter",
    "savedmodel": "flashcore.conformance.adapters.export:SavedModelAdapter",
}


def resolve(spec: str) -> str:
    """A backend id or ``module:Class`` -> ``module:Class``."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    if spec in EXPORTS:
        return EXPORTS[spec]
    if ":" in spec:
        return spec
    raise ValueError(
        f"unknown backend {spec!r}; built-in: {sorted(BUILTIN)}, exports: {sorted(EXPORTS)}, "
        "or give module:Class"
    )


def selected_backends(requested: list[str] | None = None) -> list[str]:
    """Backends named on the command line (repeated or comma-separated), else in the
    FLASHCORE_BACKENDS environment variable, else every built-in one."""
    raw = requested or [os.environ.get("FLASHCORE_BACKENDS", "")]
    names = [b.strip() for item in raw for b in item.split(",") if b.strip()]
    return names or list(BUILTIN)


@functools.cache
def load_adapter(spec: str) -> tuple[Adapter | None, str | None]:
    """(adapter, None) when it can run here, (None, reason) when it is not installed."""
    target = resolve(spec)
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        return None, f"not installed: {err}"
    adapter = cls()
    reason = adapter.unavailable()
    if reason:
        return None, f"not installed: {reason}"
    return adapter, None
