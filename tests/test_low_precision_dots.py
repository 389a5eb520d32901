"""The XLA backends' low-precision dots (:mod:`flashcore.dotpath`): on CPU a bfloat16 layer's
dots run in float32 from bf16 storage (seen in the traced program: every dot's operands are
float32), ``FLASHCORE_LOW_PRECISION_DOTS`` overrides the choice, and both paths pass the
conformance bfloat16 rows against the float64 goldens."""

from __future__ import annotations

import importlib
import importlib.util
import re

import numpy as np
import pytest

import flashcore as fc
from flashcore.conformance import golden
from flashcore.conformance.runner import run_case
from flashcore.dotpath import ENV, label, low_precision_dots

BACKENDS = ("jax", "tf")
_NEEDS = {"jax": "jax", "tf": "tensorflow"}
CASE = "flash-causal-T>>C"  # a causal FLASH layer over several chunks


@pytest.fixture(params=BACKENDS)
def backend(request):
    if importlib.util.find_spec(_NEEDS[request.param]) is None:
        pytest.skip(f"{_NEEDS[request.param]} is not installed")
    return request.param


def _layer_dot_dtypes(backend: str) -> set[str]:
    """The operand dtypes of every dot in the traced forward + backward of a small causal FLASH
    layer built in bfloat16 (its dense layers, chunk attention and linear state)."""
    cfg = fc.FlashConfig(dim=16, expansion=2, qk_dim=8, chunk_size=4, causal=True, max_len=8)
    params = fc.init(cfg, seed=0, dtype=np.float32)
    x = np.random.default_rng(0).standard_normal((1, 10, 16)).astype(np.float32)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        from flashcore.jax import functional

        p = {k: jnp.asarray(v, jnp.bfloat16) for k, v in params.items()}

        def loss(p, x):
            y = functional.apply(p, x, config=cfg)
            return jnp.sum(y.astype(jnp.float32))

        text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(p, jnp.asarray(x, jnp.bfloat16))
        # stablehlo.dot_general %a, %b, ... : (tensor<4x8xbf16>, tensor<8x16xbf16>) -> ...
        sigs = re.findall(
            r"stablehlo\.dot_general .*?: \((tensor<[^>]*>), (tensor<[^>]*>)\)", text.as_text()
        )
        assert sigs, "no dot in the traced layer"
        return {re.search(r"x?([a-z]+\d+)>$", t).group(1) for pair in sigs for t in pair}
    import tensorflow as tf

    from flashcore.tf.xp import xp

    p = {k: tf.constant(v, tf.bfloat16) for k, v in params.items()}

    @tf.function(autograph=False)
    def grads(p, x):
        with tf.GradientTape() as tape:
            tape.watch([x, p])
            y = fc.flash(p, x, config=cfg, xp=xp)
            loss = tf.reduce_sum(tf.cast(y, tf.float32))
        return tape.gradient(loss, [x, p])

    graph = grads.get_concrete_function(p, tf.constant(x, tf.bfloat16)).graph
    dots = [
        op
        for op in graph.get_operations()
        if op.type in ("MatMul", "BatchMatMulV2", "BatchMatMulV3")
    ]
    assert dots, "no dot in the traced layer"
    return {op.inputs[i].dtype.name for op in dots for i in (0, 1)}


def test_on_cpu_bf16_dots_run_in_float32(backend, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    xp_module = importlib.import_module(f"flashcore.{backend}.xp")
    assert xp_module.dot_path("bfloat16") == "float32"
    assert xp_module.dot_path("float32") == "native"
    assert _layer_dot_dtypes(backend) == {"float32" if backend == "tf" else "f32"}


def test_override_native_keeps_bf16_dots(backend, monkeypatch):
    monkeypatch.setenv(ENV, "native")
    xp_module = importlib.import_module(f"flashcore.{backend}.xp")
    assert xp_module.dot_path("bfloat16") == "native"
    assert ("bfloat16" if backend == "tf" else "bf16") in _layer_dot_dtypes(backend)


@pytest.mark.parametrize("path", ["auto", "native"])
def test_bf16_matches_the_spec_on_either_path(backend, path, monkeypatch):
    """The conformance bfloat16 rows (the central table) on a causal FLASH layer."""
    monkeypatch.setenv(ENV, path)
    if backend == "jax":
        from flashcore.jax.adapter import JaxAdapter as Adapter

        adapter = Adapter()
    else:
        from flashcore.tf.adapter import TFAdapter

        adapter = TFAdapter()
    checks = run_case(adapter, golden.load(CASE), "bfloat16")
    assert checks and all(c.status in ("pass", "fail") for c in checks), checks
    failed = [c.describe() for c in checks if c.status != "pass"]
    assert not failed, "\n".join(failed)


def test_the_rule_and_the_override(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert low_precision_dots("cpu") == "float32"
    assert [low_precision_dots(p) for p in ("gpu", "cuda", "tpu")] == ["native"] * 3
    monkeypatch.setenv(ENV, "native")
    assert low_precision_dots("cpu") == "native"
    monkeypatch.setenv(ENV, " Float32 ")
    assert low_precision_dots("tpu") == "float32"
    monkeypatch.setenv(ENV, "fp32")
    with pytest.raises(ValueError, match=f"{ENV}='fp32' is not one of auto, float32, native"):
        low_precision_dots("cpu")
    assert label("bfloat16", "float32") == "bfloat16 (f32 dots)"
    assert label("bfloat16", "native") == "bfloat16"
    assert label("float32", "float32") == "float32"
