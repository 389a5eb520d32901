"""``flashcore.jax.compiler_options``: what it gives on CPU, when it gives nothing (another
platform, ``FLASHCORE_XLA_OPTIONS=off``, the user's own ``XLA_FLAGS``, an XLA that rejects the
option), and a FLASH layer's loss and gradients compiled with the options against the same
program compiled without them."""

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the JAX backend needs jax")
jnp = jax.numpy

from flax import nnx  # noqa: E402

import flashcore as fc  # noqa: E402
from flashcore.conformance.tolerances import tolerance  # noqa: E402
from flashcore.jax import FLASH, compiler, compiler_options  # noqa: E402

cpu_only = pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="the options are CPU-only; elsewhere there are none"
)


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("FLASHCORE_XLA_OPTIONS", raising=False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    compiler._accepted.cache_clear()
    yield monkeypatch
    compiler._accepted.cache_clear()


@cpu_only
def test_cpu_gives_single_dots_only_and_a_new_dict(clean_env):
    got = compiler_options()
    assert got == {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
    got.clear()  # the caller's copy: the next call is whole again
    assert compiler_options() == compiler.CPU_OPTIONS


def test_none_on_another_platform(clean_env):
    assert compiler_options("gpu") == {} and compiler_options("tpu") == {}


@cpu_only
@pytest.mark.parametrize(
    "var, value",
    [
        ("FLASHCORE_XLA_OPTIONS", "off"),
        ("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=-reduce"),
    ],
)
def test_none_when_turned_off_or_set_by_the_user(clean_env, var, value):
    clean_env.setenv(var, value)
    assert compiler_options() == {}
    assert compiler.jit(lambda x: x * 2)(jnp.float32(3)) == 6


@cpu_only
def test_none_when_this_xla_rejects_the_option(clean_env):
    clean_env.setattr(compiler, "CPU_OPTIONS", {compiler.YNN_OPTION: "LIBRARY_FUSION_TYPE_NONE"})
    assert compiler_options() == {}


def test_jit_keeps_a_callers_own_options(clean_env):
    f = compiler.jit(lambda x: x + 1, compiler_options=None)
    assert f(jnp.float32(1)) == 2


def test_flash_gradients_with_the_options_match_without(clean_env):
    """The same forward + backward (a causal FLASH layer, float32) compiled with and without the
    options: the same sums in another order, within the central float32 tolerance."""
    config = fc.FlashConfig(dim=32, chunk_size=16, qk_dim=16, causal=True)
    layer = FLASH(config, params=fc.init(config, seed=0))
    graphdef, state = nnx.split(layer)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 40, 32)), jnp.float32)
    cot = jnp.asarray(rng.standard_normal((2, 40, 32)), jnp.float32)

    def loss(state, x):
        return jnp.sum(nnx.merge(graphdef, state)(x) * cot)

    step = jax.value_and_grad(loss, argnums=(0, 1))
    (loss_got, (params_got, x_got)) = compiler.jit(step)(state, x)
    (loss_want, (params_want, x_want)) = jax.jit(step, compiler_options=None)(state, x)
    pairs = [("loss", loss_got, loss_want), ("grad_input", x_got, x_want)]
    pairs += [
        ("grad_params", g, w)
        for g, w in zip(jax.tree.leaves(params_got), jax.tree.leaves(params_want), strict=True)
    ]
    assert len(pairs) > 3
    for quantity, g, w in pairs:
        rtol, atol = tolerance("float32", quantity)
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)
