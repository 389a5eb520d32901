"""Incremental decoding in a compiled tf.function equals the forward, token by token (float64):
FLASH's state across chunk boundaries, GAU and Transformer++ key/value caches."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="the TF backend needs tensorflow")

import flashcore as fc  # noqa: E402
from flashcore.conformance.tolerances import tolerance  # noqa: E402
from flashcore.tf import LM, block_class  # noqa: E402

rng = np.random.default_rng(0)
RTOL, ATOL = tolerance("float64", "output")


def _noisy(cfg, seed=0):
    r = np.random.default_rng(seed)
    return {k: v + r.normal(0, 0.3, v.shape) for k, v in fc.init(cfg, seed, np.float64).items()}


def _close(got, want, what):
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL * np.abs(want).max(), err_msg=what)


def _flash(**kw):
    return fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4, causal=True, max_len=16, **kw)


BLOCKS = {
    "flash": _flash(),
    "flash-mean-shift-laplace-t5": _flash(
        linear_norm="mean", token_shift=True, attention="laplace", rel_bias="t5"
    ),
    "gau": _flash(kind="gau"),
    "gau-softmax-plus-shift-t5": _flash(
        kind="gau", attention="softmax_plus", token_shift=True, rel_bias="t5"
    ),
    "transformer": fc.TransformerConfig(dim=16, heads=2),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_layer_decoding_equals_the_forward_on_the_prefix(name):
    cfg = BLOCKS[name]
    layer = block_class(cfg)(cfg, params=_noisy(cfg), dtype="float64")
    t = 11  # two chunk boundaries and a partial chunk
    x = rng.normal(size=(2, t, 16))
    full = layer(x).numpy()
    step = tf.function(layer.decode_step, jit_compile=True)
    state = layer.decode_init(2, capacity=t)
    for i in range(t):
        out, state = step(tf.constant(x[:, i]), state)
        want = layer(x[:, : i + 1]).numpy()[:, i] if cfg.kind == "gau" else full[:, i]
        _close(out.numpy(), want, f"position {i}")
    assert int(state["pos"]) == t
    assert step.experimental_get_tracing_count() == 1  # one compiled step for every position


LM_BLOCKS = {
    "flash": _flash(token_shift=True),
    "gau-prefix": _flash(kind="gau", length_mode="prefix"),
    "transformer": fc.TransformerConfig(dim=16, heads=2),
}


@pytest.mark.parametrize("name", sorted(LM_BLOCKS))
def test_lm_decoding_equals_full_forward_logits(name):
    cfg = fc.LMConfig(
        block=LM_BLOCKS[name], vocab_size=11, num_layers=2, tie_embeddings=False, head_bias=True,
        final_norm="layer", abs_pos="scaled_sinusoidal",
    )  # fmt: skip
    lm = LM(cfg, params=_noisy(cfg), dtype="float64")
    tokens = rng.integers(0, 11, (2, 10))
    full = lm(tf.constant(tokens)).numpy()  # row by row causal: one forward
    step = tf.function(lm.decode_step, jit_compile=True)
    state = lm.decode_init(2, capacity=10)
    for i in range(tokens.shape[1]):
        logits, state = step(tf.constant(tokens[:, i]), state)
        _close(logits.numpy(), full[:, i], f"position {i}")
    assert step.experimental_get_tracing_count() == 1


def test_decoding_needs_a_causal_block_and_an_exact_cache():
    with pytest.raises(ValueError, match="causal=True"):
        block_class(_flash())(fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4)).decode_init(1)
    gau = fc.LMConfig(block=_flash(kind="gau"), num_layers=2)
    with pytest.raises(ValueError, match="length_mode='prefix'"):
        LM(gau).decode_init(1)


def test_generate_traces_its_loop_once_and_sees_later_weight_updates():
    """A second ``generate`` with the same sampler reuses the traced loop (no retrace), a new
    sampler gets its own, and weights assigned after the first call are what the next one
    samples with (the loop reads the variables, not a copy taken when it was traced)."""
    cfg = fc.LMConfig(block=_flash(), vocab_size=11, num_layers=2)
    p0, p1 = ({k: v.astype(np.float32) for k, v in _noisy(cfg, seed).items()} for seed in (1, 2))
    lm, other = LM(cfg, params=p0), LM(cfg, params=p1)
    prompt = rng.integers(0, 11, (2, 3))
    first = lm.generate(prompt, 6, seed=3, top_k=5)
    _, run = lm._generation_fns({"temperature": 1.0, "top_k": 5, "top_p": None})
    traced = run.experimental_get_tracing_count()
    np.testing.assert_array_equal(lm.generate(prompt, 6, seed=3, top_k=5), first)
    assert run.experimental_get_tracing_count() == traced
    lm.generate(prompt, 6, seed=3, temperature=0)
    assert run.experimental_get_tracing_count() == traced  # greedy: another loop
    for mine, theirs in zip(lm.weights, other.weights, strict=True):
        mine.assign(theirs)
    want = other.generate(prompt, 6, seed=3, top_k=5)
    assert not np.array_equal(want, first)  # else stale weights would pass unseen
    np.testing.assert_array_equal(lm.generate(prompt, 6, seed=3, top_k=5), want)
    assert run.experimental_get_tracing_count() == traced
