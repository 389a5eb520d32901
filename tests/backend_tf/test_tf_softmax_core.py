"""The Transformer++ core in TF ops (flashcore.tf.kernels.softmax_core)
against the spec's softmax core (flashcore.lm.attention_core_softmax) on the same inputs, both
under tf.function(jit_compile=True): outputs and gradients w.r.t. q, k, v, causal or not, with
padding and segments, in float64, float32 and bfloat16, in one block and in several; the guard
(dropout masks go to the spec); the block and the LM take it by default."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="the TF backend needs tensorflow")
pytest.importorskip("keras", reason="the TF backend needs keras")

from _cases import SOFTMAX_SHAPE, softmax_core_inputs  # noqa: E402

import flashcore as fc  # noqa: E402
from flashcore.conformance.assertions import assert_close  # noqa: E402
from flashcore.lm import attention_core_softmax  # noqa: E402
from flashcore.tf import LM, TransformerBlock, kernels  # noqa: E402
from flashcore.tf.xp import xp  # noqa: E402

B, N, T, HD = SOFTMAX_SHAPE
_inputs = softmax_core_inputs
DTYPES = {"float64": tf.float64, "float32": tf.float32, "bfloat16": tf.bfloat16}


def _run(core, q, k, v, dtype, mask=None, segment_ids=None, **kw):
    """core's output and its gradients w.r.t. q, k, v of sum(out * cotangent), in one XLA-compiled
    tf.function; rows of padded queries left out (the block zeroes them, so nothing flows back
    from there). -> NumPy float64."""
    m = None if mask is None else tf.constant(mask)
    s = None if segment_ids is None else tf.constant(segment_ids)
    cot = np.random.default_rng(1).standard_normal((B, N, T, HD))
    keep = np.ones((1, 1, 1, 1), bool) if mask is None else mask[:, None, :, None]
    wide = tf.float64 if dtype == tf.float64 else tf.float32
    weight = tf.constant(cot * keep, wide)

    @tf.function(jit_compile=True, autograph=False)
    def step(q, k, v):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            out = core(q, k, v, mask=m, segment_ids=s, xp=xp, **kw)
            loss = tf.reduce_sum(tf.cast(out, wide) * weight)
        return out, tape.gradient(loss, [q, k, v])

    out, grads = step(*(tf.constant(a, dtype) for a in (q, k, v)))
    as64 = lambda a: tf.cast(a, tf.float64).numpy()  # noqa: E731
    return as64(out) * keep, [as64(g) for g in grads]


@pytest.mark.parametrize("block", [None, 5], ids=["one-block", "blocks-of-5"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", ["plain", "padding", "segments"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_fused_core_equals_the_spec_core(causal, kind, dtype, block):
    config = fc.TransformerConfig(dim=N * HD, heads=N, causal=causal)
    q, k, v, mask, seg = _inputs(kind)
    dt = DTYPES[dtype]
    assert kernels.softmax_core_path(tf.constant(q, dt), config, mask, seg) == "fused"
    kw = dict(config=config, mask=mask, segment_ids=seg)
    got, got_grads = _run(kernels.softmax_core, q, k, v, dt, block=block, **kw)
    want, want_grads = _run(attention_core_softmax, q, k, v, tf.float64, **kw)
    if dtype == "float64":  # the same math summed another way
        assert_close(got, want, reorder=T)
        for name, a, b in zip("qkv", got_grads, want_grads):
            scale = float(np.abs(b).max())
            assert_close(a, b, reorder=T, scale=scale, err_msg=f"d{name}")
    else:  # against the spec in float64, on the conformance table's row for the dtype
        assert_close(got, want, dtype=dtype)
        for name, a, b in zip("qkv", got_grads, want_grads):
            scale = float(np.abs(b).max())
            assert_close(a, b, dtype=dtype, quantity="grad_input", scale=scale, err_msg=f"d{name}")


def _count_fused(monkeypatch) -> list:
    """Count calls of the fused graph (kernels._fused, what kernels.softmax_core runs when its
    guard allows)."""
    calls = []
    real = kernels._fused

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(kernels, "_fused", counting)
    return calls


def test_the_guard_sends_dropout_masks_to_the_spec(monkeypatch):
    calls = _count_fused(monkeypatch)
    config = fc.TransformerConfig(dim=N * HD, heads=N, dropout=0.25)
    q, k, v = (tf.constant(a, tf.float32) for a in _inputs("plain")[:3])
    keep = tf.constant(np.random.default_rng(4).random((B, N, T, T)) < 0.75)
    assert kernels.softmax_core_path(q, config) == "fused"
    assert kernels.softmax_core_path(q, config, attn_keep=keep) == "spec"
    got = kernels.softmax_core(q, k, v, config=config, attn_keep=keep, xp=xp)
    assert not calls, "a dropout keep-mask reached the fused graph"
    want = attention_core_softmax(q, k, v, config=config, attn_keep=keep, xp=xp)
    assert_close(got, want, reorder=T)
    kernels.softmax_core(q, k, v, config=config, xp=xp)
    assert calls, "without a keep-mask the core did not take the fused graph"


@pytest.mark.parametrize("batch", ["static", "unknown"])
def test_the_block_takes_the_fused_core_and_equals_the_spec_block(monkeypatch, batch):
    """TransformerBlock takes the fused core, compiled (jit_compile=True) with a static batch
    and with an unknown one (one example at a time under tf.map_fn); forward and parameter
    gradients equal the spec's block."""
    config = fc.TransformerConfig(dim=16, heads=2, causal=True)
    block = TransformerBlock(config, seed=0)
    r = np.random.default_rng(2)
    x = tf.constant(r.standard_normal((2, 11, 16)), tf.float32)
    mask = np.ones((2, 11), bool)
    mask[1, 7:] = False
    cot = tf.constant(r.standard_normal((2, 11, 16)), tf.float32)
    calls = _count_fused(monkeypatch)
    spec = (None, 11, 16) if batch == "unknown" else (2, 11, 16)

    @tf.function(
        jit_compile=True,
        autograph=False,
        input_signature=[tf.TensorSpec(spec, tf.float32), tf.TensorSpec(spec[:2], tf.bool)],
    )
    def step(x, m):
        with tf.GradientTape() as tape:
            out = block(x, mask=m)
            loss = tf.reduce_sum(out * cot)
        return out, tape.gradient(loss, block.trainable_variables)

    got, grads = step(x, tf.constant(mask))
    assert calls, "the block did not take the fused core"
    params = {k: v.astype(np.float64) for k, v in block.to_canonical().items()}
    want = fc.transformer_block(params, x.numpy().astype(np.float64), config=config, mask=mask)
    assert_close(got, want, dtype="float32")

    canon = {k: tf.constant(v, tf.float64) for k, v in params.items()}
    x64, cot64 = (tf.cast(a, tf.float64) for a in (x, cot))
    with tf.GradientTape() as tape:
        tape.watch(canon)
        out = fc.transformer_block(canon, x64, config=config, mask=tf.constant(mask), xp=xp)
        loss = tf.reduce_sum(out * cot64)
    want_grads = tape.gradient(loss, canon)
    name_of = {id(v): name for name, v in block.native_variables().items()}
    got_grads = {name_of[id(v)]: g for v, g in zip(block.trainable_variables, grads)}
    scale = max(float(tf.reduce_max(tf.abs(g))) for g in want_grads.values())
    for name, (path, transpose) in block.table.items():
        g = got_grads[path].numpy()
        assert_close(
            g.T if transpose else g,
            want_grads[name],
            dtype="float32",
            quantity="grad_params",
            scale=scale,
            err_msg=name,
        )


def test_the_lm_takes_the_fused_core(monkeypatch):
    config = fc.LMConfig(block=fc.TransformerConfig(dim=16, heads=2), vocab_size=11, num_layers=2)
    lm = LM(config, seed=0)
    tokens = np.random.default_rng(3).integers(0, 11, (2, 9)).astype(np.int32)
    calls = _count_fused(monkeypatch)
    got = lm(tf.constant(tokens))
    assert len(calls) == config.num_layers, "the LM's blocks did not take the fused core"
    params = {k: v.astype(np.float64) for k, v in lm.to_canonical().items()}
    want = fc.lm_logits(params, tokens.astype(np.int64), config=config)
    assert_close(got, want, dtype="float32")
