"""One forward of a GAU / FLASH layer in every installed backend, from NumPy in, to NumPy out.

Shared by test_nan_containment.py, test_causality_grads.py and test_long_context.py. A backend is
a name; :func:`unsupported` says which configs it does not cover (left out of the
parameters), :func:`skip_reason` also why it cannot run here (pytest.skip takes it), and
:func:`forward` runs it:

    spec          flashcore on NumPy
    torch-spec    flashcore on torch tensors, the spec's attention cores
                  (flashcore.kernels.spec_cores of the torch namespace)
    torch-core    flashcore on torch tensors with the namespace's fast cores
                  (flashcore.torch.xp.KERNELS: the blocked CPU core where it applies: relu2, no
                  segment ids)
    jax           flashcore.jax.functional.apply (on CPU: the spec's core)
    jax-pallas    the same with the Pallas kernel in interpret mode (FLASH, relu2, 'sum', no
                  segment ids)
    tf            flashcore on tf tensors through the flashcore.tf array-API shim
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
from _cases import noisy_params

import flashcore as fc
from flashcore.layers import fused_core_unsupported

__all__ = [
    "BACKENDS",
    "forward",
    "jax_x64",
    "layer_fn",
    "noisy_params",
    "pallas_core",
    "pullback",
    "skip_reason",
    "torch_xp",
    "unsupported",
]

BACKENDS = ("spec", "torch-spec", "torch-core", "jax", "jax-pallas", "tf")
_NEEDS = {"torch": "torch", "jax": "jax", "tf": "tensorflow"}


def unsupported(backend: str, config: fc.FlashConfig, segment_ids=None) -> str | None:
    """Why ``backend`` does not cover ``config`` (with these segment ids), or None. Such
    combinations are left out of the tests' parameters, not skipped."""
    core = {"torch-core": "torch", "jax-pallas": "pallas"}.get(backend)
    if core is None:
        return None
    return fused_core_unsupported(core, config, segment_ids=segment_ids)  # the spec's table


def skip_reason(backend: str, config: fc.FlashConfig, segment_ids=None) -> str | None:
    """None when ``backend`` can run ``config`` (with these segment ids) here, else why not."""
    module = _NEEDS.get(backend.split("-")[0])
    if module is not None and importlib.util.find_spec(module) is None:
        return f"{module} is not installed"
    return unsupported(backend, config, segment_ids)


def jax_x64(dtype: str):
    """A context in which JAX computes in ``dtype`` (x64 on only for float64, thread-locally)."""
    import jax

    return jax.enable_x64(dtype == "float64")


def layer_fn(config: fc.FlashConfig):
    return fc.flash if config.kind == "flash" else fc.gau


def torch_xp(backend: str):
    """The namespace of a torch backend: with its fast cores for torch-core, else the spec's."""
    from flashcore.kernels import spec_cores
    from flashcore.torch.xp import xp

    return xp if backend == "torch-core" else spec_cores(xp)


def pallas_core():
    from flashcore.jax.kernels import pallas_core

    return functools.partial(pallas_core, interpret=True)


def forward(backend, config, params, x, mask=None, segment_ids=None, dtype="float64"):
    """The layer's output (b, t, d) as NumPy float64. params: canonical NumPy; x: (b, t, d)."""
    kw = {"config": config}
    if backend == "spec":
        cast = lambda a: np.asarray(a, dtype)  # noqa: E731
        return layer_fn(config)(
            {k: cast(v) for k, v in params.items()},
            cast(x),
            mask=mask,
            segment_ids=segment_ids,
            **kw,
        )
    if backend.startswith("torch"):
        import torch

        dt = getattr(torch, dtype)
        t = lambda a: None if a is None else torch.as_tensor(a)  # noqa: E731
        with torch.no_grad():
            out = layer_fn(config)(
                {k: torch.as_tensor(v, dtype=dt) for k, v in params.items()},
                torch.as_tensor(x, dtype=dt),
                mask=t(mask),
                segment_ids=t(segment_ids),
                xp=torch_xp(backend),
                **kw,
            )
        return out.to(torch.float64).numpy()
    if backend.startswith("jax"):
        import jax.numpy as jnp

        from flashcore.jax import functional

        with jax_x64(dtype):
            dt = jnp.dtype(dtype)
            core = pallas_core() if backend == "jax-pallas" else None
            out = functional.apply(
                {k: jnp.asarray(v, dt) for k, v in params.items()},
                jnp.asarray(x, dt),
                mask=None if mask is None else jnp.asarray(mask),
                segment_ids=None if segment_ids is None else jnp.asarray(segment_ids),
                core=core,
                **kw,
            )
            return np.asarray(out.astype(jnp.float32 if dtype != "float64" else dt), np.float64)
    if backend == "tf":
        import tensorflow as tf

        from flashcore.tf.xp import xp

        dt = getattr(tf, dtype)
        out = layer_fn(config)(
            {k: tf.constant(v, dtype=dt) for k, v in params.items()},
            tf.constant(x, dtype=dt),
            mask=None if mask is None else tf.constant(mask),
            segment_ids=None if segment_ids is None else tf.constant(segment_ids),
            xp=xp,
            **kw,
        )
        return tf.cast(out, tf.float64).numpy()
    raise ValueError(f"unknown backend {backend!r}")


def pullback(backend, config, params, x, mask=None, segment_ids=None, dtype="float64"):
    """(out, vjp): the layer's output (b, t, d) and ``vjp(cot) -> d<out, cot>/dx`` (b, t, d), both
    NumPy float64, by the backend's own autodiff (the spec: torch's). One forward, many vjps."""
    if backend in ("spec", "torch-spec", "torch-core"):
        import torch

        dt = getattr(torch, dtype)
        t = lambda a: None if a is None else torch.as_tensor(a)  # noqa: E731
        xt = torch.tensor(x, dtype=dt, requires_grad=True)
        out = layer_fn(config)(
            {k: torch.as_tensor(v, dtype=dt) for k, v in params.items()},
            xt,
            config=config,
            mask=t(mask),
            segment_ids=t(segment_ids),
            xp=torch_xp(backend),
        )

        def vjp_torch(cot):
            c = torch.as_tensor(cot, dtype=dt)
            (g,) = torch.autograd.grad(out, xt, c, retain_graph=True)
            return g.to(torch.float64).numpy()

        return out.detach().to(torch.float64).numpy(), vjp_torch
    if backend.startswith("jax"):
        import jax
        import jax.numpy as jnp

        from flashcore.jax import functional

        with jax_x64(dtype):
            dt = jnp.dtype(dtype)
            p = {k: jnp.asarray(v, dt) for k, v in params.items()}
            kw = dict(
                config=config,
                mask=None if mask is None else jnp.asarray(mask),
                segment_ids=None if segment_ids is None else jnp.asarray(segment_ids),
                core=pallas_core() if backend == "jax-pallas" else None,
            )
            out, pull = jax.vjp(lambda a: functional.apply(p, a, **kw), jnp.asarray(x, dt))
            pull = jax.jit(pull)  # one compile instead of op-by-op dispatch on every call

        def vjp_jax(cot):
            with jax_x64(dtype):
                (g,) = pull(jnp.asarray(cot, dt))
                return np.asarray(g.astype(jnp.float32 if dtype != "float64" else dt), np.float64)

        f64 = jnp.float32 if dtype != "float64" else dt
        with jax_x64(dtype):
            return np.asarray(out.astype(f64), np.float64), vjp_jax
    if backend == "tf":
        import tensorflow as tf

        from flashcore.tf.xp import xp

        dt = getattr(tf, dtype)
        xt = tf.constant(x, dtype=dt)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(xt)
            out = layer_fn(config)(
                {k: tf.constant(v, dtype=dt) for k, v in params.items()},
                xt,
                config=config,
                mask=None if mask is None else tf.constant(mask),
                segment_ids=None if segment_ids is None else tf.constant(segment_ids),
                xp=xp,
            )

        def vjp_tf(cot):
            g = tape.gradient(out, xt, output_gradients=tf.constant(cot, dtype=dt))
            return tf.cast(g, tf.float64).numpy()

        return tf.cast(out, tf.float64).numpy(), vjp_tf
    raise ValueError(f"unknown backend {backend!r}")
