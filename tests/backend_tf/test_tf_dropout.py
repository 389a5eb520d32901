"""flashcore.tf dropout: Keras' ``training`` argument and SeedGenerator, keep rates, the drawn
masks being the ones applied, and traced calls with an unknown batch size (Keras ``fit``)."""

import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="the TF backend needs tensorflow")
keras = pytest.importorskip("keras", reason="the TF backend needs keras")

import flashcore as fc  # noqa: E402
from flashcore.conformance.assertions import assert_close  # noqa: E402
from flashcore.conformance.tolerances import longest_reduction, tolerance  # noqa: E402
from flashcore.tf import LM, layer_for, xp  # noqa: E402

D, P, T = 16, 0.3, 9
CONFIGS = {
    "gau": fc.FlashConfig(dim=D, kind="gau", qk_dim=8, max_len=256, causal=True, dropout=P),
    "flash": fc.FlashConfig(dim=D, qk_dim=8, chunk_size=4, causal=True, dropout=P),
    "transformer": fc.TransformerConfig(dim=D, heads=2, dropout=P),
}
LM_CFG = fc.LMConfig(block=CONFIGS["transformer"], vocab_size=19, num_layers=2)
X = tf.constant(np.random.default_rng(1).normal(size=(2, T, D)), tf.float32)


def _noisy(config, seed=0):
    """fc.init plus noise: the init's zero output kernel would hide every dropout effect."""
    rng = np.random.default_rng(seed)
    return {
        k: (v + rng.normal(0, 0.3, v.shape)).astype(np.float32)
        for k, v in fc.init(config, seed).items()
    }


def _layer(name, seed=0):
    config = CONFIGS[name]
    return layer_for(config)(config, params=_noisy(config), seed=seed)


def _max_diff(a, b) -> float:
    return float(tf.reduce_max(tf.abs(a - b)))


def test_keep_rate_is_binomial():
    layer = _layer("gau")
    masks = layer._masks(tf.zeros((4, 160, D)), True, None)  # attn: 102,400 entries
    assert masks["attn"].shape.num_elements() >= 100_000
    q = 1 - P
    for site, keep in masks.items():
        n = keep.shape.num_elements()
        rate = float(tf.reduce_mean(tf.cast(keep, tf.float64)))
        assert keep.dtype == tf.bool and abs(rate - q) <= 5 * math.sqrt(q * (1 - q) / n), site


@pytest.mark.parametrize("name", list(CONFIGS))
def test_training_draws_and_inference_is_the_deterministic_layer(name):
    layer = _layer(name)
    config = CONFIGS[name]
    plain = layer_for(config)(config.replace(dropout=0.0), params=_noisy(config))
    a, b = layer(X, training=True), layer(X, training=True)
    assert _max_diff(a, b) > 1e-3
    np.testing.assert_array_equal(layer(X), plain(X))  # training=None: no dropout, same code
    np.testing.assert_array_equal(layer(X, training=False), plain(X))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_given_masks_are_applied(name):
    layer, config = _layer(name), CONFIGS[name]
    rng = np.random.default_rng(4)
    masks = {k: rng.random(s) >= P for k, s in fc.dropout_shapes(config, 2, T).items()}
    got = layer(X, dropout=masks)
    ref = fc.block_fn(config)(
        {k: np.float64(v) for k, v in _noisy(config).items()},
        np.float64(X.numpy()),
        config=config,
        dropout=masks,
    )
    rtol, atol = tolerance("float32", "output")
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol * np.abs(ref).max())


def test_seeds_reproduce_and_differ():
    a1, a2, b = _layer("flash", seed=1), _layer("flash", seed=1), _layer("flash", seed=2)
    np.testing.assert_array_equal(a1(X, training=True), a2(X, training=True))
    assert _max_diff(a1(X, training=True), b(X, training=True)) > 1e-3


@pytest.mark.parametrize("name", ["flash", "transformer"])
def test_traced_with_an_unknown_batch(name):
    """Keras fit traces with batch None: GAU / FLASH run with xp.with_batch, the Transformer++
    block one example at a time under tf.map_fn; the masks follow both."""
    layer = _layer(name)

    @tf.function(input_signature=[tf.TensorSpec((None, T, D))])
    def f(x):
        return layer(x, training=True), layer(x, training=False)

    train_out, eval_out = f(X)
    # the batch-None trace against the eager call: the same math, summed per example
    assert_close(eval_out, layer(X), reorder=longest_reduction(CONFIGS[name], T))
    assert _max_diff(train_out, eval_out) > 1e-3


def test_lm_fit_with_dropout():
    lm = LM(LM_CFG, params=_noisy(LM_CFG))
    tokens = keras.Input((T,), dtype="int32")
    model = keras.Model(tokens, lm(tokens))
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    data = np.random.default_rng(0).integers(0, 19, (4, T)).astype(np.int32)
    hist = model.fit(data, data, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    e1, e2 = model.predict(data, verbose=0), model.predict(data, verbose=0)
    np.testing.assert_array_equal(e1, e2)  # inference: no dropout
    logits = lm(tf.constant(data), training=True)
    loss = fc.cross_entropy(logits, tf.constant(data), xp=xp)
    assert np.isfinite(float(loss))
