"""Incremental decoding equals the full forward, token by token, across chunk boundaries."""

import array_api_compat.numpy as xp
import numpy as np
import pytest

import flashcore as fc
from flashcore import decode, ops

rng = np.random.default_rng(0)


def _params(cfg, seed=0):
    r = np.random.default_rng(seed)
    return {k: v + r.normal(0, 0.3, v.shape) for k, v in fc.init(cfg, seed, np.float64).items()}


OPTIONS = [
    {},
    dict(linear_norm="mean", token_shift=True),
    dict(attention="laplace", rel_bias="t5", rope="interleaved", rope_dims=2),
    dict(attention="softmax_plus", norm="layer", rel_bias="none"),
    dict(norm_eps_mode="clamp", bias_before_scale=True, rel_bias="t5", bias_scale=2.0),
]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(map(str, o.values())) or "default")
def test_layer_decoding_equals_full_forward(opts):
    cfg = fc.FlashConfig(dim=8, qk_dim=4, chunk_size=4, causal=True, **opts)
    p = _params(cfg)
    t = 14  # three chunk boundaries
    x = rng.normal(size=(2, t, 8))
    full = fc.flash(p, x, config=cfg)
    state = decode.decode_init(cfg, 2, xp=xp, dtype=xp.float64)
    for i in range(t):
        out, state = decode.decode_step(p, x[:, i], state, config=cfg, xp=xp)
        np.testing.assert_allclose(out, full[:, i], atol=1e-12, err_msg=f"position {i}")
    assert int(state["pos"]) == t


@pytest.mark.parametrize(
    "lm_opts",
    [
        {},
        dict(tie_embeddings=False, head_bias=True, final_norm="layer", abs_pos="scaled_sinusoidal"),
    ],
    ids=["default", "peer-options"],
)
def test_lm_decoding_equals_full_forward(lm_opts):
    block = fc.FlashConfig(dim=8, qk_dim=4, chunk_size=3, causal=True, token_shift=True)
    cfg = fc.LMConfig(block=block, vocab_size=11, num_layers=2, **lm_opts)
    p = _params(cfg)
    tokens = rng.integers(0, 11, (2, 10))
    full = fc.lm_logits(p, tokens, config=cfg)
    state = decode.lm_decode_init(cfg, 2, xp=xp, dtype=xp.float64)
    for i in range(10):
        logits, state = decode.lm_decode_step(p, tokens[:, i], state, config=cfg, xp=xp)
        np.testing.assert_allclose(logits, full[:, i], atol=1e-12)


@pytest.mark.parametrize("pos", [0, 1, 1023, 1024, 65_537, 3_000_001])
def test_rope_at_is_exact_for_large_positions(pos):
    x = rng.normal(size=(1, 8)).astype(np.float32)
    got = ops.rope_at(x, np.asarray(pos), dims=8, mode="half", base=10000.0, xp=xp)
    ref = ops.rope(
        x.astype(np.float64)[:, None, :], np.array([pos]), dims=8, mode="half", base=10000.0, xp=xp
    )[:, 0]
    np.testing.assert_allclose(got, ref, atol=2e-6)


def test_decoding_rejects_non_causal_and_gau():
    with pytest.raises(ValueError, match="causal"):
        decode.decode_init(fc.FlashConfig(dim=8, qk_dim=4), 1, xp=xp, dtype=xp.float64)
    with pytest.raises(ValueError, match="FLASH"):
        decode.decode_init(
            fc.FlashConfig(dim=8, qk_dim=4, kind="gau", causal=True), 1, xp=xp, dtype=xp.float64
        )
