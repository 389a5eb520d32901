"""The Transformer++ core on jax.nn.dot_product_attention (flashcore.jax.kernels.softmax_core)
against the spec's softmax core (flashcore.lm.attention_core_softmax) on the same inputs: outputs
and gradients w.r.t. q, k, v, causal or not, with padding and segments, in float32 and bfloat16,
in one block and in several; the guard (float64 and dropout masks go to the spec); the block and
the LM take it by default."""

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="flashcore.jax needs jax")
jnp = pytest.importorskip("jax.numpy", reason="flashcore.jax needs jax")
nnx = pytest.importorskip("flax.nnx", reason="flashcore.jax needs flax")

from _cases import SOFTMAX_SHAPE, softmax_core_inputs  # noqa: E402
from _jax64 import x64  # noqa: E402

import flashcore as fc  # noqa: E402
from flashcore.conformance.assertions import assert_close  # noqa: E402
from flashcore.jax import LM, TransformerBlock, functional, kernels  # noqa: E402
from flashcore.jax.xp import xp  # noqa: E402
from flashcore.lm import attention_core_softmax  # noqa: E402

B, N, T, HD = SOFTMAX_SHAPE
_inputs = softmax_core_inputs
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _run(core, q, k, v, dtype, mask=None, segment_ids=None, **kw):
    """core's output and its gradients w.r.t. q, k, v of sum(out * cotangent), rows of padded
    queries left out (the block zeroes them, so nothing flows back from there): NumPy float64."""
    m = None if mask is None else jnp.asarray(mask)
    s = None if segment_ids is None else jnp.asarray(segment_ids)
    cot = np.random.default_rng(1).standard_normal((B, N, T, HD))
    keep = np.ones((1, 1, 1, 1), bool) if mask is None else mask[:, None, :, None]
    wide = jnp.float64 if dtype == jnp.float64 else jnp.float32
    weight = jnp.asarray(cot * keep, wide)

    def loss(q, k, v):
        out = core(q, k, v, mask=m, segment_ids=s, xp=xp, **kw)
        return jnp.sum(out.astype(wide) * weight), out

    leaves = [jnp.asarray(a, dtype) for a in (q, k, v)]
    grads, out = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(*leaves)
    as64 = lambda a: np.asarray(a.astype(wide), np.float64)  # noqa: E731
    return as64(out) * keep, [as64(g) for g in grads]


def _spec64(q, k, v, **kw):
    with x64(True):
        return _run(attention_core_softmax, q, k, v, jnp.float64, **kw)


@pytest.mark.parametrize("block", [None, 5], ids=["one-block", "blocks-of-5"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", ["plain", "padding", "segments"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_fused_core_equals_the_spec_core(causal, kind, dtype, block):
    config = fc.TransformerConfig(dim=N * HD, heads=N, causal=causal)
    q, k, v, mask, seg = _inputs(kind)
    dt = DTYPES[dtype]
    assert kernels.softmax_core_path(jnp.asarray(q, dt), config, mask, seg) == "fused"
    kw = dict(config=config, mask=mask, segment_ids=seg)
    got, got_grads = _run(kernels.softmax_core, q, k, v, dt, block=block, **kw)
    want, want_grads = _spec64(q, k, v, **kw)  # the spec in float64, the table's row for dtype
    assert_close(got, want, dtype=dtype)
    for name, a, b in zip("qkv", got_grads, want_grads):
        scale = float(np.abs(b).max())
        assert_close(a, b, dtype=dtype, quantity="grad_input", scale=scale, err_msg=f"d{name}")


def test_float64_goes_to_the_spec(monkeypatch):
    """jax.nn.dot_product_attention runs its softmax in float32: float64 takes the spec's core."""
    calls = _count_fused(monkeypatch)
    config = fc.TransformerConfig(dim=N * HD, heads=N, causal=True)
    q, k, v, mask, _ = _inputs("padding")
    with x64(True):
        assert kernels.softmax_core_path(jnp.asarray(q), config, mask) == "spec"
        got, got_grads = _run(kernels.softmax_core, q, k, v, jnp.float64, config=config, mask=mask)
    assert not calls, "float64 reached jax.nn.dot_product_attention"
    want, want_grads = _spec64(q, k, v, config=config, mask=mask)
    assert_close(got, want, reorder=T)
    for a, b in zip(got_grads, want_grads):
        assert_close(a, b, reorder=T, scale=float(np.abs(b).max()))


def test_the_guard_sends_dropout_masks_to_the_spec(monkeypatch):
    calls = _count_fused(monkeypatch)
    config = fc.TransformerConfig(dim=N * HD, heads=N, dropout=0.25)
    q, k, v, _, _ = _inputs("plain")
    q, k, v = (jnp.asarray(a, jnp.float32) for a in (q, k, v))
    keep = jax.random.bernoulli(jax.random.key(0), 0.75, (B, N, T, T))
    assert kernels.softmax_core_path(q, config) == "fused"
    assert kernels.softmax_core_path(q, config, attn_keep=keep) == "spec"
    got = kernels.softmax_core(q, k, v, config=config, attn_keep=keep, xp=xp)
    assert not calls, "a dropout keep-mask reached jax.nn.dot_product_attention"
    want = attention_core_softmax(q, k, v, config=config, attn_keep=keep, xp=xp)
    assert_close(got, want, reorder=T)
    kernels.softmax_core(q, k, v, config=config, xp=xp)
    assert calls, "without a keep-mask the core did not take jax.nn.dot_product_attention"


def test_the_guard_holds_under_jit_grad_and_vmap():
    config = fc.TransformerConfig(dim=N * HD, heads=N)
    q = jnp.zeros((B, N, T, HD), jnp.bfloat16)
    seen = []
    record = lambda a: seen.append(kernels.softmax_core_path(a, config)) or jnp.sum(a)  # noqa: E731
    jax.jit(record)(q)
    jax.grad(lambda a: record(a).astype(jnp.float32))(q)
    jax.vmap(lambda a: record(a[None]))(q)
    assert seen == ["fused"] * 3


def _count_fused(monkeypatch) -> list:
    """Count calls of jax.nn.dot_product_attention (what kernels.softmax_core calls)."""
    calls = []
    real = jax.nn.dot_product_attention

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(jax.nn, "dot_product_attention", counting)
    return calls


def test_the_block_takes_the_fused_core_and_equals_the_spec_block(monkeypatch):
    """TransformerBlock and the functional apply take the fused core by default (forward and
    parameter gradients equal the spec's block); attn_core=attention_core_softmax is the spec."""
    config = fc.TransformerConfig(dim=16, heads=2, causal=True)
    block = TransformerBlock(config, rngs=nnx.Rngs(0))
    r = np.random.default_rng(2)
    x = jnp.asarray(r.standard_normal((2, 11, 16)), jnp.float32)
    mask = np.ones((2, 11), bool)
    mask[1, 7:] = False
    calls = _count_fused(monkeypatch)
    got = block(x, mask=jnp.asarray(mask))
    assert calls, "the block did not take jax.nn.dot_product_attention"
    params = {k: np.asarray(v, np.float64) for k, v in block.to_canonical().items()}
    want = fc.transformer_block(params, np.asarray(x, np.float64), config=config, mask=mask)
    assert_close(got, want, dtype="float32")

    p = block.to_canonical()
    cot = jnp.asarray(r.standard_normal((2, 11, 16)), jnp.float32)

    def loss(p, attn_core):
        out = functional.apply(p, x, config=config, mask=jnp.asarray(mask), attn_core=attn_core)
        return jnp.sum(out * cot)

    calls.clear()
    spec_grads = jax.grad(loss)(p, attention_core_softmax)
    assert not calls, "attn_core=attention_core_softmax still took the fused core"
    fused_grads = jax.grad(loss)(p, None)
    assert calls
    scale = max(float(jnp.max(jnp.abs(g))) for g in spec_grads.values())
    for name in p:
        assert_close(
            fused_grads[name], spec_grads[name], quantity="grad_params", scale=scale, err_msg=name
        )


def test_the_lm_takes_the_fused_core(monkeypatch):
    config = fc.LMConfig(block=fc.TransformerConfig(dim=16, heads=2), vocab_size=11, num_layers=2)
    lm = LM(config, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 11, (2, 9)), jnp.int32)
    calls = _count_fused(monkeypatch)
    got = lm(tokens)
    assert len(calls) == config.num_layers, "the LM's blocks did not take the fused core"
    spec = LM(config, params=lm.to_canonical(), attn_core=attention_core_softmax)
    calls.clear()
    want = spec(tokens)
    assert not calls
    assert_close(got, want, dtype="float32")
    loss = lm.loss(tokens[:, :-1], tokens[:, 1:])
    assert len(calls) == config.num_layers
    want_loss = spec.loss(tokens[:, :-1], tokens[:, 1:])
    assert_close(loss, want_loss, quantity="loss", dtype="float32")


def test_a_spec_core_is_refused_where_the_config_has_no_softmax_attention():
    cfg = fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4)
    p = functional.init(cfg, jax.random.key(0))
    with pytest.raises(ValueError, match="attn_core"):
        functional.apply(p, jnp.zeros((1, 4, 16)), config=cfg, attn_core=attention_core_softmax)


def test_query_blocks_bound_the_memory_xla_plans():
    """Past ``block`` rows the scores held are (b, n, block, T): XLA's plan for the gradient of
    T = 512 in blocks of 128 needs well under half the scratch of one block of 512."""
    config = fc.TransformerConfig(dim=64, heads=4, causal=True)
    q = jnp.zeros((1, 4, 512, 16), jnp.float32)

    def scratch(block):
        loss = lambda q: jnp.sum(kernels.softmax_core(q, q, q, config=config, block=block))  # noqa: E731
        stats = jax.jit(jax.grad(loss)).lower(q).compile().memory_analysis()
        if stats is None:
            pytest.skip("this XLA backend reports no memory analysis")
        return stats.temp_size_in_bytes

    one, blocked = scratch(512), scratch(128)
    scores = 4 * 512 * 512 * 4  # one (b, n, T, T) float32 array
    assert one >= scores, (one, scores)
    assert blocked < one / 2, (blocked, one)
