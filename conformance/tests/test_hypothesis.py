"""Hypothesis-generated configs, shapes, masks and segment layouts: every selected backend against
the spec on NumPy in float64. Derandomized by default (CI); HYPOTHESIS_PROFILE=long explores more.
A failure prints a snippet that rebuilds the failing call."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import flashcore as fc
from flashcore.conformance import golden
from flashcore.conformance.adapters import load_adapter
from flashcore.conformance.runner import compare
from flashcore.conformance.tolerances import tolerance

settings.register_profile(
    "ci", derandomize=True, max_examples=12, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.register_profile(
    "long", max_examples=300, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@st.composite
def layer_cases(draw):
    kind = draw(st.sampled_from(["flash", "gau"]))
    qk = draw(st.sampled_from([2, 4, 6]))
    cfg = fc.FlashConfig(
        dim=draw(st.sampled_from([3, 4, 8])),
        kind=kind,
        expansion=draw(st.sampled_from([1, 2])),
        qk_dim=qk,
        chunk_size=draw(st.integers(1, 6)),
        causal=draw(st.booleans()),
        attention=draw(st.sampled_from(["relu2", "laplace", "softmax_plus"])),
        rope=draw(st.sampled_from(["half", "interleaved", "none"])),
        rel_bias=draw(st.sampled_from(["learned", "t5", "none"])),
        max_len=16,
        t5_buckets=draw(st.sampled_from([4, 8])),
        t5_max_distance=draw(st.sampled_from([5, 16])),
        norm=draw(st.sampled_from(["scale", "layer", "rms"])),
        linear_norm=draw(st.sampled_from(["sum", "mean"] if kind == "flash" else ["sum"])),
        token_shift=draw(st.booleans()),
    )
    b = draw(st.integers(1, 3))
    t = draw(st.integers(1, 16))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.normal(size=(b, t, cfg.dim)), "cotangent": rng.normal(size=(b, t, cfg.dim))}
    if draw(st.booleans()):
        mask = rng.random((b, t)) > draw(st.sampled_from([0.0, 0.3, 0.7]))
        inputs["mask"] = mask
    if draw(st.booleans()):
        # contiguous runs: cut points chosen at random
        cuts = np.sort(rng.integers(0, t + 1, size=(b, 3)), axis=1)
        pos = np.arange(t)[None, :]
        inputs["segment_ids"] = (pos[:, :, None] >= cuts[:, None, :]).sum(-1).astype(
            np.int64
        ) * 3 + 1
    params = {k: v + rng.normal(0, 0.5, v.shape) for k, v in fc.init(cfg, seed, np.float64).items()}
    return cfg, params, inputs, seed


def _snippet(cfg, inputs, seed) -> str:
    shapes = {k: v.shape for k, v in inputs.items()}
    return (
        f"# reproduce:\nimport flashcore as fc\ncfg = {cfg!r}\n"
        f"# inputs {shapes}, drawn from numpy.random.default_rng({seed}) as in test_hypothesis.layer_cases"
    )


@given(case=layer_cases())
def test_backend_matches_spec_on_random_configs(backend, case):
    adapter, reason = load_adapter(backend)
    if adapter is None:
        pytest.skip(f"backend {backend} {reason}")
    cfg, params, inputs, seed = case
    note(_snippet(cfg, inputs, seed))
    expected = golden.spec_output(cfg, params, inputs)
    dtype = "float64" if "float64" in adapter.dtypes else "float32"
    with adapter.strict_precision():
        res = adapter.run(cfg, params, inputs, dtype)
    rtol, atol = tolerance(dtype, "output")
    err, worst = compare(expected, res.output, rtol, atol)
    assert err <= 1.0, f"{backend} {dtype}: error {err:.3g} x tolerance at {worst}"
    if res.grads is not None and adapter.autodiff:
        torch = pytest.importorskip(
            "torch", reason="reference gradients come from torch autodiff of the spec"
        )
        del torch
        from flashcore.conformance.generate import autodiff_grads

        _, ref = autodiff_grads(cfg, params, inputs)
        for name, g in ref.items():
            quantity = "grad_input" if name == "x" else "grad_params"
            rtol, atol = tolerance(dtype, quantity)
            err, worst = compare(g, res.grads[name], rtol, atol)
            assert err <= 1.0, f"{backend} {dtype} {name}: error {err:.3g} x tolerance at {worst}"
