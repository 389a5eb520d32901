"""Context-parallel FLASH under jax.shard_map on 2 (emulated host) devices: each holds half of
every sequence; outputs and gradients (w.r.t. x and every parameter) equal the single-device layer
(float32, 1e-5 relative to scale), and the bytes through the all-gathers do not grow with T.

Runs in a subprocess: the device count (XLA_FLAGS) is fixed when JAX starts.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("jax", reason="flashcore.jax needs jax")

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    import flashcore as fc
    from flashcore.context_parallel import summary_bytes
    from flashcore.jax import functional as F
    from flashcore.jax import context_parallel as cp
    from flashcore.layers import attention_core_flash

    assert len(jax.devices()) == 2, jax.devices()
    mesh = cp.context_mesh()
    CASES = {
        "causal_shift_sum": (dict(causal=True, token_shift=True), False),
        "noncausal_shift_mean_mask": (
            dict(causal=False, token_shift=True, linear_norm="mean", rope="interleaved"), True
        ),
    }

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))

    rng = np.random.default_rng(0)
    worst = {}
    for name, (kw, masked) in CASES.items():
        cfg = fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4, **kw)
        params = F.init(cfg, jax.random.key(0))
        for k in ("qk.gamma", "qk.beta", "rel_bias.weight"):  # far from init: attention ~ x
            params[k] = params[k] + jnp.asarray(rng.normal(size=params[k].shape), jnp.float32)
        x = jnp.asarray(rng.normal(size=(2, 16, 16)), jnp.float32)  # 2 chunks per device
        w = jnp.asarray(rng.normal(size=(2, 16, 16)), jnp.float32)
        mask = None
        if masked:
            m = rng.random((2, 16)) > 0.3
            m[0, 7] = False  # the token shift's halo row is padding
            mask = jnp.asarray(m)

        def split(p, x):
            return cp.apply(p, x, config=cfg, mesh=mesh, mask=mask)

        def whole(p, x):
            return F.apply(p, x, config=cfg, mask=mask, core=attention_core_flash)

        def value_and_grads(f):
            g = jax.jit(jax.value_and_grad(lambda p, x: (f(p, x) * w).sum(), argnums=(0, 1)))
            return jax.tree.map(np.asarray, (jax.jit(f)(params, x), g(params, x)[1]))

        (y, (gp, gx)), (y0, (gp0, gx0)) = value_and_grads(split), value_and_grads(whole)
        # Parameter gradients relative to the layer's largest gradient entry: norm.scale's is
        # one sum of b*T*d terms that mostly cancel (float32 vs float64 differ there by ~6e-5).
        scale = max(float(np.abs(g).max()) for g in gp0.values())
        grad_err = max(float(np.abs(gp[k] - gp0[k]).max()) / scale for k in params)
        worst[name] = max(rel(y, y0), rel(gx, gx0), grad_err)
        assert gp.keys() == gp0.keys() == params.keys()

    cfg = fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4, causal=True, token_shift=True)
    params = F.init(cfg, jax.random.key(0))
    sent = {}
    for t in (16, 64):
        stats = cp.CommStats()
        x = jax.ShapeDtypeStruct((2, t, 16), jnp.float32)
        jax.eval_shape(lambda p, x: cp.apply(p, x, config=cfg, mesh=mesh, stats=stats), params, x)
        sent[t] = (stats.sent, stats.calls)
    assert sent[16] == sent[64], sent
    # + the halo row and its mask bit, + the (b,) NaN / Inf flag
    assert sent[16][0] == summary_bytes(cfg, 2) + 2 * 17 * 4 + 2 * 4, sent
    print("worst", worst, sent)
    assert max(worst.values()) <= 1e-5, worst
    """
)


def test_context_parallel_equals_single_device_and_bytes_do_not_grow():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600, env=env
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]


def test_refuses_a_length_that_does_not_split():
    import jax
    import jax.numpy as jnp

    import flashcore as fc
    from flashcore.jax import context_parallel as cp

    cfg = fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4)
    mesh = cp.context_mesh(jax.devices()[:1])
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        cp.apply({}, jnp.zeros((1, 6, 16)), config=cfg, mesh=mesh)
