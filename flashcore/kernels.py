"""The backend contract: the one object a backend hands the spec (docs/architecture.md, "Backend
contract").

A backend's array namespace ``xp`` (what every spec function takes) carries one :class:`Kernels`
as ``xp.kernels``; the spec reads it through :func:`of` and nowhere else. A namespace without one
(NumPy, array-api-strict, array-api-compat's wrappers) gets :data:`SPEC`, ``Kernels()``: the
spec's own formulas everywhere. A new backend writes its namespace and one ``Kernels`` and
nothing else.

    fast cores    flash, gau, softmax: a :class:`FastCore` each (or None: the spec's core)
    extras        silu, dense, split_last, erf, log_softmax_last, known_all_false (or None: the
                  spec's formula)
    queries       concrete, is_tracing (or None: a host copy; never tracing)

A fast core is ``run`` (the signature of the spec core it replaces:
:func:`flashcore.layers.attention_core_flash`, :func:`flashcore.layers.attention_core_gau`,
:func:`flashcore.lm.attention_core_softmax`) and ``unsupported(config, call)``: None when ``run``
computes that core for this configuration and this :class:`Call`, else the reason it cannot;
the spec then runs its own core, which is every fast core's oracle.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable
from typing import Any

__all__ = ["Call", "FastCore", "Kernels", "SPEC", "of", "with_kernels", "override", "spec_cores"]


@dataclasses.dataclass(frozen=True)
class Call:
    """What a fast core's guard sees of one call.

    x: the core's value input (v: (b, t, e) for flash and gau; q: (b, n, t, hd) for softmax);
    mask, segment_ids: (b, t) or None; attn_keep: the dropout keep-mask of the attention weights
    or None."""

    x: Any
    mask: Any = None
    segment_ids: Any = None
    attn_keep: Any = None


def _always(config, call: Call) -> None:
    """The guard of a core that takes every call."""
    return None


@dataclasses.dataclass(frozen=True)
class FastCore:
    """A backend's replacement for one spec core: ``run`` with the spec core's signature, taken
    only where ``unsupported(config, call)`` returns None (else it returns why not)."""

    run: Callable
    unsupported: Callable[[Any, Call], str | None] = _always


@dataclasses.dataclass(frozen=True)
class Kernels:
    """Everything a backend hands the spec (see the module doc); every field None is the spec.

    flash, gau, softmax: :class:`FastCore` or None.
    silu(x), erf(x): elementwise; dense(h, kernel, bias) = h W + b (bias may be None);
    split_last(a, sizes) -> pieces of the last axis; log_softmax_last(z) over the last axis;
    known_all_false(rows) -> True only when the bool array is known (cheaply, eagerly) to hold no
    True; concrete(a) -> a NumPy copy, or None while the values are unknown (traced);
    is_tracing() -> True while the library traces (host checks must not run).
    """

    flash: FastCore | None = None
    gau: FastCore | None = None
    softmax: FastCore | None = None
    silu: Callable | None = None
    dense: Callable | None = None
    split_last: Callable | None = None
    erf: Callable | None = None
    log_softmax_last: Callable | None = None
    known_all_false: Callable | None = None
    concrete: Callable | None = None
    is_tracing: Callable | None = None

    def core(self, name: str, config, call: Call) -> Callable | None:
        """The fast core ``name`` ('flash', 'gau', 'softmax') if there is one and it takes this
        call, else None (the spec's core runs)."""
        fast = getattr(self, name)
        if fast is None or fast.unsupported(config, call) is not None:
            return None
        return fast.run

    def reason(self, name: str, config, call: Call) -> str | None:
        """Why the spec's core runs instead of the fast core ``name`` for this call (None: the
        fast core runs)."""
        fast = getattr(self, name)
        return "no fast core" if fast is None else fast.unsupported(config, call)

    def tracing(self) -> bool:
        """True while this backend's library traces (:attr:`is_tracing`)."""
        return self.is_tracing is not None and bool(self.is_tracing())


#: The pure spec: no fast core, no extra, no tracer.
SPEC = Kernels()


def of(xp) -> Kernels:
    """The :class:`Kernels` a namespace carries (``xp.kernels``), :data:`SPEC` for one without."""
    kernels = getattr(xp, "kernels", None)
    return kernels if isinstance(kernels, Kernels) else SPEC


def with_kernels(base, name: str, kernels: Kernels):
    """The namespace ``base`` carrying ``kernels``: a module object named ``name`` with
    ``base``'s functions (a module's, or a namespace object's attributes) and ``kernels``."""
    ns = types.ModuleType(name)
    source = base if isinstance(base, types.ModuleType) else type(base)
    vars(ns).update({k: v for k, v in vars(source).items() if not k.startswith("__")})
    if not isinstance(base, types.ModuleType):  # bound methods of the instance
        vars(ns).update({k: getattr(base, k) for k in dir(base) if not k.startswith("_")})
    ns.kernels = kernels
    return ns


@functools.lru_cache(maxsize=64)
def override(xp, **cores: Callable | None):
    """``xp`` with the fast cores named in ``cores`` replaced by the given functions, taken for
    every call (no guard): how the deprecated ``core=`` / ``attn_core=`` keywords reach the
    contract. None values are ignored; no value given: ``xp`` itself."""
    given = {k: FastCore(v) for k, v in cores.items() if v is not None}
    if not given:
        return xp
    kernels = dataclasses.replace(of(xp), **given)
    return with_kernels(xp, getattr(xp, "__name__", "xp"), kernels)


@functools.lru_cache(maxsize=16)
def spec_cores(xp):
    """``xp`` with every fast core removed (its extras kept): the spec's cores run, the oracle a
    backend's fast cores are tested against."""
    kernels = dataclasses.replace(of(xp), flash=None, gau=None, softmax=None)
    return with_kernels(xp, getattr(xp, "__name__", "xp"), kernels)
