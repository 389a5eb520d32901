"""flashcore.jax.decode: token-by-token decoding under jit / lax.scan equals the forward on the
prefix (float64 under jax.enable_x64) for FLASH, GAU and Transformer++; generate over the one
generation loop (greedy, temperature, top-k, ragged prompts)."""

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="flashcore.jax needs jax")
jnp = jax.numpy

from _cases import flash_cfg, noisy_params  # noqa: E402
from _jax64 import x64  # noqa: E402

import flashcore as fc  # noqa: E402
from flashcore import ops  # noqa: E402
from flashcore.conformance.assertions import assert_close, assert_greedy_tokens  # noqa: E402
from flashcore.conformance.tolerances import longest_reduction, tolerance  # noqa: E402
from flashcore.jax import decode, functional  # noqa: E402

scan = jax.jit(decode.scan, static_argnames="config")
apply = jax.jit(functional.apply, static_argnames="config")
RTOL, ATOL = tolerance("float64", "output")

BLOCKS = {
    "flash": flash_cfg(causal=True),
    "flash-mean-shift-t5-interleaved": flash_cfg(
        causal=True, linear_norm="mean", token_shift=True, rel_bias="t5", rope="interleaved"
    ),
    "gau": flash_cfg(kind="gau", causal=True),
    "gau-softmax-plus-t5-shift": flash_cfg(
        kind="gau", causal=True, attention="softmax_plus", rel_bias="t5", token_shift=True
    ),
    "transformer": fc.TransformerConfig(dim=16, heads=2),
}
LM_BLOCKS = {
    "flash": flash_cfg(causal=True, token_shift=True),
    "gau-prefix": flash_cfg(kind="gau", causal=True, length_mode="prefix"),
    "transformer": fc.TransformerConfig(dim=16, heads=2),
}


def _close(got, want, what=""):
    want = np.asarray(want)
    np.testing.assert_allclose(
        np.asarray(got), want, rtol=RTOL, atol=ATOL * np.abs(want).max(), err_msg=what
    )


def _p64(cfg, seed=0):
    return {k: jnp.asarray(v, jnp.float64) for k, v in noisy_params(cfg, seed).items()}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_layer_scan_equals_the_forward_on_every_prefix(name):
    cfg = BLOCKS[name]
    with x64(True):
        p = _p64(cfg)
        x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 11, 16)))  # 3 chunks
        outs, state = scan(p, x, decode.decode_init(cfg, 2, jnp.float64, capacity=11), config=cfg)
        assert int(state["pos"]) == 11 and outs.dtype == jnp.float64
        full = apply(p, x, config=cfg)
        for i in range(11):
            # GAU's n is the sequence length: compare with the forward on the prefix
            want = apply(p, x[:, : i + 1], config=cfg) if cfg.kind == "gau" else full
            _close(outs[:, i], want[:, i], f"position {i}")


@pytest.mark.parametrize("name", sorted(LM_BLOCKS))
def test_lm_scan_equals_the_forward_and_continues(name):
    cfg = fc.LMConfig(
        block=LM_BLOCKS[name], vocab_size=13, tie_embeddings=False, head_bias=True,
        final_norm="layer", abs_pos="scaled_sinusoidal",
    )  # fmt: skip
    with x64(True):
        p = _p64(cfg)
        tokens = jnp.asarray(np.random.default_rng(1).integers(0, 13, (2, 10)), jnp.int32)
        # Split the sequence mid-chunk: the state carries across calls.
        state = decode.decode_init(cfg, 2, jnp.float64, capacity=10)
        first, state = scan(p, tokens[:, :6], state, config=cfg)
        second, state = scan(p, tokens[:, 6:], state, config=cfg)
        # these blocks are causal row by row (GAU with length_mode='prefix'): one forward
        _close(jnp.concatenate([first, second], axis=1), apply(p, tokens, config=cfg))
    assert int(state["layers.1"]["pos"]) == 10


def test_decoding_rejects_non_causal_and_uncacheable_gau():
    with pytest.raises(ValueError, match="causal"):
        decode.decode_init(flash_cfg(), 1)
    gau2 = fc.LMConfig(block=flash_cfg(kind="gau", causal=True), num_layers=2)
    with pytest.raises(ValueError, match="length_mode='prefix'"):
        decode.decode_init(gau2, 1)


@pytest.mark.parametrize("pos", [4095, 1_000_003, 3_000_001])
def test_traced_rotary_positions_stay_exact_in_float32(pos):
    """Under jit the position is a traced int32; float32 pos * theta would be off by ~0.1 rad."""
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 8)), jnp.float32)
    rot = jax.jit(lambda x, p: ops.rope_at(x, p, dims=8, mode="half", base=10000.0, xp=jnp))
    got = rot(x, jnp.asarray(pos, jnp.int32))
    ref = ops.rope(
        np.asarray(x, np.float64)[:, None], np.array([pos]), dims=8, mode="half", base=1e4, xp=np
    )[:, 0]
    assert_close(got, ref, dtype="float32")  # float32 against the float64 angle


GENERATE = {
    "flash": flash_cfg(causal=True),
    "gau": flash_cfg(kind="gau", causal=True),  # two layers whose n grows: recompute
    "transformer": fc.TransformerConfig(dim=16, heads=2),
}


@pytest.mark.parametrize("name", sorted(GENERATE))
def test_greedy_generation_follows_the_forward_argmax(name):
    cfg = fc.LMConfig(block=GENERATE[name], vocab_size=13)
    p = {k: jnp.asarray(v, jnp.float32) for k, v in noisy_params(cfg, 3).items()}
    prompt = np.random.default_rng(4).integers(0, 13, (2, 5))
    lengths = np.array([5, 3])
    out = decode.generate(p, prompt, config=cfg, max_new_tokens=4, temperature=0, lengths=lengths)
    assert out.shape == (2, 9) and out.dtype == np.int64
    for i, n in enumerate(lengths):
        row = out[i, : n + 4]
        np.testing.assert_array_equal(row[:n], prompt[i, :n])
        logits = apply(p, jnp.asarray(row[None, :-1]), config=cfg)[0]  # t predicts t + 1
        # the forward's argmax, up to a near tie (decoding sums in another order)
        assert_greedy_tokens(
            row[None, n:], logits[None, n - 1 :], reorder=longest_reduction(cfg, 9)
        )
        assert np.all(out[i, n + 4 :] == 0)


def test_sampling_is_reproducible_and_stays_in_the_top_k():
    cfg = fc.LMConfig(block=flash_cfg(causal=True), vocab_size=13)
    p = {k: jnp.asarray(v, jnp.float32) for k, v in noisy_params(cfg, 3).items()}
    prompt = np.random.default_rng(4).integers(0, 13, (2, 5))
    kw = dict(config=cfg, max_new_tokens=8, temperature=1.5, top_k=3)
    a = decode.generate(p, prompt, seed=0, **kw)
    b = decode.generate(p, prompt, seed=0, **kw)
    c = decode.generate(p, prompt, seed=1, **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    logits = np.asarray(apply(p, jnp.asarray(a[:, :-1]), config=cfg))[:, 4:]  # (b, 8, v)
    kth = np.sort(logits, axis=-1)[..., -3]
    picked = np.take_along_axis(logits, a[:, 5:, None], axis=-1)[..., 0]
    assert np.all(picked >= kth - 1e-6)
    top1 = decode.generate(p, prompt, seed=9, **kw | dict(top_k=1))
    np.testing.assert_array_equal(top1, decode.generate(p, prompt, **kw | dict(temperature=0)))


def test_generate_rejects_bad_options():
    cfg = fc.LMConfig(block=flash_cfg(causal=True), vocab_size=13)
    p = functional.init(cfg, jax.random.key(0))
    for kw, match in [(dict(temperature=-1.0), "temperature"), (dict(top_k=0), "top_k")]:
        with pytest.raises(ValueError, match=match):
            decode.generate(p, np.zeros((1, 2), int), config=cfg, max_new_tokens=2, **kw)
    with pytest.raises(ValueError, match=r"\[0, 13\)"):
        decode.generate(p, np.full((1, 2), 13), config=cfg, max_new_tokens=2)


@pytest.mark.parametrize("name", ["flash", "gau", "transformer"])
def test_module_methods_decode_as_the_functions(name):
    """The NNX modules' decode_init / decode_step (the names of every backend) follow the forward
    on the prefix, as the functions do; the LM's generate is decode.generate on its weights."""
    from flashcore.jax import LM, block_class

    cfg = BLOCKS[name]
    with x64(True):
        p = _p64(cfg)
        layer = block_class(cfg)(cfg, params=p)
        x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 5, 16)))
        state = layer.decode_init(2, capacity=5)
        assert state["pos"].shape == () and int(state["pos"]) == 0
        for i in range(5):
            y, state = layer.decode_step(x[:, i], state)
            _close(y, apply(p, x[:, : i + 1], config=cfg)[:, i], f"position {i}")
    lm_cfg = fc.LMConfig(block=GENERATE[name], vocab_size=13)
    lp = {k: jnp.asarray(v, jnp.float32) for k, v in noisy_params(lm_cfg, 3).items()}
    lm = LM(lm_cfg, params=lp)
    prompt = np.random.default_rng(4).integers(0, 13, (2, 5))
    kw = dict(temperature=1.5, top_k=3, seed=2)
    want = decode.generate(lp, prompt, config=lm_cfg, max_new_tokens=3, **kw)
    np.testing.assert_array_equal(lm.generate(prompt, 3, **kw), want)  # the same function
    if fc.decode.decode_method(lm_cfg) != "recompute":  # (two GAU layers rerun the forward)
        logits, st = lm.decode_step(prompt[:, 0], lm.decode_init(2, capacity=5))
        assert logits.shape == (2, 13) and int(st["layers.0"]["pos"]) == 1
