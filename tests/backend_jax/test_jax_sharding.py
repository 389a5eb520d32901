"""Data parallelism: a training step with the batch split over 2 (emulated host) devices gives the
loss, gradients and updated weights of the single-device step (float32, 1e-5 relative).

Runs in a subprocess: the device count (XLA_FLAGS) is fixed when JAX starts.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("jax", reason="flashcore.jax needs jax")
pytest.importorskip("optax", reason="the training step uses optax")

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax
    import flashcore as fc
    from flashcore.jax import functional as F, parallel

    assert len(jax.devices()) == 2, jax.devices()
    block = fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4, causal=True, token_shift=True)
    cfg = fc.LMConfig(block=block, vocab_size=11, num_layers=2)
    params = F.init(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 11, (4, 10)), jnp.int32)
    targets = jnp.asarray(rng.integers(0, 11, (4, 10)), jnp.int32)
    mask = jnp.asarray(rng.random((4, 10)) > 0.2)
    opt = optax.sgd(0.1)  # linear in the gradients: adam would amplify roundoff near g = 0

    @jax.jit
    def train_step(params, opt_state, tokens, targets, mask):
        loss, grads = jax.value_and_grad(F.loss)(params, tokens, targets, config=cfg, mask=mask)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    one = jax.devices()[0]
    single = train_step(*jax.device_put((params, opt.init(params), tokens, targets, mask), one))

    mesh = parallel.data_mesh()
    p = parallel.replicate(params, mesh)
    batch = parallel.shard_batch((tokens, targets, mask), mesh)
    assert batch[0].sharding.shard_shape(batch[0].shape) == (2, 10)
    assert len(batch[0].addressable_shards) == 2
    sharded = train_step(p, parallel.replicate(opt.init(params), mesh), *batch)
    assert sharded[2].sharding.is_fully_replicated

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))

    worst = {
        "loss": rel(sharded[2], single[2]),
        "grads": max(rel(sharded[3][k], single[3][k]) for k in params),
        "params": max(rel(sharded[0][k], single[0][k]) for k in params),
    }
    print(worst)
    assert max(worst.values()) <= 1e-5, worst
    """
)


def test_sharded_training_step_equals_single_device():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600, env=env
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
