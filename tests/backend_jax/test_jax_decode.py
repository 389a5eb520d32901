"""flashcore.jax.decode: token-by-token decoding under jit / lax.scan equals the full forward
(float32, 1e-5 of scale) across chunk boundaries; generate (greedy, temperature, top-k)."""

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="flashcore.jax needs jax")
jnp = jax.numpy

from _jax_cases import flash_cfg, noisy_params, rel_err  # noqa: E402

import flashcore as fc  # noqa: E402
from flashcore import ops  # noqa: E402
from flashcore.conformance.assertions import assert_greedy_tokens  # noqa: E402
from flashcore.conformance.tolerances import longest_reduction  # noqa: E402
from flashcore.jax import decode, functional  # noqa: E402

scan = jax.jit(decode.scan, static_argnames="config")
apply = jax.jit(functional.apply, static_argnames="config")


def _p32(cfg, seed=0):
    return {k: jnp.asarray(v, jnp.float32) for k, v in noisy_params(cfg, seed).items()}


@pytest.mark.parametrize(
    "opts",
    [dict(), dict(linear_norm="mean", token_shift=True, rel_bias="t5", rope="interleaved")],
    ids=["default", "mean-shift-t5-interleaved"],
)
def test_layer_scan_equals_full_forward(opts):
    cfg = flash_cfg(causal=True, **opts)
    p = _p32(cfg)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 11, 16)), jnp.float32)  # 3 chunks
    outs, state = scan(p, x, decode.init_state(cfg, 2), config=cfg)
    assert int(state["pos"]) == 11
    assert rel_err(outs, apply(p, x, config=cfg)) < 1e-5


@pytest.mark.parametrize(
    "lm_opts",
    [
        dict(),
        dict(tie_embeddings=False, head_bias=True, final_norm="layer", abs_pos="scaled_sinusoidal"),
    ],
    ids=["default", "peer-options"],
)
def test_lm_scan_equals_full_forward_and_continues(lm_opts):
    cfg = fc.LMConfig(block=flash_cfg(causal=True, token_shift=True), vocab_size=13, **lm_opts)
    p = _p32(cfg)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 13, (2, 10)), jnp.int32)
    full = apply(p, tokens, config=cfg)
    # Split the sequence mid-chunk: the state carries across calls.
    first, state = scan(p, tokens[:, :6], decode.init_state(cfg, 2), config=cfg)
    second, state = scan(p, tokens[:, 6:], state, config=cfg)
    assert rel_err(jnp.concatenate([first, second], axis=1), full) < 1e-5
    assert int(state["layers.1"]["pos"]) == 10


def test_decoding_rejects_gau_and_non_causal():
    with pytest.raises(ValueError, match="causal"):
        decode.init_state(flash_cfg(), 1)
    with pytest.raises(ValueError, match="FLASH"):
        decode.init_state(flash_cfg(kind="gau", causal=True), 1)


@pytest.mark.parametrize("pos", [4095, 1_000_003, 3_000_001])
def test_traced_rotary_positions_stay_exact_in_float32(pos):
    """Under jit the position is a traced int32; float32 pos * theta would be off by ~0.1 rad."""
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 8)), jnp.float32)
    rot = jax.jit(lambda x, p: ops.rope_at(x, p, dims=8, mode="half", base=10000.0, xp=jnp))
    got = rot(x, jnp.asarray(pos, jnp.int32))
    ref = ops.rope(
        np.asarray(x, np.float64)[:, None], np.array([pos]), dims=8, mode="half", base=1e4, xp=np
    )[:, 0]
    np.testing.assert_allclose(np.asarray(got), ref, atol=2e-6)


CFG = fc.LMConfig(block=flash_cfg(causal=True), vocab_size=13)


@pytest.fixture(scope="module")
def lm():
    p = _p32(CFG, seed=3)
    prompt = jnp.asarray(np.random.default_rng(4).integers(0, 13, (2, 5)), jnp.int32)
    return p, prompt


def test_greedy_generation_follows_the_full_forward_argmax(lm):
    p, prompt = lm
    out = decode.generate(p, prompt, config=CFG, max_new_tokens=6, greedy=True)
    assert out.shape == (2, 11) and np.array_equal(out[:, :5], prompt)
    logits = apply(p, out[:, :-1], config=CFG)  # position t predicts token t + 1
    # Each new token is the forward's argmax, up to a near tie (decoding sums in another order).
    assert_greedy_tokens(out[:, 5:], logits[:, 4:], reorder=longest_reduction(CFG, out.shape[1]))
    # top_k=1 sampling is greedy whatever the key and temperature: the same decoder on the same
    # logits, so the very same tokens.
    top1 = decode.generate(p, prompt, jax.random.key(9), config=CFG, max_new_tokens=6, top_k=1)
    np.testing.assert_array_equal(top1, out)


def test_sampling_is_reproducible_and_stays_in_the_top_k(lm):
    p, prompt = lm
    kw = dict(config=CFG, max_new_tokens=8, temperature=1.5, top_k=3)
    a = decode.generate(p, prompt, jax.random.key(0), **kw)
    b = decode.generate(p, prompt, jax.random.key(0), **kw)
    c = decode.generate(p, prompt, jax.random.key(1), **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    logits = np.asarray(apply(p, a[:, :-1], config=CFG))[:, 4:]  # (b, 8, v)
    kth = np.sort(logits, axis=-1)[..., -3]
    picked = np.take_along_axis(logits, np.asarray(a[:, 5:])[..., None], axis=-1)[..., 0]
    assert np.all(picked >= kth - 1e-6)


def test_sample_rejects_bad_options():
    logits = jnp.zeros((1, 5))
    with pytest.raises(ValueError, match="key"):
        decode.sample(logits, None)
    with pytest.raises(ValueError, match="temperature"):
        decode.sample(logits, jax.random.key(0), temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        decode.sample(logits, jax.random.key(0), top_k=0)
