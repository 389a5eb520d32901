"""The fused Triton core (flashcore.torch.kernels.triton_core) against the spec's
attention_core_flash, run by Triton's interpreter on the CPU.

TRITON_INTERPRET must be set before Triton is first imported, so the kernels run in a child
process (this file, run as a script; it also keeps TensorFlow out of that process). The child
runs every case once and prints JSON; each pytest case checks its own entry. Sizes are tiny
(C=16, s=16, e=32): the interpreter executes every program instance in Python.

bfloat16: the interpreter's tl.dot mishandles bfloat16, so under the interpreter the kernels
compute bfloat16 tiles' products in float32 (a constexpr switch); the bfloat16 cases still
check the loads, stores and conversions of bfloat16 tensors.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

C, S, E = 16, 16, 32

# id -> (FlashConfig options, batch, time, mask, bias, dtype)
CASES = {
    "causal-sum-b2-t37": (dict(causal=True), 2, 37, "none", True, "float32"),
    "causal-sum-b1-t37-holes": (dict(causal=True), 1, 37, "holes", True, "float32"),
    "causal-sum-b2-t16-nobias": (dict(causal=True), 2, 16, "none", False, "float32"),
    "causal-mean-b2-t37-holes": (dict(causal=True, linear_norm="mean"), 2, 37, "holes", True, "float32"),
    "causal-bias-before-scale-b1-t40": (dict(causal=True, bias_before_scale=True), 1, 40, "pad", True, "float32"),
    "causal-b1-t1": (dict(causal=True), 1, 1, "none", True, "float32"),
    "bidir-sum-b2-t37": (dict(causal=False), 2, 37, "none", True, "float32"),
    "bidir-sum-b2-t37-pad": (dict(causal=False), 2, 37, "pad", True, "float32"),
    "bidir-mean-b1-t37-holes": (dict(causal=False, linear_norm="mean"), 1, 37, "holes", True, "float32"),
    "bidir-length-b2-t30-pad": (dict(causal=False, linear_norm="length"), 2, 30, "pad", True, "float32"),
    "bidir-length-array-b1-t30": (dict(causal=False, linear_norm="length", length_mode="array"), 1, 30, "pad", False, "float32"),
    "bidir-b1-t5-empty-row": (dict(causal=False), 2, 5, "empty", True, "float32"),
    "causal-bf16-b1-t37": (dict(causal=True), 1, 37, "pad", True, "bfloat16"),
    "bidir-bf16-b1-t37": (dict(causal=False, linear_norm="mean"), 1, 37, "holes", True, "bfloat16"),
    "causal-autocast-b1-t37": (dict(causal=True), 1, 37, "none", True, "autocast"),
    "causal-float16-b1-t37": (dict(causal=True), 1, 37, "none", True, "float16"),
}  # fmt: skip
NAMES = ("out", "qq", "qk", "lq", "lk", "v", "bias")
# The central tolerance table has no float16 row; bfloat16's (coarser) bounds cover float16.
TABLE_DTYPE = {"float32": "float32", "bfloat16": "bfloat16", "autocast": "bfloat16", "float16": "bfloat16"}  # fmt: skip


@pytest.fixture(scope="module")
def results():
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", list(CASES))
def test_triton_core_matches_spec(results, case):
    r = results["cases"][case]
    assert "error" not in r, r.get("error")
    bad = {k: v for k, v in r["ratios"].items() if not v <= 1.0}
    assert not bad, f"worst error / tolerance per tensor (dtype {TABLE_DTYPE[CASES[case][5]]}): {r}"


def test_child_process_is_clean(results):
    """The interpreter was on, TensorFlow never loaded, and the dispatcher does not send CPU
    tensors to Triton even though Triton imports."""
    env = results["env"]
    assert env["interpreted"] is True
    assert env["tensorflow_loaded"] is False
    assert env["cpu_path"] == "torch"


# -- the child process ------------------------------------------------------------------------


def _inputs(b, t, mask, bias, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    args = [torch.randn(b, t, S, generator=g) for _ in range(4)] + [
        torch.randn(b, t, E, generator=g)
    ]
    w = 0.5 * torch.randn(C, C, generator=g) if bias else None
    m = None
    if mask == "pad":
        m = torch.ones(b, t, dtype=torch.bool)
        m[0, t - max(1, t // 3) :] = False
    elif mask == "holes":
        m = torch.rand(b, t, generator=g) > 0.3
        m[:, :C] = False  # a chunk without a real key
    elif mask == "empty":
        m = torch.ones(b, t, dtype=torch.bool)
        m[0] = False
    return args, w, m


def _run(core, args, bias, config, mask, autocast=False):
    import torch

    from flashcore.torch.xp import xp as xpt

    args = [a.detach().clone().requires_grad_(True) for a in args]
    bias = bias.detach().clone().requires_grad_(True) if bias is not None else None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = core(*args, bias=bias, config=config, mask=mask, xp=xpt)
    cot = torch.sin(torch.arange(out.numel(), dtype=torch.float64)).reshape(out.shape)
    (out.double() * cot).sum().backward()
    res = [out] + [a.grad for a in args] + ([bias.grad] if bias is not None else [])
    return [r.detach().double() for r in res]


def _cast(a, dtype):
    return None if a is None else a.to(dtype)


def _child() -> None:
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported
    import torch

    torch.set_num_threads(1)
    import triton  # noqa: F401

    import flashcore as fc
    from flashcore.conformance.tolerances import tolerance
    from flashcore.layers import attention_core_flash
    from flashcore.torch import kernels
    from flashcore.torch.kernels.triton_core import attention_core_triton

    out: dict = {"cases": {}}
    for i, (name, (kw, b, t, mask, bias, dtype)) in enumerate(CASES.items()):
        try:
            config = fc.FlashConfig(dim=8, qk_dim=S, chunk_size=C, max_len=32, **kw)
            args, w, m = _inputs(b, t, mask, bias, seed=i)
            if dtype in ("bfloat16", "float16", "autocast"):  # values exactly representable
                args = [a.to(torch.bfloat16).float() for a in args]
                w = w.to(torch.bfloat16).float() if w is not None else None
            ref = _run(
                attention_core_flash, [a.double() for a in args], _cast(w, torch.float64), config, m
            )
            if dtype in ("bfloat16", "float16"):
                dt = getattr(torch, dtype)
                got = _run(attention_core_triton, [a.to(dt) for a in args], _cast(w, dt), config, m)
            else:
                got = _run(attention_core_triton, args, w, config, m, autocast=dtype == "autocast")
            ratios = {}
            for tensor, r, g in zip(NAMES, ref, got):
                rtol, atol = tolerance(
                    TABLE_DTYPE[dtype], "output" if tensor == "out" else "grad_input"
                )
                scale = float(r.abs().max()) or 1.0
                err = ((g - r).abs() / (atol * scale + rtol * r.abs())).max()
                ratios[tensor] = float(err) if torch.isfinite(g).all() else float("inf")
            out["cases"][name] = {"ratios": ratios}
        except Exception as err:  # reported by the case's own test
            out["cases"][name] = {"error": f"{type(err).__name__}: {err}"}
    cfg = fc.FlashConfig(dim=8, qk_dim=S, chunk_size=C, max_len=32)
    out["env"] = {
        "interpreted": os.environ.get("TRITON_INTERPRET") == "1",
        "tensorflow_loaded": "tensorflow" in sys.modules,
        "cpu_path": kernels.core_path(torch.zeros(1, 4, E), cfg, None, None),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    _child()
