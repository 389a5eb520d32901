"""Incremental decoding (flashcore.decode) through the torch modules, in float64, and
LM.generate over the one generation loop (flashcore.generation)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="flashcore.torch needs torch")

from _torch_cases import flash_cfg, noisy_params  # noqa: E402

import flashcore as fc  # noqa: E402
import flashcore.torch as ft  # noqa: E402
from flashcore.conformance.assertions import assert_greedy_tokens  # noqa: E402
from flashcore.conformance.tolerances import longest_reduction, tolerance  # noqa: E402

T = 14  # chunk_size 4: three chunk boundaries
RTOL, ATOL = tolerance("float64", "output")

BLOCKS = {
    "flash": flash_cfg(causal=True),
    "flash-mean-shift": flash_cfg(causal=True, linear_norm="mean", token_shift=True),
    "flash-t5-laplace-layer": flash_cfg(
        causal=True, rel_bias="t5", attention="laplace", norm="layer"
    ),
    "gau": flash_cfg(kind="gau", causal=True),
    "gau-t5-softmax-plus-shift": flash_cfg(
        kind="gau", causal=True, rel_bias="t5", attention="softmax_plus", token_shift=True
    ),
    "gau-prefix": flash_cfg(kind="gau", causal=True, length_mode="prefix"),
    "transformer": fc.TransformerConfig(dim=16, heads=2),
}


def _close(got, want, what):
    scale = float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL * scale, msg=what)


def _module(config):
    cls = ft.block_class(config)
    m = cls(config, init=False, dtype=torch.float64)
    m.load_canonical(noisy_params(config))
    return m.eval()


def _lm(block=None, dtype=torch.float32, **kw):
    config = fc.LMConfig(block=block or flash_cfg(causal=True), vocab_size=11, num_layers=2, **kw)
    lm = ft.LM(config, init=False, dtype=dtype)
    lm.load_canonical(noisy_params(config))
    return lm.eval()


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_layer_steps_equal_the_forward_on_the_prefix(name):
    layer = _module(BLOCKS[name])
    x = torch.randn(2, T, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    state = layer.decode_init(2, capacity=T)
    with torch.no_grad():
        for i in range(T):
            out, state = layer.decode_step(x[:, i], state)
            _close(out, layer(x[:, : i + 1])[:, i], f"position {i}")
    assert int(state["pos"]) == T


LM_BLOCKS = {k: BLOCKS[k] for k in ("flash-mean-shift", "gau-prefix", "transformer")}


@pytest.mark.parametrize("name", sorted(LM_BLOCKS))
def test_lm_decode_steps_give_the_forward_logits(name):
    config = fc.LMConfig(
        block=LM_BLOCKS[name], vocab_size=11, num_layers=2, tie_embeddings=False, head_bias=True,
        abs_pos="scaled_sinusoidal",
    )  # fmt: skip
    lm = _module(config)
    tokens = torch.randint(0, 11, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        state = lm.decode_init(2, capacity=T)
        for i in range(T):
            logits, state = lm.decode_step(tokens[:, i], state)
            _close(logits, lm(tokens[:, : i + 1])[:, i], f"position {i}")
    assert set(state) == {"layers.0", "layers.1"}


GENERATE = {
    "flash": flash_cfg(causal=True),
    "gau": flash_cfg(kind="gau", causal=True),  # two layers, n grows: recompute
    "gau-prefix": flash_cfg(kind="gau", causal=True, length_mode="prefix"),
    "transformer": fc.TransformerConfig(16, 2),
}
METHODS = {"flash": "state", "gau": "recompute", "gau-prefix": "cache", "transformer": "cache"}


@pytest.mark.parametrize("name", sorted(GENERATE))
def test_greedy_generate_equals_argmax_of_the_forward(name):
    lm = _lm(GENERATE[name], dtype=torch.float64)
    assert lm.decode_method == METHODS[name]
    prompt = torch.randint(0, 11, (2, 3), generator=torch.Generator().manual_seed(2))
    got = lm.generate(prompt, 10, temperature=0)
    assert got.shape == (2, 13) and torch.equal(got[:, :3], prompt)
    with torch.no_grad():  # the forward over each prefix (GAU's 1/T makes logits depend on T)
        logits = torch.stack([lm(got[:, :t])[:, -1] for t in range(3, 13)], dim=1)  # (b, 10, v)
    # Each new token is the forward's argmax, up to a near tie (decoding sums in another order).
    assert_greedy_tokens(got[:, 3:], logits, reorder=longest_reduction(lm.config, 13))


@pytest.mark.parametrize("name", sorted(GENERATE))
def test_prompts_of_different_lengths_decode_as_if_alone(name):
    lm = _lm(GENERATE[name])
    prompt = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(4))
    lengths = np.array([5, 2, 4])
    kw = dict(temperature=0.8, top_k=5, seed=7)
    both = lm.generate(prompt, 4, lengths=lengths, **kw)
    assert both.shape == (3, 9)
    for i, n in enumerate(lengths):  # the layout: prompt, 4 new tokens, then zeros
        assert torch.equal(both[i, :n], prompt[i, :n]) and torch.all(both[i, n + 4 :] == 0)
    # each row is fed its own tokens at its own positions: greedy rows equal decoding alone
    greedy = lm.generate(prompt, 4, lengths=lengths, temperature=0)
    for i, n in enumerate(lengths):
        assert torch.equal(
            greedy[i, : n + 4], lm.generate(prompt[i : i + 1, :n], 4, temperature=0)[0]
        )


def test_sampling_is_reproducible_and_top_k_1_is_greedy():
    lm = _lm()
    prompt = torch.randint(0, 11, (3, 2), generator=torch.Generator().manual_seed(3))
    a = lm.generate(prompt, 8, temperature=0.7, seed=9)
    b = lm.generate(prompt, 8, temperature=0.7, seed=9)
    c = lm.generate(prompt, 8, temperature=0.7, seed=10)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < 11
    assert torch.equal(lm.generate(prompt, 8, top_k=1), lm.generate(prompt, 8, temperature=0))
    assert torch.equal(lm.generate(prompt, 0), prompt)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(lengths=np.array([3])), "lengths"),
    ],
)
def test_generate_rejects_bad_arguments(kw, match):
    lm = _lm()
    args = dict(max_new_tokens=2) | kw
    with pytest.raises(ValueError, match=match):
        lm.generate(torch.zeros(1, 2, dtype=torch.int64), **args)
    with pytest.raises(ValueError, match=r"\[0, 11\)"):
        lm.generate(torch.full((1, 2), 11), 2)


def test_decoding_needs_a_causal_block():
    with pytest.raises(ValueError, match="causal"):
        ft.FLASH(flash_cfg(), seed=0).decode_init(1)
    lm = ft.LM(fc.LMConfig(block=flash_cfg(), vocab_size=11), seed=0)
    with pytest.raises(ValueError, match="causal"):
        lm.generate(torch.zeros(1, 2, dtype=torch.int64), 2)
