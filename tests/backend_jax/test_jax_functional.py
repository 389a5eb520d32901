"""flashcore.jax.functional: canonical init, apply / logits / loss against the NumPy spec, and the
JAX transformations (jit, grad, vmap) and an optax training step."""

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="flashcore.jax needs jax")
jnp = pytest.importorskip("jax.numpy", reason="flashcore.jax needs jax")

from _cases import ALL_CONFIGS, LAYER_CONFIGS, LM_CONFIGS, inputs_for, noisy_params, rel_err  # noqa: E402

import flashcore as fc  # noqa: E402
from flashcore.conformance.tolerances import elementwise_tolerance  # noqa: E402
from flashcore.jax import functional as F  # noqa: E402


def _jax(tree):
    return {k: jnp.asarray(v) for k, v in tree.items()}


def _spec(config, params, inputs):
    """The NumPy float64 spec: layer output or LM logits."""
    kw = dict(mask=inputs.get("mask"))
    if isinstance(config, fc.LMConfig):
        return fc.lm_logits(params, inputs["tokens"].astype(np.int64), config=config, **kw)
    return fc.block_fn(config)(params, inputs["x"].astype(np.float64), config=config, **kw)


@pytest.mark.parametrize("name", list(ALL_CONFIGS))
def test_init_has_the_canonical_names_shapes_and_dtype(name):
    cfg = ALL_CONFIGS[name]
    params = F.init(cfg, jax.random.key(0), dtype=jnp.bfloat16)
    fc.check_params(params, cfg)
    assert all(v.dtype == jnp.bfloat16 for v in params.values())
    again = F.init(cfg, jax.random.key(0), dtype=jnp.bfloat16)
    other = F.init(cfg, jax.random.key(1), dtype=jnp.bfloat16)
    assert all(np.array_equal(params[k], again[k]) for k in params)
    random = [k for k, s in fc.param_spec(cfg).items() if s.std is not None]
    assert random and all(not np.array_equal(params[k], other[k]) for k in random)
    want = fc.init(cfg)  # the constants are flashcore.init's, to one bfloat16 rounding
    for k in (k for k, s in fc.param_spec(cfg).items() if s.std is None):
        got = np.asarray(params[k], np.float32)
        np.testing.assert_allclose(got, want[k], rtol=elementwise_tolerance("bfloat16"), atol=0)


def test_init_draws_the_spec_distributions_and_each_name_independently():
    cfg = fc.FlashConfig(dim=256, qk_dim=64, chunk_size=16)
    p = F.init(cfg, jax.random.key(3))
    assert abs(float(jnp.std(p["hidden.kernel"])) - 256**-0.5) < 0.02 * 256**-0.5
    assert abs(float(jnp.std(p["qk.gamma"])) - 0.02) < 0.002
    assert float(jnp.abs(p["hidden.bias"]).max()) == 0.0 and float(p["norm.scale"][0]) == 1.0
    # Adding a parameter (an untied head) leaves the others' values unchanged.
    lm = fc.LMConfig(block=fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4, causal=True))
    tied = F.init(lm, jax.random.key(0))
    untied = F.init(lm.replace(tie_embeddings=False), jax.random.key(0))
    assert set(untied) - set(tied) == {"head.kernel"}
    assert all(np.array_equal(tied[k], untied[k]) for k in tied)
    # Traceable: shapes without computing.
    shapes = jax.eval_shape(lambda k: F.init(cfg, k), jax.random.key(0))
    assert {k: v.shape for k, v in shapes.items()} == {
        k: s.shape for k, s in fc.param_spec(cfg).items()
    }


@pytest.mark.parametrize("name", list(ALL_CONFIGS))
def test_apply_matches_the_numpy_spec_in_float32(name):
    cfg = ALL_CONFIGS[name]
    p64 = noisy_params(cfg)
    inputs = inputs_for(cfg)
    expected = _spec(cfg, p64, inputs)
    p32 = {k: jnp.asarray(v, jnp.float32) for k, v in p64.items()}
    x = inputs["tokens"] if isinstance(cfg, fc.LMConfig) else inputs["x"]
    got = jax.jit(lambda p, x, m: F.apply(p, x, config=cfg, mask=m))(
        p32, jnp.asarray(x), jnp.asarray(inputs["mask"])
    )
    assert got.dtype == jnp.float32
    assert rel_err(got, expected) < 1e-5


@pytest.mark.parametrize("name", ["flash-causal-t5-layer-shift", "gau"])
def test_jitted_grad_matches_finite_differences(name):
    cfg = LAYER_CONFIGS[name]
    p = _jax(noisy_params(cfg))
    x = jnp.asarray(inputs_for(cfg)["x"])
    cot = jnp.asarray(np.random.default_rng(1).normal(size=x.shape), jnp.float32)

    @jax.jit
    def loss(p, x):
        return jnp.sum(F.apply(p, x, config=cfg) * cot)

    gp, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(p, x)
    assert set(gp) == set(p) and gx.shape == x.shape
    # Directional finite difference along a random direction (float32, so loose: checks wiring).
    rng = np.random.default_rng(2)
    u = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), (p, x))
    eps = 1e-2
    shifted = [jax.tree.map(lambda a, d, s=s: a + s * eps * d, (p, x), u) for s in (1.0, -1.0)]
    fd = (loss(*shifted[0]) - loss(*shifted[1])) / (2 * eps)
    ad = sum(jnp.sum(g * d) for g, d in zip(jax.tree.leaves((gp, gx)), jax.tree.leaves(u)))
    assert abs(float(fd) - float(ad)) <= 2e-2 * abs(float(ad))


def test_vmap_over_examples_and_over_parameter_sets():
    cfg = LAYER_CONFIGS["flash-causal-t5-layer-shift"]
    p = _jax(noisy_params(cfg))
    x = jnp.asarray(inputs_for(cfg, b=3)["x"])
    apply = jax.jit(lambda p, x: F.apply(p, x, config=cfg))
    batched = apply(p, x)
    per_example = jax.jit(jax.vmap(lambda xi: apply(p, xi[None])[0]))(x)
    assert rel_err(per_example, batched) < 1e-6
    # An ensemble: two parameter sets stacked on a leading axis.
    q = _jax(noisy_params(cfg, seed=5))
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), p, q)
    both = jax.jit(jax.vmap(lambda pp: apply(pp, x)))(stacked)
    assert rel_err(both[0], batched) < 1e-6
    assert rel_err(both[1], apply(q, x)) < 1e-6


def test_lm_loss_is_cross_entropy_of_logits():
    cfg = LM_CONFIGS["lm-flash-abspos"]
    p = _jax(noisy_params(cfg))
    i = inputs_for(cfg)
    tokens, targets, mask = (jnp.asarray(i[k]) for k in ("tokens", "targets", "mask"))
    loss = jax.jit(lambda p: F.loss(p, tokens, targets, config=cfg, mask=mask))(p)
    logits = jax.jit(lambda p: F.logits(p, tokens, config=cfg, mask=mask))(p)
    ref = fc.cross_entropy(logits, targets, mask, xp=jnp)
    assert abs(float(loss) - float(ref)) < 1e-6
    expected = fc.lm_loss(
        noisy_params(cfg), i["tokens"].astype(np.int64), i["targets"], config=cfg, mask=i["mask"]
    )
    assert abs(float(loss) - float(expected)) < 1e-5 * abs(float(expected))


def test_core_is_only_for_flash():
    cfg = LAYER_CONFIGS["gau"]
    p = F.init(cfg, jax.random.key(0))
    with pytest.raises(ValueError, match="core"):
        F.apply(p, jnp.zeros((1, 3, 16)), config=cfg, core=lambda *a, **k: None)


def test_optax_training_step_lowers_the_loss():
    optax = pytest.importorskip("optax", reason="optax is needed for the optimizer test")
    cfg = LM_CONFIGS["lm-flash"]
    params = F.init(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    seq = jnp.asarray(np.tile(rng.integers(0, 11, (1, 6)), (2, 3)))  # a repeating pattern
    inputs, targets = seq[:, :-1], seq[:, 1:]
    opt = optax.adam(3e-2)
    state = opt.init(params)

    @jax.jit
    def train_step(params, state):
        loss, grads = jax.value_and_grad(F.loss)(params, inputs, targets, config=cfg)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    first = None
    for _ in range(30):
        params, state, loss = train_step(params, state)
        first = float(loss) if first is None else first
    assert float(loss) < 0.5 * first
    fc.check_params(params, cfg)
