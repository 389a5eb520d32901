"""The backend contract (flashcore.kernels): one Kernels object per namespace, read in one place;
the spec takes a fast core exactly where its guard gives no reason, and its own core otherwise."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import re
from pathlib import Path

import array_api_compat.numpy as xnp
import numpy as np
import pytest

import flashcore as fc
from flashcore import kernels
from flashcore.conformance.assertions import assert_close

ROOT = Path(__file__).resolve().parents[1]
_NEEDS = {"torch": "torch", "jax": "jax", "tf": "tensorflow"}


def test_the_spec_reads_the_namespace_in_one_place():
    """No optional ``getattr(xp, ...)`` hook in the spec: only flashcore/kernels.py looks up what
    a namespace carries."""
    hooks = []
    for path in sorted((ROOT / "flashcore").glob("*.py")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"getattr\(xp, \"", line) and path.name != "kernels.py":
                hooks.append(f"{path.name}:{i}: {line.strip()}")
    assert not hooks, hooks


def test_a_namespace_without_kernels_is_the_spec():
    assert kernels.of(xnp) is kernels.SPEC
    assert kernels.of(np) is kernels.SPEC
    assert kernels.SPEC == kernels.Kernels()


@pytest.mark.parametrize("backend", sorted(_NEEDS))
def test_every_backend_namespace_carries_its_one_kernels(backend):
    if importlib.util.find_spec(_NEEDS[backend]) is None:
        pytest.skip(f"{_NEEDS[backend]} is not installed")
    module = importlib.import_module(f"flashcore.{backend}.xp")
    assert isinstance(module.KERNELS, kernels.Kernels)
    assert kernels.of(module.xp) is module.KERNELS
    assert module.KERNELS.softmax is not None  # every backend has a fast Transformer++ core
    no_cores = kernels.of(kernels.spec_cores(module.xp))
    assert (no_cores.flash, no_cores.gau, no_cores.softmax) == (None, None, None)
    assert no_cores.erf is module.KERNELS.erf  # the extras stay


def _flash(xp, core=None):
    config = fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4, causal=True)
    params = fc.init(config, seed=0)
    x = np.random.default_rng(0).normal(size=(2, 10, 16))
    return fc.flash(params, x, config=config, xp=xp, core=core)


def _planted(reason):
    """A namespace whose flash core is the spec's times 1.01, behind a guard giving ``reason``."""
    from flashcore.layers import attention_core_flash

    def off(*args, **kwargs):
        return 1.01 * attention_core_flash(*args, **kwargs)

    fast = kernels.FastCore(off, lambda config, call: reason)
    return kernels.with_kernels(xnp, "planted", dataclasses.replace(kernels.SPEC, flash=fast))


def test_the_spec_takes_a_fast_core_only_where_its_guard_has_no_reason():
    want = _flash(xnp)
    assert_close(_flash(_planted("not this call")), want)  # declined: the spec's core
    with pytest.raises(AssertionError):
        assert_close(_flash(_planted(None)), want)  # taken: its (planted) error shows


def test_core_keyword_is_an_alias_through_the_contract():
    want = _flash(xnp)
    planted = kernels.of(_planted(None)).flash.run
    with pytest.raises(AssertionError):
        assert_close(_flash(xnp, core=planted), want)
    assert kernels.of(kernels.override(xnp, flash=planted)).flash.run is planted
    assert kernels.override(xnp) is xnp
