"""Incremental decoding equals the full forward, token by token, across chunk boundaries."""

import array_api_compat.numpy as xp
import numpy as np
import pytest

import flashcore as fc
from flashcore import decode, ops
from flashcore.conformance.assertions import assert_close
from flashcore.conformance.tolerances import longest_reduction

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
    dict(norm_position="post", norm="rms", norm_affine=False, use_bias=False, token_shift=True),
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
        assert_close(out, full[:, i], reorder=longest_reduction(cfg, t), err_msg=f"position {i}")
    assert int(state["pos"]) == t


@pytest.mark.parametrize(
    "lm_opts",
    [
        {},
        dict(tie_embeddings=False, head_bias=True, final_norm="layer", abs_pos="scaled_sinusoidal"),
        dict(final_norm="none", embed_norm="layer", type_vocab_size=2, block_post_norm=True),
    ],
    ids=["default", "peer-options", "gau-alpha-options"],
)
def test_lm_decoding_equals_full_forward(lm_opts):
    lm_opts = dict(lm_opts)
    post = "post" if lm_opts.pop("block_post_norm", False) else "pre"
    block = fc.FlashConfig(
        dim=8, qk_dim=4, chunk_size=3, causal=True, token_shift=True, norm_position=post
    )
    cfg = fc.LMConfig(block=block, vocab_size=11, num_layers=2, **lm_opts)
    p = _params(cfg)
    tokens = rng.integers(0, 11, (2, 10))
    full = fc.lm_logits(p, tokens, config=cfg)
    state = decode.lm_decode_init(cfg, 2, xp=xp, dtype=xp.float64)
    for i in range(10):
        logits, state = decode.lm_decode_step(p, tokens[:, i], state, config=cfg, xp=xp)
        assert_close(
            logits, full[:, i], reorder=longest_reduction(cfg, 10), err_msg=f"position {i}"
        )


@pytest.mark.parametrize("pos", [0, 1, 1023, 1024, 65_537, 3_000_001])
def test_rope_at_is_exact_for_large_positions(pos):
    x = rng.normal(size=(1, 8)).astype(np.float32)
    got = ops.rope_at(x, np.asarray(pos), dims=8, mode="half", base=10000.0, xp=xp)
    ref = ops.rope(
        x.astype(np.float64)[:, None, :], np.array([pos]), dims=8, mode="half", base=10000.0, xp=xp
    )[:, 0]
    assert_close(got, ref, dtype="float32")  # float32 against the float64 angle


@pytest.mark.parametrize("pos", [0, 1023, 1024, 65_537, 3_000_001])
def test_angles_at_host_and_table_paths_agree(pos, monkeypatch):
    """A concrete position takes the host's float64 angle; a traced one (forced here) the split
    tables: the same angles to float32 rounding."""
    like = np.zeros((1, 4), np.float32)
    host = ops.angles_at(np.asarray(pos), dims=8, base=10000.0, xp=xp, like=like)
    monkeypatch.setattr(ops, "_host_position", lambda xp, pos: None)
    table = ops.angles_at(np.asarray(pos), dims=8, base=10000.0, xp=xp, like=like)
    for a, b in zip(host, table):
        assert a.shape == (1, 4) and a.dtype == np.float32
        assert_close(a, b.astype(np.float64), dtype="float32")


@pytest.mark.parametrize("pos", [-1, ops.ROPE_MAX_POSITION])
def test_angles_at_refuses_a_position_outside_the_table(pos):
    with pytest.raises(ValueError, match="outside"):
        ops.angles_at(np.asarray(pos), dims=8, base=10000.0, xp=xp, like=np.zeros((1, 4)))


GAU_OPTIONS = [
    {},
    dict(token_shift=True, rel_bias="t5", rope="interleaved", rope_dims=2),
    dict(attention="softmax_plus", norm="layer", rel_bias="none"),
    dict(attention="laplace", bias_before_scale=True, fixed_length=5),
    dict(length_mode="array", norm_eps_mode="clamp"),
    dict(length_mode="prefix", token_shift=True),
    dict(attention="softmax_plus", rope="interleaved", rel_bias="none", norm="rms",
         norm_affine=False, norm_position="post", use_bias=False, token_shift=True),
]  # fmt: skip


@pytest.mark.parametrize(
    "opts", GAU_OPTIONS, ids=lambda o: "-".join(map(str, o.values())) or "default"
)
def test_gau_cache_step_equals_the_forward_on_the_prefix(opts):
    """Step t equals the last row of the forward on x[:, :t + 1]: n = t + 1 grows exactly."""
    cfg = fc.FlashConfig(dim=8, qk_dim=4, kind="gau", causal=True, max_len=12, **opts)
    p = _params(cfg)
    t = 10
    x = rng.normal(size=(2, t, 8))
    state = decode.decode_init(cfg, 2, capacity=t, xp=xp, dtype=xp.float64)
    for i in range(t):
        out, state = decode.decode_step(p, x[:, i], state, config=cfg, xp=xp)
        want = fc.gau(p, x[:, : i + 1], config=cfg)[:, i]
        assert_close(out, want, reorder=longest_reduction(cfg, t), err_msg=f"position {i}")
    out, _ = decode.decode_step(p, x[:, 0], state, config=cfg, xp=xp)  # the cache is full
    assert np.isnan(out).all()


def test_prefix_length_mode_makes_a_causal_gau_causal():
    """length_mode='prefix': row t of the forward is the real-mode forward on the prefix."""
    cfg = fc.FlashConfig(dim=8, qk_dim=4, kind="gau", causal=True, length_mode="prefix")
    p = _params(cfg)
    x = rng.normal(size=(2, 7, 8))
    full = fc.gau(p, x, config=cfg)
    for i in range(7):
        want = fc.gau(p, x[:, : i + 1], config=cfg.replace(length_mode="real"))[:, i]
        assert_close(full[:, i], want, reorder=longest_reduction(cfg, 7), err_msg=f"row {i}")
    with pytest.raises(ValueError, match="causal"):
        fc.FlashConfig(kind="gau", length_mode="prefix")


def test_transformer_cache_step_equals_the_forward():
    cfg = fc.TransformerConfig(dim=8, heads=2, causal=True, norm="scale")
    p = _params(cfg)
    x = rng.normal(size=(2, 9, 8))
    full = fc.transformer_block(p, x, config=cfg)
    state = decode.decode_init(cfg, 2, capacity=9, xp=xp, dtype=xp.float64)
    for i in range(9):
        out, state = decode.decode_step(p, x[:, i], state, config=cfg, xp=xp)
        assert_close(out, full[:, i], reorder=longest_reduction(cfg, 9), err_msg=f"pos {i}")


LM_BLOCKS = {
    "flash": fc.FlashConfig(dim=8, qk_dim=4, chunk_size=3, causal=True, token_shift=True),
    "gau-prefix": fc.FlashConfig(dim=8, qk_dim=4, kind="gau", causal=True, length_mode="prefix"),
    "gau-fixed": fc.FlashConfig(dim=8, qk_dim=4, kind="gau", causal=True, fixed_length=4),
    "transformer": fc.TransformerConfig(dim=8, heads=2),
}


@pytest.mark.parametrize("name", sorted(LM_BLOCKS))
def test_lm_cache_decoding_equals_the_forward_on_every_prefix(name):
    cfg = fc.LMConfig(
        block=LM_BLOCKS[name], vocab_size=11, num_layers=2, abs_pos="scaled_sinusoidal"
    )
    p = _params(cfg)
    tokens = rng.integers(0, 11, (2, 9))
    state = decode.lm_decode_init(cfg, 2, capacity=9, xp=xp, dtype=xp.float64)
    for i in range(9):
        logits, state = decode.lm_decode_step(p, tokens[:, i], state, config=cfg, xp=xp)
        want = fc.lm_logits(p, tokens[:, : i + 1], config=cfg)[:, i]
        assert_close(logits, want, reorder=longest_reduction(cfg, 9), err_msg=f"pos {i}")


def test_decode_method_and_refusals():
    gau = fc.FlashConfig(dim=8, qk_dim=4, kind="gau", causal=True)
    assert decode.decode_method(gau) == "cache"  # one layer: the last row is exact
    assert decode.decode_method(fc.LMConfig(block=gau, num_layers=1)) == "cache"
    assert decode.decode_method(fc.LMConfig(block=gau, num_layers=2)) == "recompute"
    assert decode.decode_method(fc.LMConfig(block=LM_BLOCKS["flash"])) == "state"
    assert decode.decode_method(fc.LMConfig(block=LM_BLOCKS["transformer"])) == "cache"
    with pytest.raises(ValueError, match="causal"):
        decode.decode_init(fc.FlashConfig(dim=8, qk_dim=4), 1, xp=xp, dtype=xp.float64)
    with pytest.raises(ValueError, match="causal"):
        decode.decode_method(fc.TransformerConfig(dim=8, heads=2, causal=False))
    with pytest.raises(ValueError, match="length_mode='prefix'"):
        decode.lm_decode_init(fc.LMConfig(block=gau), 1, xp=xp, dtype=xp.float64)
    with pytest.raises(ValueError, match="capacity"):
        decode.decode_init(LM_BLOCKS["transformer"], 1, xp=xp, dtype=xp.float64)
    with pytest.raises(ValueError, match="bias span"):
        decode.decode_init(gau, 1, capacity=gau.max_len + 1, xp=xp, dtype=xp.float64)
