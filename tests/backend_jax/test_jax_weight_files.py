"""flashcore.jax.io: Flax msgpack files hold the modules' native parameter tree plus the config;
save / load and the canonical file keep every dtype (bfloat16 included) bit-exactly."""

import ml_dtypes
import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="flashcore.jax needs jax")
nnx = pytest.importorskip("flax.nnx", reason="flashcore.jax needs flax")
serialization = pytest.importorskip("flax.serialization", reason="flashcore.jax needs flax")

from _cases import ALL_CONFIGS, noisy_params  # noqa: E402

import flashcore as fc  # noqa: E402
from flashcore.io import WeightFileError  # noqa: E402
from flashcore.io import load as load_canonical_numpy  # noqa: E402
from flashcore.jax import block_class  # noqa: E402
from flashcore.jax import io as jio  # noqa: E402

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
CASES = ["flash-causal-t5-layer-shift", "gau", "transformer", "lm-flash", "lm-flash-abspos"]


def _module(name, dtype, seed=0):
    config = ALL_CONFIGS[name]
    params = {k: np.asarray(v).astype(dtype) for k, v in noisy_params(config, seed).items()}
    return block_class(config)(config, params=params)


def _bits(params: dict) -> dict:
    return {
        k: (np.asarray(v).dtype, np.ascontiguousarray(v).view(np.uint8)) for k, v in params.items()
    }


def _same(a: dict, b: dict) -> bool:
    a, b = _bits(a), _bits(b)
    return a.keys() == b.keys() and all(
        a[k][0] == b[k][0] and np.array_equal(a[k][1], b[k][1]) for k in a
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", CASES)
def test_flax_file_holds_the_native_tree_and_loads_bit_exactly(tmp_path, name, dtype):
    module = _module(name, DTYPES[dtype])
    path = jio.save(tmp_path / "m.msgpack", module)
    raw = serialization.msgpack_restore(path.read_bytes())
    assert raw["format"] == "flashcore-flax" and raw["format_version"] == "1"
    native = {
        ".".join(str(p) for p in k): np.asarray(v[...])
        for k, v in nnx.to_flat_state(nnx.state(module, nnx.Param))
    }
    assert jio._flatten(raw["params"]).keys() == native.keys()
    assert _same(jio._flatten(raw["params"]), native)
    back = jio.load(path)
    assert type(back) is type(module) and back.config == module.config
    assert _same(back.to_canonical(), module.to_canonical())
    params, config = jio.read_params(path)
    assert config == module.config and _same(params, module.to_canonical())


@pytest.mark.parametrize("dtype", DTYPES)
def test_canonical_file_round_trip(tmp_path, dtype):
    module = _module("lm-flash-abspos", DTYPES[dtype], seed=4)
    path = jio.save_canonical(tmp_path / "c.safetensors", module)
    params, config = load_canonical_numpy(path)
    assert config == module.config and _same(params, module.to_canonical())
    assert {v.dtype for v in params.values()} == {np.dtype(DTYPES[dtype])}
    assert _same(jio.load_canonical(path).to_canonical(), module.to_canonical())


def test_bad_flax_files(tmp_path):
    module = _module(CASES[0], np.float32)
    path = jio.save(tmp_path / "m.msgpack", module)
    (tmp_path / "cut.msgpack").write_bytes(path.read_bytes()[:100])
    with pytest.raises(WeightFileError, match="cut.msgpack.*not a readable msgpack"):
        jio.read_params(tmp_path / "cut.msgpack")
    raw = serialization.msgpack_restore(path.read_bytes())
    for edit, match in [
        (dict(format="flashcore-torch"), "not a flashcore flax weight file"),
        (dict(format_version="7"), "newer"),
        (dict(config="{"), "config is unusable"),
        (dict(params=3), "no params tree"),
    ]:
        (tmp_path / "bad.msgpack").write_bytes(serialization.msgpack_serialize({**raw, **edit}))
        with pytest.raises(WeightFileError, match=match):
            jio.read_params(tmp_path / "bad.msgpack")
    with pytest.raises(FileNotFoundError):
        jio.load(tmp_path / "none.msgpack")


def test_write_params_checks_names_first(tmp_path):
    config = ALL_CONFIGS[CASES[0]]
    params = fc.init(config, 0)
    params.pop("out.bias")
    with pytest.raises(ValueError, match="out.bias"):
        jio.write_params(tmp_path / "w.msgpack", params, config)
    assert list(tmp_path.iterdir()) == []
