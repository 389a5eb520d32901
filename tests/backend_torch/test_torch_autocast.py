"""CPU autocast (bfloat16, float16) and low-precision weights: finite and close to float32."""

import pytest

torch = pytest.importorskip("torch", reason="flashcore.torch needs torch")

from _torch_cases import ALL_CONFIGS, module_for, noisy_params, sample_inputs  # noqa: E402

import flashcore as fc  # noqa: E402

NAMES = ["flash", "flash-causal-t5-layer-shift", "gau-causal-laplace", "transformer", "lm-flash"]
CASES = [
    pytest.param(n, d, id=f"{n}-{str(d).split('.')[1]}")
    for n in NAMES
    for d in (torch.bfloat16, torch.float16)
]

# Relative to the float32 output's largest magnitude: a few roundings of an 8-bit (bf16) or
# 11-bit (fp16) mantissa through one layer (or a 2-layer LM).
TOL = {torch.bfloat16: 5e-2, torch.float16: 1e-2}


def _run(config, module, dtype_ctx):
    x, mask, seg = sample_inputs(config, dtype=torch.float32)
    with dtype_ctx:
        out = module(x, mask=mask, segment_ids=seg)
    if isinstance(config, fc.LMConfig):
        loss = module.cross_entropy(out, torch.roll(x, -1, 1), mask)
    else:
        loss = (out.float() * torch.linspace(-1, 1, out.shape[-1])).sum()
    loss.backward()
    return out.detach().float(), {n: p.grad for n, p in module.named_parameters()}


def _build(config):
    m = module_for(config, init=False)
    m.load_canonical(noisy_params(config))
    return m


@pytest.mark.parametrize("name,dtype", CASES)
def test_autocast_is_finite_and_close_to_float32(name, dtype):
    config = ALL_CONFIGS[name]
    ref, ref_grads = _run(config, _build(config), torch.autocast("cpu", enabled=False))
    module = _build(config)
    got, grads = _run(config, module, torch.autocast("cpu", dtype=dtype))
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert torch.isfinite(got).all()
    err = (got - ref).abs().max() / ref.abs().max()
    assert err < TOL[dtype], f"{name} {dtype}: {err:.3g}"
    for n, g in grads.items():
        assert g is not None and torch.isfinite(g).all(), n
        gerr = (g - ref_grads[n]).abs().max() / ref_grads[n].abs().max().clamp_min(1e-30)
        assert gerr < 5 * TOL[dtype], f"{name} {dtype} grad {n}: {gerr:.3g}"


@pytest.mark.parametrize("name", ["flash", "gau-causal-laplace", "lm-flash"])
def test_bfloat16_weights_run_the_core_in_float32(name, monkeypatch):
    """With bf16 weights and inputs the output is bf16, and the attention core sees float32."""
    import flashcore.layers as layers

    seen = []
    real_attend = layers.ops.attend

    def spy(scores, *a, **kw):
        seen.append(scores.dtype)
        return real_attend(scores, *a, **kw)

    monkeypatch.setattr(layers.ops, "attend", spy)
    config = ALL_CONFIGS[name]
    module = _build(config).to(torch.bfloat16)
    x, mask, seg = sample_inputs(config, dtype=torch.bfloat16)
    out = module(x, mask=mask, segment_ids=seg)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert seen and set(seen) == {torch.float32}
