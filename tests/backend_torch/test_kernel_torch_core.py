"""The blocked torch core (flashcore.torch.kernels.torch_core, the CPU fast path) and the
dispatcher, checked against the spec's attention_core_flash: outputs and the gradients w.r.t.
qq, qk, lq, lk, v and the bias, with the central tolerance table."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

torch = pytest.importorskip("torch")

import flashcore as fc  # noqa: E402
from flashcore.conformance.tolerances import tolerance  # noqa: E402
from flashcore.kernels import spec_cores  # noqa: E402
from flashcore.layers import attention_core_flash  # noqa: E402
from flashcore.torch import kernels  # noqa: E402
from flashcore.torch.kernels import _common  # noqa: E402
from flashcore.torch.kernels.torch_core import attention_core_torch  # noqa: E402
from flashcore.torch.xp import xp as xpt  # noqa: E402

NAMES = ("out", "qq", "qk", "lq", "lk", "v", "bias")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add synchronisation, which on a loaded machine costs
    ~100x the work; restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_inputs(b, t, s, e, c, *, mask, bias, seed=0, dtype=torch.float64):
    """Random core inputs; mask: none | pad (row 0 right-padded) | holes | empty (row 0 all False)."""
    g = torch.Generator().manual_seed(seed)
    heads = [torch.randn(b, t, s, generator=g, dtype=torch.float64) for _ in range(4)]
    v = torch.randn(b, t, e, generator=g, dtype=torch.float64)
    w = 0.5 * torch.randn(c, c, generator=g, dtype=torch.float64) if bias else None
    m = None
    if mask == "pad":
        m = torch.ones(b, t, dtype=torch.bool)
        m[0, t - max(1, t // 3) :] = False
    elif mask == "holes":
        m = torch.rand(b, t, generator=g) > 0.3
        m[:, : min(t, c)] = False  # a whole chunk without a real key
    elif mask == "empty":
        m = torch.ones(b, t, dtype=torch.bool)
        m[0] = False
    cast = (lambda a: a.to(dtype)) if dtype is not None else (lambda a: a)
    return [cast(a) for a in heads] + [cast(v)], (cast(w) if w is not None else None), m


def run(core, args, bias, config, mask, *, autocast=False):
    """Output and gradients of sum(out * cotangent), as float64."""
    args = [a.detach().clone().requires_grad_(True) for a in args]
    bias = bias.detach().clone().requires_grad_(True) if bias is not None else None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = core(*args, bias=bias, config=config, mask=mask, xp=xpt)
    cot = torch.sin(torch.arange(out.numel(), dtype=torch.float64)).reshape(out.shape)
    (out.double() * cot).sum().backward()
    res = [out] + [a.grad for a in args] + ([bias.grad] if bias is not None else [])
    return [r.detach().double() for r in res]


def worst_ratio(expected, got, dtype: str, quantity: str) -> float:
    """max |got - expected| / (atol * scale + rtol * |expected|) with the central tolerances."""
    rtol, atol = tolerance(dtype, quantity)
    scale = float(expected.abs().max()) or 1.0
    bound = atol * scale + rtol * expected.abs()
    return float(((got - expected).abs() / bound).max())


def assert_close_all(ref, got, dtype: str) -> None:
    assert len(ref) == len(got)
    bad = []
    for name, r, g in zip(NAMES, ref, got):
        assert r.shape == g.shape, (name, r.shape, g.shape)
        assert torch.isfinite(g).all(), name
        ratio = worst_ratio(r, g, dtype, "output" if name == "out" else "grad_input")
        if not ratio <= 1.0:
            bad.append(f"{name}: {ratio:.3g} x tolerance")
    assert not bad, "; ".join(bad)


def cfg(**kw) -> fc.FlashConfig:
    base = dict(dim=8, qk_dim=8, chunk_size=16, max_len=32)
    return fc.FlashConfig(**{**base, **kw})


VARIANTS = {
    "causal-sum": dict(causal=True),
    "causal-mean": dict(causal=True, linear_norm="mean"),
    "causal-bias-before-scale": dict(causal=True, bias_before_scale=True),
    "bidir-sum": dict(causal=False),
    "bidir-mean": dict(causal=False, linear_norm="mean"),
    "bidir-length": dict(causal=False, linear_norm="length"),
    "bidir-length-array": dict(causal=False, linear_norm="length", length_mode="array"),
}
SHAPES = {"b2-t37": (2, 37), "b1-t48": (1, 48), "b2-t5": (2, 5), "b1-t1": (1, 1)}
MASKS = ("none", "pad", "holes", "empty")

GRID = [
    pytest.param(v, sh, m, bias, id=f"{v}-{sh}-{m}-{'bias' if bias else 'nobias'}")
    for v, sh, m, bias in itertools.product(VARIANTS, SHAPES, MASKS, (True, False))
    if not (m == "empty" and sh == "b1-t1" and bias is False)
]


@pytest.mark.parametrize("variant, shape, mask, bias", GRID)
def test_torch_core_float64(variant, shape, mask, bias):
    config = cfg(**VARIANTS[variant])
    b, t = SHAPES[shape]
    args, w, m = make_inputs(b, t, 8, 12, 16, mask=mask, bias=bias)
    ref = run(attention_core_flash, args, w, config, m)
    for block in (16, 32, 4096):  # one chunk per block, two, everything in one block

        def core(*a, block=block, **k):
            return attention_core_torch(*a, block_tokens=block, **k)

        assert_close_all(ref, run(core, args, w, config, m), "float64")


@pytest.mark.parametrize("variant", ["causal-sum", "causal-mean", "bidir-sum", "bidir-length"])
@pytest.mark.parametrize("mask", ["none", "holes"])
def test_torch_core_float32(variant, mask):
    """float32 inputs against the spec in float64 on the same values: 1e-5 / 1e-4 of scale."""
    config = cfg(**VARIANTS[variant], chunk_size=32, qk_dim=16)
    args, w, m = make_inputs(2, 101, 16, 24, 32, mask=mask, bias=True, dtype=torch.float32)
    ref = run(attention_core_flash, [a.double() for a in args], w.double(), config, m)
    assert_close_all(ref, run(attention_core_torch, args, w, config, m), "float32")


@pytest.mark.parametrize("variant", ["causal-sum", "bidir-mean"])
@pytest.mark.parametrize("mode", ["autocast", "bf16-inputs"])
def test_torch_core_bfloat16(variant, mode):
    """bf16 matmuls (float32 accumulation and float32 cross-chunk sums) against float64."""
    config = cfg(**VARIANTS[variant], chunk_size=32, qk_dim=16)
    args, w, m = make_inputs(2, 77, 16, 24, 32, mask="pad", bias=True, dtype=torch.float32)
    args = [a.bfloat16().float() for a in args]  # the same values in both runs
    w = w.bfloat16().float()
    ref = run(attention_core_flash, [a.double() for a in args], w.double(), config, m)
    if mode == "autocast":
        got = run(attention_core_torch, args, w, config, m, autocast=True)
    else:
        got = run(attention_core_torch, [a.bfloat16() for a in args], w.bfloat16(), config, m)
    assert_close_all(ref, got, "bfloat16")


def test_torch_core_paper_shape_float32():
    """The benchmark's shapes (C=256, s=128, e=1024), t not a multiple of C, causal."""
    config = fc.FlashConfig(dim=512, causal=True)
    args, w, m = make_inputs(1, 600, 128, 1024, 256, mask="none", bias=True, dtype=torch.float32)
    ref = run(attention_core_flash, [a.double() for a in args], w.double(), config, m)
    assert_close_all(ref, run(attention_core_torch, args, w, config, m), "float32")


def test_no_grad_path_matches():
    """Without autograd the core keeps only one block of R; the output is the same."""
    config = cfg(causal=True)
    args, w, m = make_inputs(2, 70, 8, 12, 16, mask="holes", bias=True)
    ref = attention_core_flash(*args, bias=w, config=config, mask=m, xp=xpt)
    with torch.no_grad():
        got = attention_core_torch(*args, bias=w, config=config, mask=m, block_tokens=32)
    assert worst_ratio(ref, got, "float64", "output") <= 1.0


def test_flash_layer_with_dispatcher_matches_spec():
    """fc.flash on the torch namespace (its fast core, kernels.attention_core) against the spec's
    core (flashcore.kernels.spec_cores): output and parameter gradients (float64)."""
    config = fc.FlashConfig(dim=16, qk_dim=8, chunk_size=8, causal=True, rel_bias="t5")
    params = {k: torch.tensor(a, requires_grad=True) for k, a in fc.init(config, 1).items()}
    x = torch.randn(2, 29, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 29, dtype=torch.bool)
    mask[1, 20:] = False
    results = []
    assert kernels.core_path(x, config, mask) == "torch"  # the fast core takes it
    for xp in (spec_cores(xpt), xpt):
        for p in params.values():
            p.grad = None
        y = fc.flash(params, x, config=config, mask=mask, xp=xp)
        (y * torch.cos(y.detach())).sum().backward()
        results.append([y.detach()] + [p.grad.clone() for p in params.values()])
    for r, g in zip(*results):
        assert worst_ratio(r, g, "float64", "grad_params") <= 1.0


# -- the dispatcher --------------------------------------------------------------------------


def _v(dtype=torch.float32):
    return torch.zeros(1, 4, 8, dtype=dtype)


@pytest.mark.parametrize(
    "kw, mask, seg, path",
    [
        (dict(causal=True), None, None, "torch"),
        (dict(linear_norm="mean"), "mask", None, "torch"),
        (dict(linear_norm="length", bias_before_scale=True), None, None, "torch"),
        (dict(attention="softmax_plus"), None, None, "spec"),
        (dict(attention="laplace"), None, None, "spec"),
        (dict(), None, "seg", "spec"),
    ],
)
def test_dispatch_paths_on_cpu(kw, mask, seg, path):
    config = cfg(**kw)
    m = torch.ones(1, 4, dtype=torch.bool) if mask else None
    s = torch.zeros(1, 4, dtype=torch.int64) if seg else None
    assert kernels.core_path(_v(), config, m, s) == path
    assert kernels.can_use_kernel(_v(), config, m, s) is False  # Triton only for CUDA tensors


def test_dispatch_rejects_non_flash_and_int_mask():
    assert kernels.core_path(_v(), cfg(kind="gau"), None, None) == "spec"
    int_mask = torch.ones(1, 4, dtype=torch.int64)
    assert kernels.core_path(_v(), cfg(), int_mask, None) == "spec"


def test_dispatch_takes_spec_under_torch_func():
    """torch.func.grad sees wrapped tensors: the dispatcher uses the spec, gradients agree."""
    config = cfg(causal=True)
    args, w, m = make_inputs(1, 20, 8, 12, 16, mask="none", bias=True)

    def loss(v):
        return kernels.attention_core(*args[:4], v, bias=w, config=config, xp=xpt).sum()

    got = torch.func.grad(loss)(args[4])
    v = args[4].clone().requires_grad_(True)
    attention_core_torch(*args[:4], v, bias=w, config=config).sum().backward()
    assert worst_ratio(v.grad, got, "float64", "grad_input") <= 1.0


def test_direct_call_rejects_unsupported():
    args, w, _ = make_inputs(1, 8, 8, 12, 16, mask="none", bias=True)
    with pytest.raises(ValueError, match="segment_ids"):
        attention_core_torch(
            *args, bias=w, config=cfg(), segment_ids=torch.zeros(1, 8, dtype=torch.int64)
        )
    with pytest.raises(ValueError, match="relu2"):
        attention_core_torch(*args, bias=w, config=cfg(attention="laplace"))
    with pytest.raises(ValueError, match="bias"):
        attention_core_torch(*args, bias=w[:4, :4], config=cfg())


def test_every_config_field_is_known_to_the_guard():
    """A new FlashConfig field makes the guard refuse (the spec path runs); this test fails so
    that someone decides whether the fused cores must implement it, then lists it."""
    from flashcore.layers import FUSED_CORE_FIELDS

    fields = {f.name for f in dataclasses.fields(fc.FlashConfig)}
    assert fields <= FUSED_CORE_FIELDS, sorted(fields - FUSED_CORE_FIELDS)


def test_a_field_new_to_the_table_makes_every_fused_core_decline():
    from flashcore.layers import FUSED_CORE_LINEAR_NORMS, fused_core_unsupported

    @dataclasses.dataclass(frozen=True)
    class Newer(fc.FlashConfig):
        brand_new: int = 0

    config = Newer(dim=16, qk_dim=8, chunk_size=4)
    for core in FUSED_CORE_LINEAR_NORMS:
        assert "brand_new" in fused_core_unsupported(core, config)
    assert "brand_new" in _common.unsupported_reason(config, None, None)


def test_each_fused_core_reads_its_own_row_of_the_spec_table(monkeypatch):
    """The Triton and the blocked torch core each consult their own row of
    flashcore.layers.FUSED_CORE_LINEAR_NORMS: narrowing one row changes only that core's guard."""
    from flashcore import layers

    config = fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4, linear_norm="mean")
    assert _common.unsupported_reason(config, None, None, core="triton") is None
    monkeypatch.setitem(layers.FUSED_CORE_LINEAR_NORMS, "triton", ("sum",))
    assert "triton" in _common.unsupported_reason(config, None, None, core="triton")
    assert _common.unsupported_reason(config, None, None, core="torch") is None
