"""The Transformer++ core on torch's scaled_dot_product_attention against the spec's softmax core
(flashcore.lm.attention_core_softmax) on the same inputs: outputs and gradients, causal or not,
with padding and segments, in float64, float32 and bfloat16; and the guard."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch backend needs torch")

import flashcore as fc  # noqa: E402
from flashcore.conformance.assertions import assert_close  # noqa: E402
from flashcore.lm import attention_core_softmax  # noqa: E402
from flashcore.torch import TransformerBlock, kernels  # noqa: E402
from flashcore.torch.kernels import sdpa  # noqa: E402
from flashcore.torch.xp import xp  # noqa: E402

B, N, T, HD = 2, 2, 13, 8
DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}


def _inputs(kind: str):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, N, T, HD, generator=g, dtype=torch.float64) for _ in range(3))
    mask = seg = None
    if kind == "padding":
        mask = torch.ones(B, T, dtype=torch.bool)
        mask[0, 9:] = False
        mask[1, :2] = False  # left padding: a causal query there has no real key at all
    if kind == "segments":
        seg = torch.tensor([[0] * 5 + [1] * 8, [0] * 13])
    return q, k, v, mask, seg


def _run(core, q, k, v, dtype, **kw):
    leaves = [a.to(dtype).detach().requires_grad_() for a in (q, k, v)]
    out = core(*leaves, xp=xp, **kw)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    real = kw.get("mask")
    weight = cot if real is None else cot * real[:, None, :, None]  # padded queries: the block
    (out.double() * weight).sum().backward()  # zeroes them, so nothing flows back from there
    keep = real[:, None, :, None] if real is not None else torch.ones(1, 1, 1, 1, dtype=torch.bool)
    return out.double() * keep, [a.grad.double() for a in leaves]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", ["plain", "padding", "segments"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_sdpa_core_equals_the_spec_core(causal, kind, dtype):
    config = fc.TransformerConfig(dim=N * HD, heads=N, causal=causal)
    q, k, v, mask, seg = _inputs(kind)
    kw = dict(config=config, mask=mask, segment_ids=seg)
    assert sdpa.softmax_core_path(q.to(DTYPES[dtype]), config, mask, seg) == "sdpa"
    got, got_grads = _run(kernels.softmax_core, q, k, v, DTYPES[dtype], **kw)
    if dtype == "float64":  # the same math summed another way
        want, want_grads = _run(attention_core_softmax, q, k, v, torch.float64, **kw)
        assert_close(got, want, reorder=T)
        for a, b in zip(got_grads, want_grads):
            assert_close(a, b, reorder=T, scale=float(b.abs().max()))
    else:  # against the spec in float64, on the conformance table's row for the dtype
        want, want_grads = _run(attention_core_softmax, q, k, v, torch.float64, **kw)
        assert_close(got, want, dtype=dtype)
        for a, b in zip(got_grads, want_grads):
            assert_close(a, b, dtype=dtype, quantity="grad_input", scale=float(b.abs().max()))


def test_the_guard_sends_dropout_masks_and_transforms_to_the_spec():
    config = fc.TransformerConfig(dim=16, heads=2, dropout=0.1)
    q = torch.zeros(1, 2, 4, 8)
    keep = torch.ones(1, 2, 4, 4, dtype=torch.bool)
    assert sdpa.softmax_core_path(q, config) == "sdpa"
    assert sdpa.softmax_core_path(q, config, attn_keep=keep) == "spec"
    seen = []
    torch.func.vmap(lambda a: seen.append(sdpa.softmax_core_path(a, config)) or a)(q)
    assert seen == ["spec"]


def test_the_block_takes_sdpa_and_equals_the_spec_block(monkeypatch):
    config = fc.TransformerConfig(dim=16, heads=2, causal=True)
    block = TransformerBlock(config, seed=0, dtype=torch.float64)
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*a, **kw):
        calls.append(1)
        return real_sdpa(*a, **kw)

    monkeypatch.setattr(sdpa.F, "scaled_dot_product_attention", counting)
    got = block(x)
    assert calls, "the block did not take the SDPA core"
    params = {k: v.detach().numpy() for k, v in block.to_canonical(tensors=True).items()}
    want = fc.transformer_block(params, x.numpy(), config=config)
    assert_close(got.detach(), want, reorder=int(np.prod([16])))
