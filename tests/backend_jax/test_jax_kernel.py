"""The Pallas mixed-chunk core against the spec's core (the oracle): forward and every gradient,
causal and not, with masks, ragged T and each bias placement. On CPU the kernel runs in Pallas's
interpreter (small shapes); the compiled kernel is tested only where a GPU or TPU is present."""

import functools

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="flashcore.jax needs jax")
jnp = jax.numpy

from _cases import flash_cfg, noisy_params, rel_err  # noqa: E402

import flashcore as fc  # noqa: E402
from flashcore.jax import functional  # noqa: E402
from flashcore.jax.kernels import can_use_kernel, flash_core, pallas_core  # noqa: E402
from flashcore.layers import attention_core_flash  # noqa: E402

B, S, E, C = 2, 8, 16, 4


def _inputs(t, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [rng.normal(size=(B, t, S)) for _ in range(4)] + [rng.normal(size=(B, t, E))]
    bias = rng.normal(size=(C, C))
    mask = rng.random((B, t)) > 0.3
    cot = rng.normal(size=(B, t, E))
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return [f32(a) for a in arrays], f32(bias), jnp.asarray(mask), f32(cot)


def _vjp(core, cfg, arrays, bias, mask, cot):
    def f(qq, qk, lq, lk, v, bias):
        return core(qq, qk, lq, lk, v, bias=bias, config=cfg, mask=mask)

    out, pullback = jax.vjp(f, *arrays, bias)
    return out, pullback(cot)


CASES = {
    "bidir": (dict(), 12, True),
    "bidir-ragged-nomask": (dict(), 10, False),
    "causal-ragged-mask": (dict(causal=True), 10, True),
    "causal-bias-before-scale": (dict(causal=True, bias_before_scale=True), 13, True),
    "bidir-t5-before-scale": (dict(rel_bias="t5", bias_before_scale=True), 7, True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_the_spec_core_forward_and_gradients(name):
    opts, t, with_mask = CASES[name]
    cfg = flash_cfg(qk_dim=S, chunk_size=C, **opts)
    arrays, bias, mask, cot = _inputs(t)
    mask = mask if with_mask else None
    kernel = functools.partial(pallas_core, interpret=True)
    spec = functools.partial(attention_core_flash, xp=jnp)
    got, got_grads = _vjp(kernel, cfg, arrays, bias, mask, cot)
    want, want_grads = _vjp(spec, cfg, arrays, bias, mask, cot)
    scale = float(jnp.abs(want).max())
    assert float(jnp.abs(got - want).max()) <= 1e-4 * scale
    for label, g, w in zip(("qq", "qk", "lq", "lk", "v", "bias"), got_grads, want_grads):
        assert float(jnp.abs(g - w).max()) <= 1e-4 * float(jnp.abs(w).max()), label


def test_lm_with_the_kernel_equals_the_spec_lm():
    cfg = fc.LMConfig(block=flash_cfg(causal=True, token_shift=True), vocab_size=11)
    p = {k: jnp.asarray(v, jnp.float32) for k, v in noisy_params(cfg).items()}
    rng = np.random.default_rng(1)
    tokens, targets = (jnp.asarray(rng.integers(0, 11, (2, 9)), jnp.int32) for _ in range(2))
    mask = jnp.asarray(np.arange(9)[None, :] < np.array([[6], [9]]))
    kernel = functools.partial(pallas_core, interpret=True)

    @functools.partial(jax.jit, static_argnums=1)
    def loss_and_grad(p, core):
        return jax.value_and_grad(functional.loss)(
            p, tokens, targets, config=cfg, mask=mask, core=core
        )

    got, got_g = loss_and_grad(p, kernel)
    want, want_g = loss_and_grad(p, attention_core_flash)
    assert abs(float(got) - float(want)) <= 1e-5 * abs(float(want))
    assert max(rel_err(got_g[k], want_g[k]) for k in p) < 1e-4


def test_guard_takes_the_kernel_only_on_accelerators_for_supported_configs():
    cfg = flash_cfg()
    v = jnp.zeros((1, 4, 32), jnp.float32)
    assert can_use_kernel(v, cfg, backend="gpu") and can_use_kernel(v, cfg, backend="tpu")
    assert can_use_kernel(None, cfg, backend="gpu")  # the config alone
    assert not can_use_kernel(v, cfg, backend="cpu")
    assert not can_use_kernel(v.astype(jnp.int32), cfg, backend="gpu")
    for other in (dict(attention="laplace"), dict(linear_norm="mean")):
        assert not can_use_kernel(v, flash_cfg(**other), backend="gpu")
    seg = jnp.zeros((1, 4), jnp.int32)
    assert not can_use_kernel(v, cfg, None, seg, backend="gpu")
    with pytest.raises(NotImplementedError, match="relu2"):
        arrays, bias, mask, _ = _inputs(8)
        pallas_core(*arrays, bias=bias, config=flash_cfg(attention="laplace"), interpret=True)


def test_dispatcher_falls_back_to_the_spec_core_here():
    if jax.default_backend() != "cpu":
        pytest.skip("the fallback is what CPU runs; this machine has an accelerator")
    cfg = flash_cfg(causal=True)
    arrays, bias, mask, _ = _inputs(10)
    got = flash_core(*arrays, bias=bias, config=cfg, mask=mask)
    want = attention_core_flash(*arrays, bias=bias, config=cfg, mask=mask, xp=jnp)
    np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(
    jax.default_backend() not in ("gpu", "tpu"), reason="the compiled kernel needs a GPU or TPU"
)
@pytest.mark.parametrize("causal", [False, True])
def test_compiled_kernel_matches_the_spec_core(causal):
    cfg = fc.FlashConfig(dim=128, qk_dim=128, chunk_size=128, causal=causal)
    rng = np.random.default_rng(0)
    t, s, e = 384, 128, 256
    arrays = [jnp.asarray(rng.normal(size=(2, t, s)), jnp.float32) for _ in range(4)]
    arrays.append(jnp.asarray(rng.normal(size=(2, t, e)), jnp.float32))
    bias = jnp.asarray(rng.normal(size=(128, 128)), jnp.float32)
    cot = jnp.asarray(rng.normal(size=(2, t, e)), jnp.float32)
    with jax.default_matmul_precision("highest"):
        got, got_g = _vjp(pallas_core, cfg, arrays, bias, None, cot)
        want, want_g = _vjp(
            functools.partial(attention_core_flash, xp=jnp), cfg, arrays, bias, None, cot
        )
    assert float(jnp.abs(got - want).max()) <= 1e-4 * float(jnp.abs(want).max())
    for g, w in zip(got_g, want_g):
        assert float(jnp.abs(g - w).max()) <= 1e-4 * float(jnp.abs(w).max())
