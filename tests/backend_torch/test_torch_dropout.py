"""flashcore.torch dropout: train-mode draws from the module's generator, eval mode = the
deterministic layer, keep rates, and the fused cores handing masked calls to the spec."""

import math

import numpy as np
import pytest

import flashcore as fc

torch = pytest.importorskip("torch", reason="flashcore.torch needs torch")

import array_api_compat.torch as xp  # noqa: E402

import flashcore.torch as ft  # noqa: E402
from flashcore.conformance.tolerances import tolerance  # noqa: E402
from flashcore.torch import kernels  # noqa: E402
from flashcore.torch.kernels._common import unsupported_reason  # noqa: E402
from flashcore.torch.layers import draw_dropout  # noqa: E402

D, P = 16, 0.3
CONFIGS = {
    "gau": fc.FlashConfig(dim=D, kind="gau", qk_dim=8, max_len=256, causal=True, dropout=P),
    "flash": fc.FlashConfig(dim=D, qk_dim=8, chunk_size=4, causal=True, dropout=P),
    "transformer": fc.TransformerConfig(dim=D, heads=2, dropout=P),
}
LM_CFG = fc.LMConfig(block=CONFIGS["flash"], vocab_size=19, num_layers=2)


def _noisy(config, seed=0):
    """fc.init plus noise: the init's zero output kernel would hide every dropout effect."""
    rng = np.random.default_rng(seed)
    return {k: v + rng.normal(0, 0.3, v.shape) for k, v in fc.init(config, seed).items()}


def _module(name, dtype=torch.float64):
    module = ft.block_class(CONFIGS[name])(CONFIGS[name], init=False, dtype=dtype)
    module.load_canonical(_noisy(CONFIGS[name]))
    return module


def _x(b=2, t=9, dtype=torch.float64):
    return torch.randn(b, t, D, generator=torch.Generator().manual_seed(0), dtype=dtype)


def within_5_sigma(keep: torch.Tensor, q: float) -> tuple[float, float]:
    n = keep.numel()
    rate = keep.double().mean().item()
    return rate, 5 * math.sqrt(q * (1 - q) / n)


def test_keep_rate_is_binomial():
    module = _module("gau")
    module.generator = torch.Generator().manual_seed(123)
    masks = draw_dropout(module, module.config, 4, 160, "cpu")  # attn: 102,400 entries
    assert masks["attn"].numel() >= 100_000
    for site, keep in masks.items():
        rate, bound = within_5_sigma(keep, 1 - P)
        assert keep.dtype == torch.bool and abs(rate - (1 - P)) <= bound, (site, rate, bound)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_train_mode_draws_and_eval_mode_is_the_deterministic_layer(name):
    module = _module(name)
    plain = ft.block_class(CONFIGS[name])(CONFIGS[name].replace(dropout=0.0), init=False)
    plain = plain.to(torch.float64)
    plain.load_canonical(module.to_canonical())
    x = _x()
    with torch.no_grad():
        a, b = module(x), module(x)  # train mode (the torch default): fresh masks each call
        assert (a - b).abs().max() > 1e-3
        module.eval()
        torch.testing.assert_close(module(x), plain.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_drawn_masks_are_the_ones_applied(name):
    """A train-mode forward equals the spec (torch namespace, the spec's core) given the masks
    the same generator state draws."""
    module = _module(name)
    x = _x()
    module.generator = torch.Generator().manual_seed(7)
    masks = draw_dropout(module, module.config, 2, 9, "cpu")
    module.generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        got = module(x)
        ref = fc.block_fn(module.config)(
            module.canonical_params(), x, config=module.config, xp=xp, dropout=masks
        )
    rtol, atol = tolerance("float64", "output")
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol * ref.abs().max().item())


def test_seeds_reproduce_and_differ():
    module, x = _module("flash"), _x()

    def run(seed):
        module.generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            return module(x)

    torch.testing.assert_close(run(1), run(1), rtol=0, atol=0)  # one code path, same masks
    assert (run(1) - run(2)).abs().max() > 1e-3


def test_fused_cores_hand_masked_calls_to_the_spec(monkeypatch):
    """The blocked torch core (the CPU fast path) takes eval calls; a train-mode call with
    dropout must not reach it, since no fused core applies an attention keep-mask."""
    config = CONFIGS["flash"]
    v = torch.zeros(2, 9, 32)
    keep = torch.ones(fc.dropout_shapes(config, 2, 9)["attn"], dtype=torch.bool)
    assert kernels.core_path(v, config) == "torch"
    assert kernels.core_path(v, config, attn_keep=keep) == "spec"
    assert "dropout" in unsupported_reason(config, None, None, keep)  # Triton's guard too

    def refuse(*args, **kwargs):
        raise AssertionError("the fused core got a dropout call")

    def refuse_layer(*args, **kwargs):
        raise AssertionError("the fused layer got a dropout call")

    monkeypatch.setattr(kernels, "_torch_core", lambda: refuse)
    monkeypatch.setattr(kernels, "flash_layer", refuse_layer)
    module, x = _module("flash", dtype=torch.float32), _x(dtype=torch.float32)
    assert kernels.layer_path(module, x, dropout=fc.dropout_shapes(config, 2, 9)) == "spec"
    module(x).sum().backward()  # train mode with dropout: the spec's layer and core
    module.eval()
    assert kernels.layer_path(module, x) == "fused"
    with pytest.raises(AssertionError, match="fused layer"):
        module(x)  # eval: the fused layer (so the guards above are what kept it away)
    monkeypatch.setattr(kernels, "layer_path", lambda *a, **k: "spec")
    with pytest.raises(AssertionError, match="fused core"):
        module(x)  # eval on the spec's layer: the fused core


def test_lm_trains_with_dropout_and_evaluates_without():
    lm = ft.LM(LM_CFG, init=False, dtype=torch.float64)
    lm.load_canonical(_noisy(LM_CFG))
    tokens = torch.randint(0, 19, (2, 9), generator=torch.Generator().manual_seed(0))
    lm.generator = torch.Generator().manual_seed(0)
    loss = lm.loss(tokens, tokens)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in lm.parameters() if p.grad is not None)
    with torch.no_grad():
        assert (lm(tokens) - lm(tokens)).abs().max() > 0
        lm.eval()
        torch.testing.assert_close(lm(tokens), lm(tokens), rtol=0, atol=0)
        masks = {
            k: torch.ones(s, dtype=torch.bool) for k, s in fc.dropout_shapes(LM_CFG, 2, 9).items()
        }
        scaled = lm(tokens, dropout=masks)  # given masks apply in eval mode too
        assert (scaled - lm(tokens)).abs().max() > 1e-6


def test_context_parallel_still_refuses_training_with_dropout():
    layer = _module("flash", dtype=torch.float32)
    with pytest.raises(NotImplementedError, match="context parallel"):
        ft.layers.check_no_dropout(layer, layer.config)
    layer.eval()
    ft.layers.check_no_dropout(layer, layer.config)
    assert np.isfinite(layer(_x(dtype=torch.float32)).detach().numpy()).all()
