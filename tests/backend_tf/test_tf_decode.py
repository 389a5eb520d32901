"""Incremental decoding in a compiled tf.function equals the full forward, token by token, across
chunk boundaries (float32)."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="the TF backend needs tensorflow")

import flashcore as fc  # noqa: E402
from flashcore.conformance.tolerances import tolerance  # noqa: E402
from flashcore.tf import FLASH, GAU, LM  # noqa: E402

rng = np.random.default_rng(0)
RTOL, ATOL = tolerance("float32", "output")  # 1e-5, relative to the tensor's scale


def _noisy(cfg, seed=0):
    r = np.random.default_rng(seed)
    return {k: v + r.normal(0, 0.3, v.shape) for k, v in fc.init(cfg, seed).items()}


def _close(got, want, what):
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL * np.abs(want).max(), err_msg=what)


@pytest.mark.parametrize(
    "opts",
    [{}, dict(linear_norm="mean", token_shift=True, attention="laplace", rel_bias="t5")],
    ids=["default", "mean-shift-laplace-t5"],
)
def test_layer_decoding_equals_full_forward(opts):
    cfg = fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4, causal=True, **opts)
    layer = FLASH(cfg, params=_noisy(cfg))
    t = 11  # two chunk boundaries and a partial chunk
    x = rng.normal(size=(2, t, 16)).astype(np.float32)
    full = layer(x).numpy()
    step = tf.function(layer.decode_step, jit_compile=True)
    state = layer.decode_init(2)
    for i in range(t):
        out, state = step(tf.constant(x[:, i]), state)
        _close(out.numpy(), full[:, i], f"position {i}")
    assert int(state["pos"]) == t
    assert step.experimental_get_tracing_count() == 1  # one compiled step for every position


LM_OPTIONS = {
    "tied": {},
    "peer-options": dict(
        tie_embeddings=False, head_bias=True, final_norm="layer", abs_pos="scaled_sinusoidal"
    ),
}


@pytest.mark.parametrize("name", sorted(LM_OPTIONS))
def test_lm_decoding_equals_full_forward_logits(name):
    block = fc.FlashConfig(dim=16, qk_dim=8, chunk_size=3, causal=True, token_shift=True)
    cfg = fc.LMConfig(block=block, vocab_size=11, num_layers=2, **LM_OPTIONS[name])
    lm = LM(cfg, params=_noisy(cfg))
    tokens = rng.integers(0, 11, (2, 10))
    full = lm(tf.constant(tokens)).numpy()
    step = tf.function(lm.decode_step, jit_compile=True)
    state = lm.decode_init(2)
    for i in range(tokens.shape[1]):
        logits, state = step(tf.constant(tokens[:, i]), state)
        _close(logits.numpy(), full[:, i], f"position {i}")
    assert step.experimental_get_tracing_count() == 1


def test_decoding_is_only_for_causal_flash():
    with pytest.raises(ValueError, match="causal=True"):
        FLASH(fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4)).decode_init(1)
    gau = fc.LMConfig(block=fc.FlashConfig(dim=16, qk_dim=8, kind="gau", causal=True))
    with pytest.raises(ValueError, match="kind='flash'"):
        LM(gau).decode_init(1)
    assert not hasattr(GAU, "decode_step")
