"""Per-token decode latency of a GAU / Transformer++ LM, this tree against an older one, A/B in
one process: the spec's ``lm_decode_step`` of both on one backend's namespace (torch eager, jax
jitted, tf one XLA-compiled ``tf.function``), steps alternating, the median of each and of the
paired ratios. A key/value cache of ``--capacity`` positions (a step reads all of them).

    git archive <rev> | tar -x -C /tmp/before
    python tests/_decode_ab.py --before /tmp/before --backend torch --block gau

(with ``FLASHCORE_ROOT`` at this tree). The older tree's ``flashcore`` is loaded as ``fcb``, sharing
this one's ``flashcore.kernels`` (so that the backends' namespaces carry their kernels to both)."""

import argparse
import importlib.util
import json
import sys
import time

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--before", required=True, help="the older tree (its flashcore/ folder)")
ap.add_argument("--backend", required=True, choices=["torch", "jax", "tf"])
ap.add_argument("--block", required=True, choices=["gau", "transformer"])
ap.add_argument("--capacity", type=int, default=1024)
ap.add_argument("--dim", type=int, default=256)
ap.add_argument("--layers", type=int, default=2)
ap.add_argument("--steps", type=int, default=150)
a = ap.parse_args()
if a.backend == "torch":
    import torch

    torch.set_num_threads(1)
import flashcore as fc  # noqa: E402  (torch first, as the application does)
import flashcore.decode  # noqa: E402
import flashcore.kernels  # noqa: E402

sys.modules["fcb.kernels"] = flashcore.kernels
spec = importlib.util.spec_from_file_location(
    "fcb", f"{a.before}/flashcore/__init__.py", submodule_search_locations=[f"{a.before}/flashcore"]
)
fcb = importlib.util.module_from_spec(spec)
sys.modules["fcb"] = fcb
spec.loader.exec_module(fcb)
import fcb.decode  # noqa


def cfg_of(m):
    if a.block == "gau":
        block = m.FlashConfig(
            dim=a.dim,
            kind="gau",
            causal=True,
            length_mode="prefix",
            max_len=a.capacity,
            rel_bias="t5",
            token_shift=True,
        )
    else:
        block = m.TransformerConfig(dim=a.dim, heads=4)
    return m.LMConfig(block=block, vocab_size=256, num_layers=a.layers)


params_np = {k: v.astype(np.float32) for k, v in fc.init(cfg_of(fc), 0).items()}
fns = {}
for name, m, dec in (("before", fcb, fcb.decode), ("after", fc, sys.modules["flashcore.decode"])):
    cfg = cfg_of(m)
    if a.backend == "torch":
        from flashcore.torch.xp import xp

        p = {k: torch.as_tensor(v) for k, v in params_np.items()}
        st = dec.lm_decode_init(cfg, 1, capacity=a.capacity, xp=xp, dtype=torch.float32)

        def step(tok, st, p=p, dec=dec, cfg=cfg):
            with torch.no_grad():
                lg, st = dec.lm_decode_step(p, torch.from_numpy(tok), st, config=cfg, xp=xp)
            return lg.numpy(), st
    elif a.backend == "jax":
        import array_api_compat.numpy as xnp
        import jax
        import jax.numpy as jnp

        from flashcore.jax.xp import xp

        p = {k: jnp.asarray(v) for k, v in params_np.items()}
        st = jax.device_put(
            dec.lm_decode_init(cfg, 1, capacity=a.capacity, xp=xnp, dtype=np.float32)
        )
        f = jax.jit(
            lambda p, t, s, dec=dec, cfg=cfg: dec.lm_decode_step(p, t, s, config=cfg, xp=xp)
        )

        def step(tok, st, p=p, f=f):
            lg, st = f(p, jnp.asarray(tok, jnp.int32), st)
            return np.asarray(lg), st
    else:
        import tensorflow as tf

        from flashcore.tf.xp import xp

        p = {k: tf.constant(v) for k, v in params_np.items()}
        st = dec.lm_decode_init(cfg, 1, capacity=a.capacity, xp=xp, dtype=tf.float32)
        st = {k: {**v, "pos": tf.cast(v["pos"], tf.int64)} for k, v in st.items()}
        f = tf.function(
            lambda t, s, dec=dec, cfg=cfg, p=p: dec.lm_decode_step(p, t, s, config=cfg, xp=xp),
            jit_compile=True,
            reduce_retracing=True,
        )

        def step(tok, st, f=f):
            lg, st = f(tf.constant(tok.astype(np.int32)), st)
            return lg.numpy(), st

    fns[name] = [step, st, np.zeros((1,), np.int64)]

times = {"before": [], "after": []}
for i in range(4 + a.steps):
    order = ("before", "after") if i % 2 == 0 else ("after", "before")
    for name in order:
        step, st, tok = fns[name]
        t0 = time.perf_counter()
        out, st = step(tok, st)
        dt = time.perf_counter() - t0
        fns[name][1] = st
        fns[name][2] = np.argmax(out, axis=-1).astype(np.int64)
        if i >= 4:
            times[name].append(dt)
b, af = np.array(times["before"]), np.array(times["after"])
print(
    json.dumps(
        {
            "backend": a.backend,
            "block": a.block,
            "before_ms": 1e3 * float(np.median(b)),
            "after_ms": 1e3 * float(np.median(af)),
            "ratio_median": float(np.median(af / b)),
            "same_tokens": bool((fns["before"][2] == fns["after"][2]).all()),
        }
    )
)
