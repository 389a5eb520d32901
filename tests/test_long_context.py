"""Long contexts in low precision, every backend: causal FLASH at a reduced width (d = 16, s = 8,
e = 32, C = 256), T = 64K forward and backward and T = 256K forward, in bfloat16 and float16,
against the float32 result of the same backend on the same rounded weights, inputs and cotangent
(rounded to values that bfloat16 and float16 both hold exactly). Every result is finite and its
largest error, as a fraction of the float32 result's largest entry, is within the bound of
``conformance.tolerances.LONG_CONTEXT`` (where the measured numbers are).

Accumulation: the layers hand their attention core float32 arrays for float16 / bfloat16 inputs,
so the chunk states, their prefix sum and the relu^2 scores accumulate in float32 whichever core
runs (checked with a spy on each backend's own core). And the bound is tight enough to catch a
state summed in bfloat16: the spec's core with a namespace whose ``cumulative_sum`` rounds every
partial sum to bfloat16 misses it by far at 256K (float16, torch; 1024 chunks).
"""

import numpy as np
import pytest
from _layer_backends import forward, noisy_params, pullback, skip_reason

import flashcore as fc
from flashcore._xp import dtype_name
from flashcore.conformance.tolerances import long_context_tolerance

ml_dtypes = pytest.importorskip("ml_dtypes", reason="rounds to bfloat16 / float16 in NumPy")

T_BACKWARD, T_FORWARD = 1 << 16, 1 << 18
CONFIG = fc.FlashConfig(dim=16, qk_dim=8, chunk_size=256, causal=True)
LOW = ("bfloat16", "float16")
BACKENDS = {"torch": "torch-core", "jax": "jax", "tf": "tf"}  # each one's default core on CPU
CASES = ("output-64K", "grad_input-64K", "output-256K")


def _round(a: np.ndarray) -> np.ndarray:
    """float64 values that bfloat16 and float16 both represent exactly (these sizes: no clipping)."""
    return a.astype(ml_dtypes.bfloat16).astype(np.float16).astype(np.float64)


def _err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def _inputs():
    rng = np.random.default_rng(0)
    params = {k: _round(v) for k, v in noisy_params(CONFIG).items()}
    x = _round(rng.normal(size=(1, T_FORWARD, CONFIG.dim)))
    cot = _round(rng.normal(size=(1, T_BACKWARD, CONFIG.dim)))
    return params, x, cot


@pytest.fixture(scope="module", params=list(BACKENDS))
def measured(request) -> dict:
    """{(dtype, case): (all finite, error)} for one backend, and 'bf16-acc' for torch."""
    backend = BACKENDS[request.param]
    reason = skip_reason(backend, CONFIG)
    if reason:
        pytest.skip(reason)
    params, x, cot = _inputs()
    short = x[:, :T_BACKWARD]
    out = {}
    y32, vjp32 = pullback(backend, CONFIG, params, short, dtype="float32")
    g32 = vjp32(cot)
    for dt in LOW:
        y, vjp = pullback(backend, CONFIG, params, short, dtype=dt)
        g = vjp(cot)
        out[dt, "output-64K"] = (bool(np.isfinite(y).all()), _err(y, y32))
        out[dt, "grad_input-64K"] = (bool(np.isfinite(g).all()), _err(g, g32))
    del y32, vjp32, g32, y, vjp, g
    y32 = forward(backend, CONFIG, params, x, dtype="float32")
    for dt in LOW:
        y = forward(backend, CONFIG, params, x, dtype=dt)
        out[dt, "output-256K"] = (bool(np.isfinite(y).all()), _err(y, y32))
    if request.param == "torch":
        y = _torch_with_bf16_state(params, x, "float16")
        out["bf16-acc", "output-256K"] = (bool(np.isfinite(y).all()), _err(y, y32))
    print(f"\n{request.param}: " + ", ".join(f"{k[0]} {k[1]} {v[1]:.2e}" for k, v in out.items()))
    return out


@pytest.mark.slow  # the 64K / 256K runs of every backend (the fixture)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_stays_finite_and_close_to_float32(measured, dtype, case):
    finite, err = measured[dtype, case]
    assert finite, f"{dtype} {case}: non-finite values"
    quantity, length = case.split("-")
    bound = long_context_tolerance(dtype, quantity)
    assert err <= bound, f"{dtype} {case}: error {err:.3e} of scale > bound {bound:.1e}"


@pytest.mark.slow
@pytest.mark.parametrize("measured", ["torch"], indirect=True)  # a torch namespace does it
def test_a_state_summed_in_bfloat16_breaks_the_bound(measured):
    """What the float16 bound would see if the chunk states were accumulated in bfloat16."""
    finite, err = measured["bf16-acc", "output-256K"]
    bound = long_context_tolerance("float16", "output")
    assert finite and err > 3 * bound, f"bf16-accumulated error {err:.3e} vs bound {bound:.1e}"
    assert measured["float16", "output-256K"][1] < err / 3


def _torch_with_bf16_state(params, x, dtype):
    """The torch layer output (NumPy float64) with the spec's core, whose prefix sum over chunk
    states runs one chunk at a time with every partial sum rounded to bfloat16."""
    import array_api_compat.torch as txp
    import torch

    from flashcore.layers import attention_core_flash

    class Bf16Sum:
        def __getattr__(self, name):
            return getattr(txp, name)

        def cumulative_sum(self, a, /, *, axis=0, dtype=None, include_initial=False):
            acc = torch.zeros_like(a.select(axis, 0))  # (b, s, e) per chunk
            steps = [acc] if include_initial else []
            for i in range(a.shape[axis]):
                acc = (acc + a.select(axis, i)).to(torch.bfloat16).to(a.dtype)
                steps.append(acc)
            return torch.stack(steps, dim=axis)

    def core(qq, qk, lq, lk, v, **kw):
        return attention_core_flash(qq, qk, lq, lk, v, **{**kw, "xp": Bf16Sum()})

    dt = getattr(torch, dtype)
    with torch.no_grad():
        y = fc.flash(
            {k: torch.as_tensor(v, dtype=dt) for k, v in params.items()},
            torch.as_tensor(x, dtype=dt),
            config=CONFIG,
            xp=txp,
            core=core,
        )
    return y.double().numpy()


def _spy(core, seen: list):
    def spied(qq, qk, lq, lk, v, **kw):
        out = core(qq, qk, lq, lk, v, **kw)
        seen.append([dtype_name(a.dtype) for a in (qq, qk, lq, lk, v, out)])
        return out

    return spied


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_every_core_gets_and_returns_float32_in_low_precision(backend, dtype):
    """The state and scores accumulate in float32 in whichever core the backend runs."""
    reason = skip_reason(BACKENDS[backend], CONFIG)
    if reason:
        pytest.skip(reason)
    rng = np.random.default_rng(1)
    params = noisy_params(CONFIG)
    x = rng.normal(size=(1, 600, CONFIG.dim))  # three chunks, the last partial
    seen = []
    if backend == "torch":
        import array_api_compat.torch as xp
        import torch

        from flashcore.torch import kernels

        dt = getattr(torch, dtype)
        fc.flash(
            {k: torch.as_tensor(v, dtype=dt) for k, v in params.items()},
            torch.as_tensor(x, dtype=dt),
            config=CONFIG,
            xp=xp,
            core=_spy(kernels.attention_core, seen),
        )
        assert kernels.core_path(torch.zeros(1, dtype=torch.float32), CONFIG) == "torch"
    elif backend == "jax":
        import jax.numpy as jnp

        from flashcore.jax import functional, kernels

        dt = jnp.dtype(dtype)
        functional.apply(
            {k: jnp.asarray(v, dt) for k, v in params.items()},
            jnp.asarray(x, dt),
            config=CONFIG,
            core=_spy(kernels.flash_core, seen),
        )
    else:
        import tensorflow as tf

        from flashcore.layers import attention_core_flash
        from flashcore.tf.xp import xp

        dt = getattr(tf, dtype)
        fc.flash(
            {k: tf.constant(v, dtype=dt) for k, v in params.items()},
            tf.constant(x, dtype=dt),
            config=CONFIG,
            xp=xp,
            core=_spy(attention_core_flash, seen),
        )
    assert seen == [["float32"] * 6]
