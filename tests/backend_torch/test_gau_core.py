"""GAU's fused torch core (flashcore.torch.kernels.gau_core, the ``gau`` fast core of
flashcore.torch.xp.KERNELS that flashcore.gau takes) against the spec's attention_core_gau: the whole layer's output and
its gradients w.r.t. x and every parameter, both paths on the same inputs, with the central
tolerance table; and the guard that sends what the core does not compute to the spec."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import flashcore as fc  # noqa: E402
from flashcore.conformance.tolerances import tolerance  # noqa: E402
from flashcore.kernels import spec_cores  # noqa: E402
from flashcore.torch import GAU, kernels  # noqa: E402
from flashcore.torch.kernels import torch_core  # noqa: E402
from flashcore.torch.xp import xp as xpt  # noqa: E402

SPEC = spec_cores(xpt)  # the same namespace, the spec's cores


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(config, x, params, mask, xp, *, autocast=False):
    """Output and gradients (x, then every parameter by name) of sum(y * cotangent), float64."""
    x = x.detach().clone().requires_grad_(True)
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = fc.gau(p, x, config=config, mask=mask, xp=xp)
    cot = torch.sin(torch.arange(y.numel(), dtype=torch.float64)).reshape(y.shape)
    (y.double() * cot).sum().backward()
    return y.detach().double(), x.grad.double(), {k: v.grad.double() for k, v in p.items()}


def ratio(expected, got, dtype, quantity, scale=None):
    rtol, atol = tolerance(dtype, quantity)
    scale = scale or float(expected.abs().max()) or 1.0
    return float(((got - expected).abs() / (atol * scale + rtol * expected.abs())).max())


CASES = [
    dict(causal=True, rel_bias="learned"),
    dict(causal=False, rel_bias="t5"),
    dict(causal=True, rel_bias="t5", bias_before_scale=True),
    dict(causal=True, rel_bias="none", rope="none"),
    dict(causal=False, rel_bias="learned", length_mode="array", mask=True),
    dict(causal=True, rel_bias="learned", length_mode="array", mask=True),
]


@pytest.mark.parametrize("block", [8, 512], ids=["blocks-of-8", "one-block"])
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("case", range(len(CASES)), ids=lambda i: "-".join(map(str, CASES[i])))
def test_fused_gau_core_equals_the_spec(dtype, case, block, monkeypatch):
    """t = 37: with blocks of 8 query rows, five blocks (the last of 5 rows), each causal one
    reading only the keys up to its last row."""
    monkeypatch.setattr(torch_core, "GAU_BLOCK", block)
    opts = dict(CASES[case])
    masked = opts.pop("mask", False)
    config = fc.FlashConfig(dim=32, kind="gau", qk_dim=16, max_len=64, **opts)
    b, t = 2, 37  # t not a power of two
    params = {k: torch.from_numpy(np.asarray(v)) for k, v in fc.init(config, seed=3).items()}
    x = torch.randn(b, t, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mask = None
    if masked:
        mask = torch.ones(b, t, dtype=torch.bool)
        mask[0, 25:] = False
        mask[1, :3] = False
    autocast = dtype == "bfloat16"
    wdt = torch.float64 if dtype == "float64" else torch.float32  # bf16: float32 under autocast
    params = {k: v.to(wdt) for k, v in params.items()}
    x = x.to(wdt)
    assert kernels.gau_core_path(x, config, mask) == "torch"
    ref = run(config, x, params, mask, SPEC, autocast=autocast)
    got = run(config, x, params, mask, xpt, autocast=autocast)
    assert ratio(ref[0], got[0], dtype, "output") <= 1
    assert ratio(ref[1], got[1], dtype, "grad_input") <= 1
    scale = max(float(g.abs().max()) for g in ref[2].values())
    for name in ref[2]:
        assert ratio(ref[2][name], got[2][name], dtype, "grad_params", scale) <= 1, name


def test_the_fast_path_runs_and_its_result_differs_from_a_broken_one(monkeypatch):
    """The module's forward on the spec's layer (a call the fused layer of test_torch_layer.py
    does not take) goes through gau_core_torch; a planted error there shows up."""
    monkeypatch.setattr(kernels, "layer_path", lambda *a, **k: "spec")
    config = fc.FlashConfig(dim=16, kind="gau", qk_dim=8, causal=True)
    layer = GAU(config, seed=0).double().eval()
    rng = np.random.default_rng(0)  # every weight of order 1, so that the attention matters
    layer.load_canonical({k: rng.standard_normal(np.shape(v)) * 0.5
                          for k, v in fc.init(config, seed=0).items()})  # fmt: skip
    x = torch.randn(1, 20, 16, dtype=torch.float64)
    calls = []
    real = torch_core.gau_core_torch

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(torch_core, "gau_core_torch", spy)
    y = layer(x)
    assert calls
    ref = fc.gau(layer.canonical_params(), x, config=config, xp=SPEC)
    assert torch.allclose(y, ref, rtol=1e-10, atol=1e-10)
    monkeypatch.setattr(torch_core, "gau_core_torch", lambda *a, **kw: 1.01 * real(*a, **kw))
    assert not torch.allclose(layer(x), ref, rtol=1e-6, atol=1e-6)


def test_the_guard_sends_the_rest_to_the_spec():
    base = fc.FlashConfig(dim=16, kind="gau", qk_dim=8, causal=True)
    v = torch.zeros(1, 8, 32)
    mask = torch.ones(1, 8, dtype=torch.bool)
    assert kernels.gau_core_path(v, base) == "torch"
    assert kernels.gau_core_path(v, base, mask) == "spec"  # length_mode 'real': n per row
    assert kernels.gau_core_path(v, dataclasses.replace(base, length_mode="array"), mask) == "torch"
    for change in (dict(length_mode="prefix"), dict(fixed_length=512),
                   dict(attention="softmax_plus")):  # fmt: skip
        assert kernels.gau_core_path(v, dataclasses.replace(base, **change)) == "spec", change
    seg = torch.zeros(1, 8, dtype=torch.int64)
    assert kernels.gau_core_path(v, base, segment_ids=seg) == "spec"
    keep = torch.ones(1, 8, 8, dtype=torch.bool)
    assert kernels.gau_core_path(v, base, attn_keep=keep) == "spec"
    assert kernels.gau_core_path(v.to(torch.int32), base) == "spec"
    flash = fc.FlashConfig(dim=16, kind="flash", qk_dim=8)
    assert kernels.gau_core_path(v, flash) == "spec"
