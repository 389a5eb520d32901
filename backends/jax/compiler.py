"""XLA compiler options for ``jax.jit`` on CPU: :func:`compiler_options`, and :func:`jit`, which
passes them. flashcore's own compiled training, evaluation and benchmark steps use them; pass
them to yours: ``jax.jit(step, compiler_options=flashcore.jax.compiler_options())``.

Why: jaxlib 0.10's CPU backend hands two kinds of fusion to YNNPACK by default, single dots
(``LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT``) and reductions (``..._REDUCE``). A reduction over a long
leading axis runs there at about 40M elements/s: the gradient of every parameter that the
forward broadcasts over tokens or chunks is one, e.g. a scale-offset gain, (1, 65536, 128) ->
(128,) of a product, 219 ms against 19 ms in XLA's own loop (2 threads; ``jnp.sum(a * b, 1)``
jitted alone). In ``python -m flashcore.app.benchprofile --backend jax --length 64K`` (the
bench's FLASH-pair step, float32, under ``jax.profiler``) such reductions took 1.30 s of a 14.0 s
step, and 0.16 s with these options; timed in one process, steps alternating
(``--compare-xla-options``), 1.12x faster at 64K and 1.03x at 4K in float32, 0.98x (no gain) in
bfloat16 at 4K (the 2-core AMD EPYC VM; docs/benchmarks.md). Leaving only single dots to YNNPACK
keeps its matmuls (with no YNNPACK at all the step was slower).

The option is experimental in XLA, so it is given only where this jaxlib accepts it (one tiny
compilation, once per process, checks), only on CPU, and never over a choice of your own: an
``XLA_FLAGS`` that names ``xla_cpu_experimental_ynn_fusion_type`` wins (flashcore then passes
none). ``FLASHCORE_XLA_OPTIONS=off`` turns them off."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import jax
import numpy as np

__all__ = ["compiler_options", "jit"]

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# XLA's CPU default is INDIVIDUAL_DOT and REDUCE (jaxlib 0.10.2): this is that list less REDUCE
CPU_OPTIONS = {YNN_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def _probe(x):
    return x + 1


@functools.cache
def _accepted(options: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jaxlib compiles with ``options`` (an older or newer XLA may not know them)."""
    try:
        jax.jit(_probe, compiler_options=dict(options)).lower(np.float32(0)).compile()
    except Exception:  # an unknown option or enum value: XLA's error type varies by version
        return False
    return True


def compiler_options(platform: str | None = None) -> dict[str, str]:
    """The XLA options flashcore compiles its steps with on ``platform`` (default: jax's default
    backend): on CPU, YNNPACK for single dots only (see the module doc); elsewhere, with
    ``FLASHCORE_XLA_OPTIONS=off``, with your own ``XLA_FLAGS`` naming the option, or on an XLA
    that does not accept it, none. Returns a new dict, for ``jax.jit(compiler_options=...)``."""
    platform = platform or jax.default_backend()
    if platform != "cpu" or os.environ.get("FLASHCORE_XLA_OPTIONS", "").lower() == "off":
        return {}
    if YNN_OPTION in os.environ.get("XLA_FLAGS", ""):
        return {}
    return dict(CPU_OPTIONS) if _accepted(tuple(CPU_OPTIONS.items())) else {}


def jit(fun: Callable, **kwargs) -> Callable:
    """``jax.jit(fun, **kwargs)`` with :func:`compiler_options` (unless ``kwargs`` has its own
    ``compiler_options``)."""
    if "compiler_options" not in kwargs:
        kwargs["compiler_options"] = compiler_options() or None
    return jax.jit(fun, **kwargs)
