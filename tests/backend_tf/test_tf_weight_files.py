"""flashcore.tf.io: Keras weights files (genuine ``keras.saving.save_weights`` output plus the
config as HDF5 attributes) and canonical files; bfloat16 survives bit-exactly; bad files are
refused naming the file."""

import json

import ml_dtypes
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="the TF backend needs tensorflow")
keras = pytest.importorskip("keras", reason="the TF backend needs keras")
h5py = pytest.importorskip("h5py", reason="Keras weights files are HDF5")

import flashcore as fc  # noqa: E402
from flashcore.io import WeightFileError  # noqa: E402
from flashcore.io import load as load_canonical_numpy  # noqa: E402
from flashcore.tf import block_class  # noqa: E402
from flashcore.tf import io as kio  # noqa: E402

BLOCK = fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4, causal=True, norm="layer", rel_bias="t5")
CONFIGS = {
    "flash": BLOCK,
    "gau": fc.FlashConfig(dim=16, qk_dim=8, kind="gau", max_len=16, norm="rms"),
    "transformer": fc.TransformerConfig(dim=16, heads=2),
    "lm": fc.LMConfig(
        block=BLOCK,
        vocab_size=11,
        tie_embeddings=False,
        head_bias=True,
        abs_pos="scaled_sinusoidal",
    ),
}
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def _layer(name, dtype, seed=0):
    config = CONFIGS[name]
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(size=s.shape).astype(dtype) for k, s in fc.param_spec(config).items()}
    return block_class(config)(config, params=params, dtype=np.dtype(dtype).name)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and np.array_equal(a[k].view(np.uint8), b[k].view(np.uint8))
        for k in a
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", CONFIGS)
def test_keras_file_round_trips_bit_exactly(tmp_path, name, dtype):
    layer = _layer(name, DTYPES[dtype])
    path = kio.save(tmp_path / "w.weights.h5", layer)
    with h5py.File(path, "r") as f:
        assert f.attrs["flashcore_format"] == "flashcore-keras"
        assert f.attrs["flashcore_dtype"] == dtype
    back = kio.load(path)
    assert type(back) is type(layer) and back.config == layer.config and back.dtype == dtype
    assert _same(back.to_canonical(), layer.to_canonical())
    # a genuine Keras file: Keras itself loads it into a fresh layer
    fresh = block_class(layer.config)(layer.config, seed=7, dtype=dtype)
    keras.saving.load_weights(fresh, str(path))
    assert _same(fresh.to_canonical(), layer.to_canonical())
    params, config = kio.read_params(path)
    assert config == layer.config and _same(params, layer.to_canonical())


@pytest.mark.parametrize("dtype", DTYPES)
def test_canonical_file_round_trip(tmp_path, dtype):
    layer = _layer("lm", DTYPES[dtype], seed=2)
    path = kio.save_canonical(tmp_path / "c.safetensors", layer)
    params, config = load_canonical_numpy(path)
    assert config == layer.config and _same(params, layer.to_canonical())
    back = kio.load_canonical(path)
    assert back.dtype == dtype and _same(back.to_canonical(), layer.to_canonical())


def test_bad_keras_files(tmp_path):
    layer = _layer("flash", np.float32)
    path = kio.save(tmp_path / "w.weights.h5", layer)
    with pytest.raises(WeightFileError, match=r"\.weights\.h5"):
        kio.save(tmp_path / "w.h5", layer)
    (tmp_path / "cut.weights.h5").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightFileError, match="cut.weights.h5.*not a readable HDF5"):
        kio.load(tmp_path / "cut.weights.h5")
    plain = tmp_path / "plain.weights.h5"
    keras.saving.save_weights(layer, str(plain))  # Keras' own file: no flashcore config
    with pytest.raises(WeightFileError, match="plain.weights.h5: not a flashcore keras"):
        kio.load(plain)
    other = tmp_path / "other.weights.h5"
    other.write_bytes(path.read_bytes())
    with h5py.File(other, "a") as f:  # the stored config says GAU: the weights do not fit
        f.attrs["flashcore_config"] = json.dumps(CONFIGS["gau"].to_dict())
    with pytest.raises(WeightFileError, match="other.weights.h5: its weights do not fit"):
        kio.load(other)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cut.weights.h5",
        "other.weights.h5",
        "plain.weights.h5",
        "w.weights.h5",
    ]
