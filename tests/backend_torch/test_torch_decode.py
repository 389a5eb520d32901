"""Incremental decoding (flashcore.decode) through the torch modules, and LM.generate."""

import pytest

torch = pytest.importorskip("torch", reason="flashcore.torch needs torch")

from _torch_cases import flash_cfg, noisy_params  # noqa: E402

import flashcore as fc  # noqa: E402
import flashcore.torch as ft  # noqa: E402
from flashcore.conformance.assertions import assert_greedy_tokens  # noqa: E402
from flashcore.conformance.tolerances import longest_reduction  # noqa: E402

T = 14  # chunk_size 4: three chunk boundaries

LAYER_OPTIONS = {
    "default": {},
    "mean-shift": dict(linear_norm="mean", token_shift=True),
    "t5-laplace-layer": dict(rel_bias="t5", attention="laplace", norm="layer"),
}


def _layer(opts):
    layer = ft.FLASH(flash_cfg(causal=True, **opts), init=False)
    layer.load_canonical(noisy_params(layer.config))
    return layer


def _lm(block=None, **kw):
    config = fc.LMConfig(block=block or flash_cfg(causal=True), vocab_size=11, num_layers=2, **kw)
    lm = ft.LM(config, init=False)
    lm.load_canonical(noisy_params(config))
    return lm


@pytest.mark.parametrize("opts", LAYER_OPTIONS.values(), ids=LAYER_OPTIONS.keys())
def test_layer_steps_equal_the_forward(opts):
    layer = _layer(opts)
    x = torch.randn(2, T, 16, generator=torch.Generator().manual_seed(0))
    full = layer(x)
    state = layer.decode_init(2)
    with torch.no_grad():
        for i in range(T):
            out, state = layer.step(x[:, i], state)
            torch.testing.assert_close(out, full[:, i], rtol=1e-5, atol=1e-5, msg=f"position {i}")
    assert int(state["pos"]) == T


@pytest.mark.parametrize(
    "kw",
    [{}, dict(tie_embeddings=False, head_bias=True, abs_pos="scaled_sinusoidal")],
    ids=["tied", "untied-abspos"],
)
def test_lm_decode_steps_give_the_forward_logits(kw):
    lm = _lm(**kw)
    tokens = torch.randint(0, 11, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = lm(tokens)  # (b, t, v)
        state = lm.decode_init(2)
        for i in range(T):
            logits, state = lm.decode_step(tokens[:, i], state)
            torch.testing.assert_close(logits, full[:, i], rtol=1e-5, atol=1e-5, msg=f"pos {i}")
    assert set(state) == {"layers.0", "layers.1"}


@pytest.mark.parametrize(
    "block",
    [flash_cfg(causal=True), flash_cfg(kind="gau", causal=True), fc.TransformerConfig(16, 2)],
    ids=["flash", "gau", "transformer"],
)
def test_greedy_generate_equals_argmax_of_the_forward(block):
    lm = _lm(block)
    assert lm.incremental == (block.kind == "flash")
    prompt = torch.randint(0, 11, (2, 3), generator=torch.Generator().manual_seed(2))
    got = lm.generate(prompt, 10, greedy=True)
    assert got.shape == (2, 13) and torch.equal(got[:, :3], prompt)
    with torch.no_grad():  # the forward over each prefix (GAU's 1/T makes logits depend on T)
        logits = torch.stack([lm(got[:, :t])[:, -1] for t in range(3, 13)], dim=1)  # (b, 10, v)
    # Each new token is the forward's argmax, up to a near tie (decoding sums in another order).
    n = longest_reduction(lm.config, got.shape[1])
    assert_greedy_tokens(got[:, 3:], logits, reorder=n)


def test_sampling_is_reproducible_and_top_k_1_is_greedy():
    lm = _lm()
    prompt = torch.randint(0, 11, (3, 2), generator=torch.Generator().manual_seed(3))
    a = lm.generate(prompt, 8, temperature=0.7, generator=torch.Generator().manual_seed(9))
    b = lm.generate(prompt, 8, temperature=0.7, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    assert int(a.min()) >= 0 and int(a.max()) < 11
    assert torch.equal(lm.generate(prompt, 8, top_k=1), lm.generate(prompt, 8, greedy=True))
    assert torch.equal(lm.generate(prompt, 0), prompt)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
    ],
)
def test_generate_rejects_bad_arguments(kw, match):
    lm = _lm()
    args = dict(max_new_tokens=2) | kw
    with pytest.raises(ValueError, match=match):
        lm.generate(torch.zeros(1, 2, dtype=torch.int64), **args)


def test_decoding_needs_a_causal_flash_layer():
    with pytest.raises(ValueError, match="causal"):
        ft.FLASH(flash_cfg(), seed=0).decode_init(1)


def test_generate_refuses_a_bidirectional_lm():
    lm = ft.LM(fc.LMConfig(block=flash_cfg(), vocab_size=11), seed=0)
    assert not lm.incremental
    with pytest.raises(ValueError, match="causal"):
        lm.generate(torch.zeros(1, 2, dtype=torch.int64), 2)
