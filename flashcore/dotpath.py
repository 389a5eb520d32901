"""Which path a backend's low-precision dots take: ``"native"`` (a bfloat16 / float16 dot) or
``"float32"`` (the operands upcast from their low-precision storage, the dot in float32, the
result cast back to the storage dtype). Spec storey: no framework; the XLA backends' namespaces
(``flashcore.jax.xp``, ``flashcore.tf.xp``) ask it with their platform.

Why: XLA's CPU backend (jax, TF with ``jit_compile``) has no fast bfloat16 dot; a bf16 matmul
there runs below its float32 rate, and a FLASH or Transformer++ step in bfloat16 was 1.3-1.5x
slower than in float32 (docs/benchmarks.md, "bfloat16 on XLA's CPU backend"). Upcasting costs
one elementwise convert per operand and keeps the bf16 activations in memory; the result is what
the native dot computes with a float32 accumulator, rounded once to bf16.

Rule: ``"float32"`` on the ``"cpu"`` platform, ``"native"`` on every other (GPU, TPU: fast bf16
dots). ``FLASHCORE_LOW_PRECISION_DOTS`` overrides it: ``auto`` (the rule), ``float32`` or
``native`` (e.g. ``native`` on a CPU whose XLA build has fast bf16 dots, AMX or AVX512-BF16).
The value is read when a dot is traced, so a function compiled earlier keeps its path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ._xp import dtype_name, is_low_precision

__all__ = ["ENV", "CHOICES", "low_precision_dots", "label", "float32_compute"]

ENV = "FLASHCORE_LOW_PRECISION_DOTS"
CHOICES = ("auto", "float32", "native")


def low_precision_dots(platform: str) -> str:
    """``"float32"`` or ``"native"``: the path of a bfloat16 / float16 dot on ``platform`` (an
    XLA platform name: "cpu", "gpu", "cuda", "rocm", "tpu", ...), after the override
    ``FLASHCORE_LOW_PRECISION_DOTS``; a ValueError names a value that is not one of
    :data:`CHOICES`."""
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(
            f"{ENV}={os.environ[ENV]!r} is not one of {', '.join(CHOICES)} "
            "(auto: float32 dots on CPU, native elsewhere)"
        )
    if choice != "auto":
        return choice
    return "float32" if platform.lower() == "cpu" else "native"


def label(dtype: str, path: str) -> str:
    """A benchmark row's dtype with the dot path that ran: 'bfloat16 (f32 dots)' for a
    low-precision dtype on the float32 path, ``dtype`` otherwise."""
    return (
        f"{dtype} (f32 dots)" if path == "float32" and dtype in ("bfloat16", "float16") else dtype
    )


def float32_compute(
    params: dict, *, dot_path: Callable[[str], str], cast: Callable[[Any, str], Any]
) -> tuple[dict, str | None]:
    """(params with every bfloat16 / float16 entry cast to float32, the name of the storage dtype
    to cast the results back to) where the backend's ``dot_path`` of that dtype is
    ``"float32"``; (params, None) otherwise. ``cast(array, dtype_name) -> array``: the backend's
    cast. How the XLA backends run a low-precision block or LM on CPU: the whole of it in float32
    from its bf16 storage, since XLA's CPU backend is slow at bf16 elementwise ops as well as
    dots (each op converts and rounds; docs/benchmarks.md)."""
    low = sorted({dtype_name(v.dtype) for v in params.values() if is_low_precision(v.dtype)})
    if not low or dot_path(low[0]) != "float32":
        return params, None
    wide = {k: cast(v, "float32") if is_low_precision(v.dtype) else v for k, v in params.items()}
    return wide, low[0]
