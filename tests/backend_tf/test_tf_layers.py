"""The Keras layers: naming tables, canonical load / export, masks, Keras models, shapes, saving."""

import json

import ml_dtypes
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="the TF backend needs tensorflow")
keras = pytest.importorskip("keras", reason="the TF backend needs keras")

import flashcore as fc  # noqa: E402
from flashcore.conformance.assertions import assert_close  # noqa: E402
from flashcore.conformance.tolerances import longest_reduction, tolerance  # noqa: E402
from flashcore.tf import FLASH, GAU, LM, TransformerBlock, block_class, naming_table  # noqa: E402

rng = np.random.default_rng(0)
T, D = 10, 16

FLASH_CFG = fc.FlashConfig(
    dim=D, qk_dim=8, chunk_size=4, causal=True, norm="layer", token_shift=True
)
GAU_CFG = fc.FlashConfig(
    dim=D, qk_dim=8, kind="gau", max_len=16, rel_bias="t5", t5_buckets=8, norm="rms"
)
TRANSFORMER_CFG = fc.TransformerConfig(dim=D, heads=2, causal=False)
LM_CFG = fc.LMConfig(block=FLASH_CFG, vocab_size=19, num_layers=2, tie_embeddings=False)
CONFIGS = {
    "flash": FLASH_CFG,
    "gau": GAU_CFG,
    "transformer": TRANSFORMER_CFG,
    "lm": LM_CFG,
    "lm-transformer": fc.LMConfig(block=fc.TransformerConfig(dim=D, heads=2), vocab_size=7),
    "flash-scale-nobias": fc.FlashConfig(dim=D, qk_dim=8, chunk_size=4, rel_bias="none"),
    "lm-peer-options": fc.LMConfig(
        block=GAU_CFG.replace(causal=True),
        vocab_size=7,
        head_bias=True,
        final_norm="scale",
        abs_pos="scaled_sinusoidal",
    ),
}


def _noisy(cfg, seed=0, dtype=np.float32):
    r = np.random.default_rng(seed)
    return {k: (v + r.normal(0, 0.3, v.shape)).astype(dtype) for k, v in fc.init(cfg, seed).items()}


def _input(cfg, b=2, t=T):
    if isinstance(cfg, fc.LMConfig):
        return tf.constant(rng.integers(1, cfg.vocab_size, (b, t)), tf.int32)
    return tf.constant(rng.normal(size=(b, t, cfg.dim)), tf.float32)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_naming_table_and_weights_match_the_spec_exactly(name):
    cfg = CONFIGS[name]
    table, spec = naming_table(cfg), fc.param_spec(cfg)
    assert list(table) == list(spec)
    assert len({native for native, _ in table.values()}) == len(table)
    layer = block_class(cfg)(cfg)
    native = layer.native_variables()
    assert set(native) == {n for n, _ in table.values()}
    assert len(layer.weights) == len(table)
    for canonical, (n, transpose) in table.items():
        want = spec[canonical].shape[::-1] if transpose else spec[canonical].shape
        assert tuple(native[n].shape) == want, canonical


@pytest.mark.parametrize("name", ["flash", "lm"])
def test_initial_weights_are_fc_init(name):
    cfg = CONFIGS[name]
    got = block_class(cfg)(cfg, seed=3).to_canonical()
    want = fc.init(cfg, 3, np.float32)
    assert list(got) == list(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize("policy", ["float32", "bfloat16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", ["gau", "transformer", "lm"])
def test_canonical_round_trip_is_bit_exact(name, policy):
    cfg = CONFIGS[name]
    dtype = np.float32 if policy == "float32" else ml_dtypes.bfloat16
    params = _noisy(cfg, seed=1, dtype=dtype)
    layer = block_class(cfg)(cfg, dtype=policy)
    layer.load_canonical(params)
    back = layer.to_canonical()
    assert list(back) == list(params)
    for k, v in params.items():
        got = back[k].astype(dtype)  # mixed_bfloat16 keeps float32 variables
        assert got.shape == v.shape
        assert np.array_equal(got.view(np.uint8), v.view(np.uint8)), k


@pytest.mark.parametrize("defect", ["missing", "unexpected", "shape"])
def test_a_failed_load_lists_the_problem_and_changes_nothing(defect):
    cfg = LM_CFG
    layer = LM(cfg, seed=0)
    before = layer.to_canonical()
    bad = _noisy(cfg, seed=2)
    if defect == "missing":
        del bad["layers.1.qk.beta"]
        match = r"missing \['layers.1.qk.beta'\]"
    elif defect == "unexpected":
        bad["layers.2.qk.beta"] = bad["layers.1.qk.beta"]
        match = r"unexpected \['layers.2.qk.beta'\]"
    else:
        bad["head.kernel"] = bad["head.kernel"][:, :-1]
        match = r"head.kernel: expected \(16, 19\), got \(16, 18\)"
    with pytest.raises(ValueError, match=match):
        layer.load_canonical(bad)
    after = layer.to_canonical()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)


@pytest.mark.parametrize("name", ["flash", "gau", "transformer", "lm"])
def test_layer_equals_the_spec_with_explicit_masks_and_segments(name):
    cfg = CONFIGS[name]
    params = _noisy(cfg, dtype=np.float64)
    layer = block_class(cfg)(cfg, params=params, dtype="float64")
    x = _input(cfg)
    x = tf.cast(x, tf.float64) if x.dtype.is_floating else x
    mask = np.ones((2, T), bool)
    mask[0, 7:] = False
    seg = np.array([[0] * 3 + [1] * 7, [4] * T])
    got = layer(x, mask=tf.constant(mask), segment_ids=tf.constant(seg)).numpy()
    if isinstance(cfg, fc.LMConfig):
        want = fc.lm_logits(params, x.numpy(), config=cfg, mask=mask, segment_ids=seg)
    else:
        want = fc.block_fn(cfg)(params, x.numpy(), config=cfg, mask=mask, segment_ids=seg)
    assert_close(got, want, reorder=longest_reduction(cfg, T))


def test_keras_masks_are_the_key_padding_mask():
    """Embedding(mask_zero=True) and Masking feed the layers' mask; it is passed on unchanged."""
    tokens = np.array([[3, 5, 2, 7, 1, 4, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8, 9, 1]])
    mask = tokens != 0
    emb = keras.layers.Embedding(12, D, mask_zero=True, embeddings_initializer="normal")
    bidir = FLASH_CFG.replace(causal=False)
    flash, gau = FLASH(bidir, params=_noisy(bidir)), GAU(GAU_CFG, params=_noisy(GAU_CFG))
    inp = keras.Input((T,), dtype="int32")
    h = gau(flash(emb(inp)))
    model = keras.Model(inp, h)
    got = model(tokens)
    x = tf.identity(emb(tokens))  # without the Keras mask that Embedding attaches
    want = gau(flash(x, mask=tf.constant(mask)), mask=tf.constant(mask))
    unmasked = gau(flash(x))
    assert_close(got, want, reorder=longest_reduction(bidir, T))
    assert np.abs(got.numpy()[0, :6] - unmasked.numpy()[0, :6]).max() > 1e-2  # the mask matters
    np.testing.assert_array_equal(got.numpy()[0, 6:], 0.0)  # the spec zeroes padded outputs
    np.testing.assert_array_equal(flash.compute_mask(x, tf.constant(mask)).numpy(), mask)
    # keras.layers.Masking on float inputs: rows equal to mask_value are padding.
    xs = x.numpy()
    xs[0, 6:] = 0.0
    seq = keras.Sequential([keras.Input((T, D)), keras.layers.Masking(0.0), FLASH(FLASH_CFG)])
    layer = seq.layers[-1]
    want = layer(tf.constant(xs), mask=tf.constant(mask))
    assert_close(seq(xs), want, reorder=longest_reduction(FLASH_CFG, T))


def test_sequential_model_composes_the_spec():
    seq = keras.Sequential(
        [keras.Input((T, D)), FLASH(FLASH_CFG), TransformerBlock(TRANSFORMER_CFG)]
    )
    x = rng.normal(size=(3, T, D)).astype(np.float32)
    p1, p2 = seq.layers[0].to_canonical(), seq.layers[1].to_canonical()
    want = fc.transformer_block(p2, fc.flash(p1, x, config=FLASH_CFG), config=TRANSFORMER_CFG)
    assert_close(seq.predict(x, verbose=0), want, reorder=longest_reduction(FLASH_CFG, T))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_get_config_carries_the_flashcore_config(name):
    cfg = CONFIGS[name]
    layer = block_class(cfg)(cfg, seed=5, name="mine", dtype="mixed_bfloat16")
    conf = layer.get_config()
    json.dumps(conf)  # plain JSON
    assert fc.config_from_dict(conf["config"]) == cfg and conf["seed"] == 5
    clone = type(layer).from_config(conf)
    assert clone.config == cfg and clone.name == "mine"
    assert clone.dtype_policy.name == "mixed_bfloat16"


def test_keras_save_and_load_give_identical_outputs(tmp_path):
    tokens = keras.Input((T,), dtype="int32")
    h = keras.layers.Embedding(12, D, mask_zero=True)(tokens)
    h = FLASH(FLASH_CFG)(h)
    h = GAU(GAU_CFG)(h)
    h = TransformerBlock(TRANSFORMER_CFG)(h)
    model = keras.Model(tokens, keras.layers.Dense(3)(h))
    lm = keras.Sequential([keras.Input((T,), dtype="int32"), LM(LM_CFG, seed=1)])
    x = np.array([[3, 5, 2, 7, 1, 4, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8, 9, 1]])
    for i, m in enumerate((model, lm)):
        for w in m.weights:  # noisy weights, so that a mix-up would show
            w.assign(w + rng.normal(0, 0.1, w.shape).astype(np.float32))
        path = tmp_path / f"m{i}.keras"
        m.save(path)
        loaded = keras.models.load_model(path)
        np.testing.assert_array_equal(loaded.predict(x, verbose=0), m.predict(x, verbose=0))
    loaded_lm = loaded.layers[-1]
    assert isinstance(loaded_lm, LM) and loaded_lm.config == LM_CFG
    for k, v in lm.layers[-1].to_canonical().items():
        np.testing.assert_array_equal(loaded_lm.to_canonical()[k], v)


@pytest.mark.parametrize("name", ["flash", "gau", "transformer", "lm"])
def test_unknown_batch_size_traces_and_differentiates(name):
    """Keras fit traces with batch None: GAU / FLASH use xp.with_batch, Transformer++ tf.map_fn.
    (Graph mode; XLA on this path is covered by the model.fit test.)"""
    cfg = CONFIGS[name]
    layer = block_class(cfg)(cfg, params=_noisy(cfg))
    x = _input(cfg, b=3)
    mask = np.ones((3, T), bool)
    mask[1, 8:] = False
    seg = np.repeat([[0] * 4 + [1] * 6], 3, axis=0)
    spec = tf.TensorSpec((None, T), x.dtype) if x.shape.rank == 2 else tf.TensorSpec((None, T, D))

    @tf.function(
        input_signature=[
            spec,
            tf.TensorSpec((None, T), tf.bool),
            tf.TensorSpec((None, T), tf.int64),
        ],
    )
    def f(x, mask, seg):
        with tf.GradientTape() as tape:
            y = layer(x, mask=mask, segment_ids=seg)
            loss = tf.reduce_sum(y * y)
        return y, tape.gradient(loss, layer.trainable_variables)

    y, grads = f(x, tf.constant(mask), tf.constant(seg))
    want = layer(x, mask=tf.constant(mask), segment_ids=tf.constant(seg))
    assert_close(y, want, reorder=longest_reduction(cfg, T))
    assert all(g is not None for g in grads)


def test_an_unknown_sequence_length_raises_clearly():
    layer = FLASH(FLASH_CFG)

    @tf.function(input_signature=[tf.TensorSpec((2, None, D))])
    def f(x):
        return layer(x)

    with pytest.raises(ValueError, match="static sequence length"):
        f(tf.zeros((2, T, D)))


@pytest.mark.parametrize("name", ["flash", "lm"])
def test_mixed_bfloat16_runs_in_bfloat16_within_the_bf16_table(name):
    """Well-scaled (fc.init) weights: mixed_bfloat16 vs the float64 spec, with the table's bf16
    output tolerance (the golden weights carry N(0, 0.3) noise; see the conformance report)."""
    cfg = CONFIGS[name]
    layer = block_class(cfg)(cfg, seed=0, dtype="mixed_bfloat16")
    x = _input(cfg)
    y = layer(x)
    assert y.dtype == tf.bfloat16
    params = {k: v.astype(np.float64) for k, v in layer.to_canonical().items()}
    xin = x.numpy() if x.dtype.is_integer else x.numpy().astype(np.float64)
    if isinstance(cfg, fc.LMConfig):
        want = fc.lm_logits(params, xin, config=cfg)
    else:
        want = fc.block_fn(cfg)(params, xin, config=cfg)
    rtol, atol = tolerance("bfloat16", "output")
    got = tf.cast(y, tf.float64).numpy()
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * np.abs(want).max())


def test_the_transpose_flag_of_the_table_is_honoured(monkeypatch):
    """Keras needs no transposes, but the loader must honour the flag: store out.kernel as (d, e)."""
    from flashcore.tf import naming

    monkeypatch.setitem(naming._FLASH, "out.kernel", ("out_kernel_t", True))
    cfg = FLASH_CFG
    params = _noisy(cfg)
    layer = FLASH(cfg, params=params)
    assert tuple(layer.native_variables()["out_kernel_t"].shape) == (cfg.dim, cfg.expanded_dim)
    np.testing.assert_array_equal(
        layer.native_variables()["out_kernel_t"].numpy(), params["out.kernel"].T
    )
    layer.load_canonical(params)
    np.testing.assert_array_equal(layer.to_canonical()["out.kernel"], params["out.kernel"])
    x = _input(cfg)
    want = fc.flash(params, x.numpy(), config=cfg)
    assert_close(layer(x), want, reorder=longest_reduction(cfg, T))
