"""The inputs each framework's users pass, one table per backend: JAX modules and functions take
NumPy arrays and anything ``jnp.asarray`` takes; Keras layers take NumPy; torch modules refuse
NumPy arrays and lists with a TypeError that names the conversion. Every accepted input is checked
against the NumPy spec's output."""

from __future__ import annotations

import numpy as np
import pytest

import flashcore as fc
from flashcore.conformance.assertions import assert_close

CFG = fc.FlashConfig(dim=16, qk_dim=8, chunk_size=16, causal=True)
LM_CFG = fc.LMConfig(vocab_size=11, num_layers=1, block=CFG)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 20, 16)).astype(np.float32)
    mask = np.ones((2, 20), bool)
    mask[1, 13:] = False
    tokens = rng.integers(0, 11, size=(2, 20))
    p, lm_p = fc.init(CFG, seed=0), fc.init(LM_CFG, seed=1)
    return dict(
        x=x,
        mask=mask,
        tokens=tokens,
        params=p,
        lm_params=lm_p,
        y=fc.flash(p, x, config=CFG, mask=mask),
        y_unmasked=fc.flash(p, x, config=CFG),
        logits=fc.lm_logits(lm_p, tokens, config=LM_CFG),
        loss=fc.lm_loss(lm_p, tokens[:, :-1], tokens[:, 1:], config=LM_CFG),
    )


# (name, what it calls) -> the inputs as users pass them; each row is (x or tokens kind, mask kind)
JAX_ROWS = [
    ("module", "numpy", "numpy"),
    ("module", "list", "list"),
    ("module", "native", "numpy"),
    ("apply", "numpy", "numpy"),
    ("apply", "list", None),
    ("lm", "numpy", None),
    ("lm", "list", None),
    ("logits", "numpy", None),
    ("loss", "numpy", None),
]


def _as(kind, a, native):
    """``a`` (NumPy) as a user passes it: NumPy, a nested list, the framework's own array, or
    nothing (kind None)."""
    if kind is None:
        return None
    return {"numpy": lambda: a, "list": a.tolist}.get(kind, lambda: native(a))()


@pytest.mark.parametrize(("call", "x_kind", "mask_kind"), JAX_ROWS)
def test_jax_takes_what_jnp_asarray_takes(data, call, x_kind, mask_kind):
    pytest.importorskip("flax")
    import jax.numpy as jnp

    import flashcore.jax as fj

    conv = lambda kind, a: _as(kind, a, jnp.asarray)  # noqa: E731
    if call in ("module", "apply"):
        x, mask = conv(x_kind, data["x"]), conv(mask_kind, data["mask"])
        if call == "module":
            got = fj.FLASH(CFG, params=data["params"])(x, mask)
        else:
            got = fj.apply(data["params"], x, config=CFG, mask=mask)
        want = data["y"] if mask_kind else data["y_unmasked"]
        assert_close(got, want, err_msg=f"{call} {x_kind}")
    elif call in ("lm", "logits"):
        tokens = conv(x_kind, data["tokens"])
        got = (
            fj.LM(LM_CFG, params=data["lm_params"])(tokens)
            if call == "lm"
            else fj.logits(data["lm_params"], tokens, config=LM_CFG)
        )
        assert_close(got, data["logits"], err_msg=f"{call} {x_kind}")
    else:
        t = data["tokens"]
        got = fj.loss(data["lm_params"], conv(x_kind, t[:, :-1]), conv(x_kind, t[:, 1:]), config=LM_CFG)  # fmt: skip
        assert_close(got, data["loss"], quantity="loss")


def test_jax_check_grads_on_apply_in_x64():
    """jax.test_util.check_grads on the functional API with NumPy float64 parameters and input."""
    pytest.importorskip("flax")
    from _jax64 import x64
    from jax.test_util import check_grads

    import flashcore.jax as fj

    cfg = fc.FlashConfig(dim=8, qk_dim=4, chunk_size=8, causal=True)
    p = fc.init(cfg, seed=0, dtype=np.float64)
    x = np.random.default_rng(0).normal(size=(1, 12, 8))
    with x64():
        check_grads(lambda x: fj.apply(p, x, config=cfg), (x,), order=1, modes=["rev"])


TF_ROWS = [("layer", "numpy", "numpy"), ("layer", "native", "numpy"), ("lm", "numpy", None)]


@pytest.mark.parametrize(("call", "x_kind", "mask_kind"), TF_ROWS)
def test_keras_layers_take_numpy(data, call, x_kind, mask_kind):
    tf = pytest.importorskip("tensorflow")
    import flashcore.tf as ft

    conv = lambda kind, a: _as(kind, a, tf.convert_to_tensor)  # noqa: E731
    if call == "layer":
        layer = ft.FLASH(CFG, params=data["params"])
        got = layer(conv(x_kind, data["x"]), mask=conv(mask_kind, data["mask"]))
        assert_close(got, data["y"], err_msg=f"{call} {x_kind}")
    else:
        got = ft.LM(LM_CFG, params=data["lm_params"])(conv(x_kind, data["tokens"]))
        assert_close(got, data["logits"], err_msg=f"{call} {x_kind}")


# (x kind, mask kind, refused) for flashcore.torch.FLASH and LM
TORCH_ROWS = [
    ("native", "native", None),
    ("numpy", None, "argument 0 is a numpy.ndarray"),
    ("list", None, "argument 0 is a builtins.list"),
    ("native", "numpy", "mask is a numpy.ndarray"),
]


@pytest.mark.parametrize(("x_kind", "mask_kind", "refused"), TORCH_ROWS)
def test_torch_modules_refuse_numpy_naming_the_fix(data, x_kind, mask_kind, refused):
    torch = pytest.importorskip("torch")
    import flashcore.torch as ftorch

    conv = lambda kind, a: _as(kind, a, torch.as_tensor)  # noqa: E731
    m = ftorch.FLASH(CFG)
    m.load_canonical(data["params"])
    lm = ftorch.LM(LM_CFG)
    lm.load_canonical(data["lm_params"])
    x, mask = conv(x_kind, data["x"]), conv(mask_kind, data["mask"])
    tokens = conv(x_kind, data["tokens"])
    if refused is None:
        with torch.no_grad():
            assert_close(m(x, mask=mask), data["y"])
            assert_close(lm(tokens), data["logits"])
        return
    with pytest.raises(TypeError, match=rf"FLASH takes torch tensors, but {refused}.*torch\.as_tensor"):  # fmt: skip
        m(x, mask=mask)
    if mask_kind is None:
        with pytest.raises(TypeError, match=rf"LM takes torch tensors, but {refused}"):
            lm(tokens)
