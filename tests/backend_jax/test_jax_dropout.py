"""flashcore.jax dropout: NNX's train() / eval() and rngs convention, keep rates, the drawn masks
being the ones applied, and the Pallas guard handing masked calls to the spec."""

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="flashcore.jax needs jax")
nnx = pytest.importorskip("flax.nnx", reason="flashcore.jax needs flax")
jnp = jax.numpy

import flashcore as fc  # noqa: E402
from flashcore.conformance.tolerances import tolerance  # noqa: E402
from flashcore.jax import LM, block_class, functional, kernels  # noqa: E402

D, P = 16, 0.3
CONFIGS = {
    "gau": fc.FlashConfig(dim=D, kind="gau", qk_dim=8, max_len=256, causal=True, dropout=P),
    "flash": fc.FlashConfig(dim=D, qk_dim=8, chunk_size=4, causal=True, dropout=P),
    "transformer": fc.TransformerConfig(dim=D, heads=2, dropout=P),
}
LM_CFG = fc.LMConfig(block=CONFIGS["gau"], vocab_size=19, num_layers=2)


def _noisy(config, seed=0):
    """fc.init plus noise: the init's zero output kernel would hide every dropout effect."""
    rng = np.random.default_rng(seed)
    return {
        k: (v + rng.normal(0, 0.3, v.shape)).astype(np.float32)
        for k, v in fc.init(config, seed).items()
    }


X = jnp.asarray(np.random.default_rng(1).normal(size=(2, 9, D)), jnp.float32)


def test_keep_rate_is_binomial():
    masks = functional.dropout_masks(CONFIGS["gau"], jax.random.key(5), 4, 160)
    assert masks["attn"].size >= 100_000
    for site, keep in masks.items():
        q = 1 - P
        rate, bound = float(jnp.mean(keep)), 5 * math.sqrt(q * (1 - q) / keep.size)
        assert keep.dtype == jnp.bool_ and abs(rate - q) <= bound, (site, rate, bound)
    other = functional.dropout_masks(CONFIGS["gau"], jax.random.key(6), 4, 160)
    assert float(jnp.mean(other["attn"] == masks["attn"])) < 0.7  # independent: q^2 + p^2 = 0.58


@pytest.mark.parametrize("name", list(CONFIGS))
def test_train_draws_and_eval_is_the_deterministic_layer(name):
    config = CONFIGS[name]
    cls = block_class(config)
    params = _noisy(config)
    model = cls(config, params=params, dropout_rngs=nnx.Rngs(dropout=0))
    plain = cls(config.replace(dropout=0.0), params=params)
    a, b = model(X), model(X)  # deterministic=False (NNX's default): fresh masks each call
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3
    model.eval()
    assert model.deterministic is True
    np.testing.assert_array_equal(model(X), plain(X))  # the same code path in one process
    model.train()
    assert float(jnp.max(jnp.abs(model(X) - plain(X)))) > 1e-3
    np.testing.assert_array_equal(model(X, deterministic=True), plain(X))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_drawn_masks_are_the_ones_applied(name):
    config = CONFIGS[name]
    model = block_class(config)(config, params=_noisy(config))
    key = jax.random.key(11)
    masks = functional.dropout_masks(config, key, *X.shape[:2])
    got = model(X, rngs=key)
    ref = fc.block_fn(config)(model.to_canonical(), X, config=config, xp=jnp, dropout=masks)
    rtol, atol = tolerance("float32", "output")
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol * float(jnp.max(jnp.abs(ref))))


def test_seeds_reproduce_and_differ():
    config = CONFIGS["flash"]
    params = _noisy(config)

    def run(seed):
        return block_class(config)(config, params=params, dropout_rngs=nnx.Rngs(seed))(X)

    np.testing.assert_array_equal(run(1), run(1))
    assert float(jnp.max(jnp.abs(run(1) - run(2)))) > 1e-3
    # rngs= at construction gives the weights (its params stream) and the dropout stream.
    built = block_class(config)(config, rngs=nnx.Rngs(params=0, dropout=1))
    assert float(jnp.max(jnp.abs(built(X) - built(X, deterministic=True)))) > 0
    model = block_class(config)(config, params=params)  # no dropout stream
    with pytest.raises(ValueError, match="needs a dropout stream"):
        model(X)
    model.eval()
    assert model(X).shape == X.shape


def test_lm_under_jit_and_grad():
    model = LM(LM_CFG, params=_noisy(LM_CFG), dropout_rngs=nnx.Rngs(dropout=3))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 19, (2, 9)))

    @nnx.jit
    def loss_and_grad(model):
        return nnx.value_and_grad(lambda m: m.loss(tokens, tokens))(model)

    l1, g = loss_and_grad(model)
    l2, _ = loss_and_grad(model)  # the stream advanced: other masks
    assert np.isfinite(float(l1)) and float(l1) != float(l2)
    leaves = jax.tree_util.tree_leaves(nnx.state(g, nnx.Param))
    assert leaves and all(bool(jnp.all(jnp.isfinite(v))) for v in leaves)
    model.eval()
    e1, e2 = model.loss(tokens, tokens), model.loss(tokens, tokens)
    assert float(e1) == float(e2)


def test_pallas_guard_hands_masked_calls_to_the_spec(monkeypatch):
    cfg = CONFIGS["flash"]
    keep = jnp.ones(fc.dropout_shapes(cfg, 2, 9)["attn"], bool)
    assert kernels.can_use_kernel(None, cfg, backend="gpu")
    assert not kernels.can_use_kernel(None, cfg, attn_keep=keep, backend="gpu")

    def refuse(*args, **kwargs):
        raise AssertionError("the Pallas kernel got a dropout call")

    monkeypatch.setattr(kernels.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(kernels, "pallas_core", refuse)
    model = block_class(cfg)(cfg, params=_noisy(cfg), dropout_rngs=nnx.Rngs(dropout=0))
    assert model(X).shape == X.shape  # training with dropout: the spec's core
    model.eval()
    with pytest.raises(AssertionError, match="Pallas"):
        model(X)  # eval on a "GPU": the kernel (so the guard above is what kept it away)
