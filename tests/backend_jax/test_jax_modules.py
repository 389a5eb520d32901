"""flashcore.jax NNX modules: the naming table, canonical load / export (exact names and shapes,
nothing changed on failure, bit-exact round trips), forward = the functional API, nnx training."""

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="flashcore.jax needs jax")
nnx = pytest.importorskip("flax.nnx", reason="flashcore.jax needs flax")
jnp = jax.numpy

from _cases import ALL_CONFIGS, LAYER_CONFIGS, LM_CONFIGS, inputs_for, noisy_params  # noqa: E402

import flashcore as fc  # noqa: E402
from flashcore.conformance.assertions import assert_close  # noqa: E402
from flashcore.conformance.tolerances import longest_reduction  # noqa: E402
from flashcore.jax import (  # noqa: E402
    FLASH,
    GAU,
    LM,
    TransformerBlock,
    block_class,
    functional,
    naming_table,
)


def _native_paths(model) -> set[str]:
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {".".join(str(p) for p in path) for path, _ in flat}


def _bits(tree) -> dict:
    return {
        k: np.asarray(v).view(np.uint8 if v.dtype.itemsize == 1 else f"u{v.dtype.itemsize}")
        for k, v in tree.items()
    }


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(
        a[k].dtype == b[k].dtype and np.array_equal(_bits(a)[k], _bits(b)[k]) for k in a
    )


@pytest.mark.parametrize("name", list(ALL_CONFIGS))
def test_naming_table_covers_exactly_the_native_parameters(name):
    cfg = ALL_CONFIGS[name]
    model = block_class(cfg)(cfg, rngs=nnx.Rngs(0))
    table = naming_table(cfg)
    assert set(table) == set(fc.param_spec(cfg))
    assert {path for path, _ in table.values()} == _native_paths(model)
    assert type(model) is {"flash": FLASH, "gau": GAU}.get(
        getattr(cfg, "kind", None), LM if isinstance(cfg, fc.LMConfig) else TransformerBlock
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(
    "name", ["flash-causal-t5-layer-shift", "gau", "transformer", "lm-flash-abspos"]
)
def test_canonical_round_trip_is_bit_exact(name, dtype):
    cfg = ALL_CONFIGS[name]
    params = {k: jnp.asarray(v, dtype) for k, v in noisy_params(cfg).items()}
    model = block_class(cfg)(cfg, rngs=nnx.Rngs(1), dtype=dtype)
    model.load_canonical(params)
    assert _same(model.to_canonical(), params)
    # Built directly from canonical weights, and exported as NumPy by the caller.
    rebuilt = block_class(cfg)(cfg, params=params)
    assert _same(rebuilt.to_canonical(), params)
    host = {k: np.asarray(v) for k, v in rebuilt.to_canonical().items()}
    again = block_class(cfg)(cfg, params=host)
    assert _same(again.to_canonical(), params)


def _broken(params: dict, how: str) -> tuple[dict, str]:
    bad = dict(params)
    if how == "missing":
        del bad["out.kernel"]
        return bad, r"missing \['out.kernel'\]"
    if how == "unexpected":
        bad["out.extra"] = bad["out.bias"]
        return bad, r"unexpected \['out.extra'\]"
    bad["qk.gamma"] = bad["qk.gamma"][:, :-1]
    return bad, r"qk.gamma: expected \(4, 8\), got \(4, 7\)"


@pytest.mark.parametrize("how", ["missing", "unexpected", "shape"])
def test_failed_load_names_the_problem_and_changes_nothing(how):
    cfg = LAYER_CONFIGS["flash"]
    model = FLASH(cfg, rngs=nnx.Rngs(0))
    before = model.to_canonical()
    good = {k: v + 1.0 for k, v in noisy_params(cfg).items()}
    bad, message = _broken(good, how)
    with pytest.raises(ValueError, match=message):
        model.load_canonical(bad)
    assert _same(model.to_canonical(), before)
    with pytest.raises(ValueError, match=message):
        FLASH(cfg, params=bad)


def test_load_casts_to_the_module_dtype():
    cfg = LAYER_CONFIGS["gau"]
    model = GAU(cfg, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    p64 = noisy_params(cfg)
    model.load_canonical(p64)
    got = model.to_canonical()
    assert all(v.dtype == jnp.bfloat16 for v in got.values())
    assert np.array_equal(np.asarray(got["out.kernel"]), p64["out.kernel"].astype(jnp.bfloat16))


def test_transpose_flag_is_honoured():
    """Flax needs no transposes, but the table's flag must work: store out.kernel as [out, in]."""
    cfg = LAYER_CONFIGS["flash"]

    class TransposedOut(FLASH):
        @property
        def table(self):
            return {**super().table, "out.kernel": ("out.kernel_t", True)}

    params = noisy_params(cfg)
    model = TransposedOut(cfg, params=params)
    assert model.out.kernel_t[...].shape == params["out.kernel"].shape[::-1]
    assert _native_paths(model) == {path for path, _ in model.table.values()}
    np.testing.assert_array_equal(
        model.to_canonical()["out.kernel"], params["out.kernel"].astype(np.float32)
    )
    x = jnp.asarray(inputs_for(cfg)["x"])
    # Another memory layout of out.kernel: the same math, another summation order.
    want = FLASH(cfg, params=params)(x)
    assert_close(model(x), want, reorder=longest_reduction(cfg, x.shape[1]))


@pytest.mark.parametrize(
    "name",
    [
        "flash-causal-t5-layer-shift",
        "gau-causal-laplace",
        "transformer-scale",
        "lm-transformer-headbias",
    ],
)
def test_module_forward_is_the_functional_api(name):
    cfg = ALL_CONFIGS[name]
    params = noisy_params(cfg)
    model = block_class(cfg)(cfg, params=params)
    i = {k: jnp.asarray(v) for k, v in inputs_for(cfg).items()}
    p = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
    x = i["tokens"] if isinstance(cfg, fc.LMConfig) else i["x"]
    n = longest_reduction(cfg, x.size)
    want = functional.apply(p, x, config=cfg, mask=i["mask"])
    assert_close(model(x, mask=i["mask"]), want, reorder=n)
    if isinstance(cfg, fc.LMConfig):
        want = functional.loss(p, x, i["targets"], config=cfg, mask=i["mask"])
        assert_close(model.loss(x, i["targets"], mask=i["mask"]), want, reorder=n)


def test_constructor_takes_exactly_one_source_of_weights():
    cfg = LAYER_CONFIGS["flash"]
    with pytest.raises(TypeError, match="exactly one"):
        FLASH(cfg)
    with pytest.raises(TypeError, match="exactly one"):
        FLASH(cfg, rngs=nnx.Rngs(0), params=noisy_params(cfg))
    with pytest.raises(ValueError, match="kind='gau'"):
        GAU(cfg, rngs=nnx.Rngs(0))


def test_nnx_training_step_with_optax():
    optax = pytest.importorskip("optax", reason="optax is needed for the optimizer test")
    cfg = LM_CONFIGS["lm-flash"]
    model = LM(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    seq = jnp.asarray(np.tile(rng.integers(0, 11, (1, 6)), (2, 3)))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: m.loss(seq[:, :-1], seq[:, 1:]))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer)) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
    # The trained weights export under canonical names and reload into a fresh module.
    fresh = LM(cfg, params=model.to_canonical())
    assert float(fresh.loss(seq[:, :-1], seq[:, 1:])) == float(model.loss(seq[:, :-1], seq[:, 1:]))


def test_gau_refuses_a_mixed_chunk_core_when_built():
    """core= replaces FLASH's mixed-chunk core; GAU has none, so it is refused at construction
    (it used to be accepted and then make every call raise)."""
    from flashcore.layers import attention_core_flash

    cfg = LAYER_CONFIGS["gau"]
    with pytest.raises(ValueError, match="core= replaces FLASH's"):
        GAU(cfg, rngs=nnx.Rngs(0), core=attention_core_flash)
    FLASH(LAYER_CONFIGS["flash"], rngs=nnx.Rngs(0), core=attention_core_flash)  # accepted
