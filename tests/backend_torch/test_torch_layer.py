"""The fused FLASH and GAU layers (flashcore.torch.kernels.torch_layer, the CPU fast path of
flashcore.torch.FLASH and GAU) against the spec's layer on the same module and inputs: the output and
the gradients w.r.t. x and every parameter, in float64, float32, bfloat16 autocast and bfloat16
weights, with the central tolerance table; and the guard (kernels.layer_path) that decides."""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")
compat = pytest.importorskip("array_api_compat.torch")

import flashcore as fc  # noqa: E402
from flashcore.conformance.tolerances import tolerance  # noqa: E402
from flashcore.layers import attention_core_flash  # noqa: E402
from flashcore.torch import FLASH, GAU, kernels  # noqa: E402
from flashcore.torch.kernels.torch_layer import fused_layer_reason, layer_unsupported  # noqa: E402
from flashcore.torch.xp import xp  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cfg(**kw) -> fc.FlashConfig:
    base = dict(dim=16, qk_dim=8, expansion=2, chunk_size=16, max_len=64, causal=True)
    return fc.FlashConfig(**{**base, **kw})


def make_layer(config, dtype=torch.float64, seed=0):
    """A FLASH or GAU layer with every weight away from its init (gamma, beta, biases, the bias
    table all nonzero), so that a dropped term shows."""
    layer = (FLASH if config.kind == "flash" else GAU)(config, seed=seed, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_((0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64)).to(p.dtype))
    return layer


def make_x(b, t, d, dtype, mask_kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, d, generator=g, dtype=torch.float64).to(dtype)
    mask = None
    if mask_kind == "pad":
        mask = torch.ones(b, t, dtype=torch.bool)
        mask[0, t - max(1, t // 3) :] = False
    elif mask_kind == "holes":
        mask = torch.rand(b, t, generator=g) > 0.3
        mask[:, 0] = True
    return x, mask


def run(layer, x, mask, *, spec: bool, autocast: bool = False):
    """Output and gradients (x and every parameter) of sum(out * cotangent), float64."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        if spec and layer.config.kind == "flash":
            p = layer.canonical_params()
            y = fc.flash(p, x, config=layer.config, mask=mask, xp=xp, core=attention_core_flash)
        elif spec:  # the plain namespace: no fused core, SiLU or dense hook
            y = fc.gau(layer.canonical_params(), x, config=layer.config, mask=mask, xp=compat)
        else:
            assert kernels.layer_path(layer, x, mask) == "fused"
            y = layer(x, mask=mask)
    cot = torch.sin(torch.arange(y.numel(), dtype=torch.float64)).reshape(y.shape)
    (y.double() * cot).sum().backward()
    grads = {"x": x.grad.double()}
    grads.update({n: p.grad.double() for n, p in layer.named_parameters()})
    return y.detach().double(), grads


def check(ref, got, dtype: str) -> None:
    """Output at the 'output' tolerance, x's gradient at 'grad_input', the parameters' together
    at 'grad_params' (scale: the largest of them), each elementwise; failures listed."""
    (y0, g0), (y1, g1) = ref, got
    bad = []

    def judge(name, a, b, quantity, scale):
        rtol, atol = tolerance(dtype, quantity)
        assert a.shape == b.shape, name
        if not torch.isfinite(b).all():
            bad.append(f"{name}: not finite")
            return
        ratio = float(((b - a).abs() / (atol * scale + rtol * a.abs())).max())
        if not ratio <= 1.0:
            bad.append(f"{name}: {ratio:.3g} x tolerance")

    judge("out", y0, y1, "output", float(y0.abs().max()) or 1.0)
    judge("x", g0["x"], g1["x"], "grad_input", float(g0["x"].abs().max()) or 1.0)
    params = [n for n in g0 if n != "x"]
    scale = max(float(g0[n].abs().max()) for n in params) or 1.0
    for n in params:
        judge(n, g0[n], g1[n], "grad_params", scale)
    assert not bad, "; ".join(bad)


VARIANTS = {
    "causal": dict(),
    "causal-rms": dict(norm="rms"),
    "causal-mean": dict(linear_norm="mean"),
    "causal-t5-before-scale": dict(rel_bias="t5", bias_before_scale=True),
    "causal-no-bias-no-rope": dict(rel_bias="none", rope="none"),
    "causal-partial-rope": dict(rope_dims=4),
    "bidir": dict(causal=False),
    "bidir-rms-mean": dict(causal=False, norm="rms", linear_norm="mean"),
    "bidir-length": dict(causal=False, linear_norm="length"),
    "bidir-length-array-e3": dict(causal=False, linear_norm="length", length_mode="array",
                                  expansion=3),
}  # fmt: skip
GAU_VARIANTS = {
    "gau-causal": dict(kind="gau"),
    "gau-causal-rms-t5": dict(kind="gau", norm="rms", rel_bias="t5", bias_before_scale=True),
    "gau-bidir-no-rope": dict(kind="gau", causal=False, rope="none"),
    "gau-bidir-array": dict(kind="gau", causal=False, length_mode="array", rope_dims=4),
}
SHAPES = {"b2-t37": (2, 37), "b1-t48": (1, 48), "b3-t5": (3, 5), "b1-t1": (1, 1)}
MASKS = ("none", "pad", "holes")


@pytest.mark.parametrize(
    "variant, shape, mask_kind",
    list(itertools.product(VARIANTS, SHAPES, MASKS))
    + [  # GAU with a key mask: only length_mode='array' is fused (the scale 1 / t)
        (v, sh, m)
        for v, sh, m in itertools.product(GAU_VARIANTS, SHAPES, MASKS)
        if m == "none" or v == "gau-bidir-array"
    ],
)
def test_fused_layer_equals_the_spec_in_float64(variant, shape, mask_kind):
    config = cfg(**{**VARIANTS, **GAU_VARIANTS}[variant])
    layer = make_layer(config)
    b, t = SHAPES[shape]
    x, mask = make_x(b, t, config.dim, torch.float64, mask_kind)
    check(run(layer, x, mask, spec=True), run(layer, x, mask, spec=False), "float64")


LOW = {"causal": VARIANTS["causal"], "bidir-rms-mean": VARIANTS["bidir-rms-mean"],
       "gau-bidir-array": GAU_VARIANTS["gau-bidir-array"]}  # fmt: skip


@pytest.mark.parametrize("variant", LOW)
@pytest.mark.parametrize("mask_kind", ["none", "pad"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_layer_equals_the_spec_in_float32_and_under_bfloat16_autocast(
    variant, mask_kind, dtype
):
    """float32 weights and x; 'bfloat16': under CPU autocast, where both paths run bf16 matmuls
    (the parameters stay float32)."""
    config = cfg(**LOW[variant], dim=32, qk_dim=16)
    layer = make_layer(config, dtype=torch.float32)
    x, mask = make_x(2, 45, config.dim, torch.float32, mask_kind)
    autocast = dtype == "bfloat16"
    ref = run(layer, x, mask, spec=True, autocast=autocast)
    check(ref, run(layer, x, mask, spec=False, autocast=autocast), dtype)
    assert all(p.dtype == torch.float32 for p in layer.parameters())


@pytest.mark.parametrize("kind", ["flash", "gau"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_fused_layer_equals_the_spec_with_low_precision_weights(dtype, kind):
    """bf16 / fp16 weights and x: the output stays in that dtype; the core runs in float32."""
    config = cfg(dim=32, qk_dim=16, kind=kind, length_mode="array")
    layer = make_layer(config, dtype=dtype)
    x, mask = make_x(2, 45, config.dim, dtype, "pad")
    got = run(layer, x, mask, spec=False)
    check(run(layer, x, mask, spec=True), got, "bfloat16")
    assert layer(x).dtype == dtype


def test_no_grad_forward_equals_the_training_forward():
    config = cfg()
    layer = make_layer(config)
    x, mask = make_x(2, 37, config.dim, torch.float64, "pad")
    with torch.no_grad():
        y = layer(x, mask=mask)
    assert not y.requires_grad
    torch.testing.assert_close(y, layer(x, mask=mask).detach(), rtol=1e-12, atol=1e-12)


def test_padded_positions_are_zero_and_get_no_gradient():
    config = cfg()
    layer = make_layer(config)
    x, mask = make_x(2, 37, config.dim, torch.float64, "pad")
    x.requires_grad_(True)
    y = layer(x, mask=mask)
    assert bool((y[~mask] == 0).all())  # filled, not computed
    y.sum().backward()
    assert bool((x.grad[~mask] == 0).all())


@pytest.mark.parametrize("kind", ["flash", "gau"])
def test_module_forward_takes_the_fused_layer(monkeypatch, kind):
    """FLASH.forward / GAU.forward run the fused layer when the guard passes, the spec otherwise."""
    calls = []
    name = f"{kind}_layer"
    real = getattr(kernels, name)
    monkeypatch.setattr(kernels, name, lambda *a: calls.append(1) or real(*a))
    layer = make_layer(cfg(kind=kind))
    x, _ = make_x(1, 20, 16, torch.float64, "none")
    layer(x)
    assert calls == [1]
    layer(x, segment_ids=torch.zeros(1, 20, dtype=torch.int64))
    assert calls == [1]


def _reason(config=None, **kw):
    layer = kw.pop("layer", None) or make_layer(config or cfg())
    x = kw.pop("x", None)
    if x is None:
        x = torch.randn(1, 20, layer.config.dim, dtype=torch.float64)
    return fused_layer_reason(layer, x, **kw)


@pytest.mark.parametrize(
    "config_kw, words",
    [
        (dict(token_shift=True), "token_shift"),
        (dict(rope="interleaved"), "rope"),
        (dict(norm="layer"), "norm"),
        (dict(norm_eps_mode="clamp"), "norm"),
        (dict(attention="laplace"), "relu2"),
        (dict(norm_position="post"), "post-norm"),
        (dict(norm_affine=False), "parameter-free"),
        (dict(use_bias=False), "bias-free"),
    ],
)
def test_configurations_outside_the_fused_layer_take_the_spec(config_kw, words):
    config = cfg(**config_kw)
    assert words in layer_unsupported(config)
    assert words in _reason(config)


def test_gau_scales_other_than_one_over_t_take_the_spec():
    for kw in (dict(fixed_length=64), dict(length_mode="prefix")):
        assert "not fused" in _reason(cfg(kind="gau", **kw))
    layer = make_layer(cfg(kind="gau"))  # length_mode 'real': a key mask changes n per row
    x = torch.randn(2, 20, 16, dtype=torch.float64)
    assert _reason(layer=layer, x=x) is None
    assert "mask" in _reason(layer=layer, x=x, mask=torch.ones(2, 20, dtype=torch.bool))


def test_calls_outside_the_fused_layer_take_the_spec():
    layer = make_layer(cfg())
    x = torch.randn(2, 20, 16, dtype=torch.float64)
    assert _reason(layer=layer, x=x) is None
    assert "segment_ids" in _reason(layer=layer, x=x, segment_ids=torch.zeros(2, 20))
    keep = {"attn": torch.ones(1)}
    assert "dropout" in _reason(layer=layer, x=x, dropout=keep)
    bad = x.clone()
    bad[1, 3, 2] = float("nan")
    assert "NaN" in _reason(layer=layer, x=bad)
    assert "(b, t, d)" in _reason(layer=layer, x=torch.randn(2, 20, 8, dtype=torch.float64))
    assert "mask" in _reason(layer=layer, x=x, mask=torch.ones(2, 20))
    assert "dtype" in _reason(layer=layer, x=x.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "autocast" in _reason(layer=layer, x=x)
    wrapped = []
    torch.func.vmap(lambda a: wrapped.append(_reason(layer=layer, x=a[None])) or a)(x)
    assert "plain" in wrapped[0]


def test_a_nan_input_keeps_the_spec_containment():
    """A NaN row reaches exactly what the spec says (the call goes to the spec's layer)."""
    config = cfg()
    layer = make_layer(config)
    x, _ = make_x(1, 40, config.dim, torch.float64, "none")
    x[0, 20, 3] = float("nan")
    with torch.no_grad():
        y = layer(x)
        ref = fc.flash(layer.canonical_params(), x, config=config, xp=xp)
    assert bool(torch.isnan(y[0, 20:]).all()) and bool(torch.isfinite(y[0, :20]).all())
    torch.testing.assert_close(y[0, :20], ref[0, :20], rtol=1e-10, atol=1e-10)


def test_bad_input_still_gets_the_spec_errors():
    layer = make_layer(cfg())
    with pytest.raises(ValueError, match="feature size 8"):
        layer(torch.randn(1, 5, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="mask must be bool"):
        layer(torch.randn(1, 5, 16, dtype=torch.float64), mask=torch.ones(1, 5))


@pytest.mark.parametrize("kind", ["flash", "gau"])
def test_lm_runs_its_blocks_through_the_fused_layer(monkeypatch, kind):
    """LM.loss hands flashcore.lm_loss its block modules (blocks=lm.layers): each block takes
    the fused layer, and the loss and every gradient equal the spec's LM on the same weights."""
    from flashcore.torch import LM

    block = cfg(kind=kind, length_mode="array")
    config = fc.LMConfig(block=block, vocab_size=23, num_layers=2)
    lm = LM(config, seed=0, dtype=torch.float64)
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3),
                                     dtype=torch.float64))  # fmt: skip
    calls = []
    name = f"{kind}_layer"
    real = getattr(kernels, name)
    monkeypatch.setattr(kernels, name, lambda *a: calls.append(1) or real(*a))
    tokens = torch.randint(0, 23, (2, 37), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 37, dtype=torch.bool)
    mask[1, 30:] = False

    def grads(loss):
        lm.zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in lm.named_parameters()}

    got = grads(lm.loss(tokens, tokens, mask=mask))
    assert len(calls) == 2
    core = dict(core=attention_core_flash) if kind == "flash" else {}
    spec_xp = xp if kind == "flash" else compat
    p = lm.canonical_params()
    ref = grads(fc.lm_loss(p, tokens, tokens, config=config, mask=mask, xp=spec_xp, **core))
    assert len(calls) == 2
    rtol, atol = tolerance("float64", "loss")
    torch.testing.assert_close(got[0], ref[0], rtol=rtol, atol=atol * float(ref[0].abs()))
    scale = max(float(g.abs().max()) for g in ref[1].values())
    rtol, atol = tolerance("float64", "grad_params")
    for n in ref[1]:
        torch.testing.assert_close(got[1][n], ref[1][n], rtol=rtol, atol=atol * scale, msg=n)


@pytest.mark.parametrize("n, rows", [(1, 256), (7, 3), (12, 4), (16, 256)])
def test_learned_bias_equals_the_spec_table_and_its_gradient(monkeypatch, n, rows):
    """The fused layer's Toeplitz learned bias (and its diagonal-sum backward, a block of rows
    at a time) against the spec's rel_bias gather in float64."""
    import numpy as np

    from flashcore import ops
    from flashcore.torch.kernels import torch_layer

    monkeypatch.setattr(torch_layer, "_BIAS_ROWS", rows)
    config = fc.FlashConfig(dim=8, qk_dim=8, kind="gau", max_len=16, bias_scale=0.5)
    layer = GAU(config).double()
    w = layer.rel_bias.weight
    like = torch.empty(0, dtype=torch.float64)
    pos = np.arange(n)
    ref = ops.rel_bias(w, pos, pos, config=config, xp=xp, like=like)
    got = torch_layer._rel_bias(layer, n, like)
    cot = torch.randn(n, n, dtype=torch.float64)
    (g_ref,) = torch.autograd.grad((ref * cot).sum(), w)
    (g_got,) = torch.autograd.grad((got * cot).sum(), w)
    rtol, atol = tolerance("float64", "output")
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)
    rtol, atol = tolerance("float64", "grad_params")
    torch.testing.assert_close(g_got, g_ref, rtol=rtol, atol=atol)
