"""Canonical weight files: round trips, and a clear error for every kind of bad file."""

import json
import struct

import ml_dtypes
import numpy as np
import pytest

import flashcore as fc
from flashcore import io

CFG = fc.LMConfig(block=fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4, causal=True), vocab_size=11)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    params = {k: v.astype(dtype) for k, v in fc.init(CFG, 1).items()}
    path = io.save(tmp_path / "w.safetensors", params, CFG, extra={"step": "7"})
    loaded, cfg = io.load(path)
    assert cfg == CFG
    assert set(loaded) == set(params)
    for k in params:
        assert loaded[k].dtype == params[k].dtype
        assert loaded[k].tobytes() == params[k].tobytes()
    assert io.read_header(path)["step"] == "7"
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary left over


def test_save_refuses_mismatched_params_and_writes_nothing(tmp_path):
    params = fc.init(CFG, 1)
    params.pop("embed.weight")
    with pytest.raises(ValueError, match="missing \\['embed.weight'\\]"):
        io.save(tmp_path / "w.safetensors", params, CFG)
    assert not list(tmp_path.iterdir())


def test_a_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = io.save(tmp_path / "w.safetensors", fc.init(CFG, 1), CFG)
    before = path.read_bytes()
    import safetensors.numpy

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        io.save(path, fc.init(CFG, 2), CFG)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def _rewrite_header(path, edit):
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + data[8 + n :])


def test_bad_files_get_clear_errors(tmp_path):
    good = io.save(tmp_path / "good.safetensors", fc.init(CFG, 1), CFG)
    with pytest.raises(FileNotFoundError, match="no weight file"):
        io.load(tmp_path / "missing.safetensors")

    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(io.WeightFileError, match="truncated or corrupt"):
        io.load(trunc)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file at all" * 3)
    with pytest.raises(io.WeightFileError, match="truncated or corrupt"):
        io.load(garbage)

    newer = tmp_path / "newer.safetensors"
    newer.write_bytes(good.read_bytes())
    _rewrite_header(newer, lambda h: h["__metadata__"].update(format_version="99"))
    with pytest.raises(io.WeightFileError, match="format version 99, newer"):
        io.load(newer)

    foreign = tmp_path / "foreign.safetensors"
    import safetensors.numpy

    safetensors.numpy.save_file({"w": np.zeros(2, np.float32)}, str(foreign))
    with pytest.raises(io.WeightFileError, match="not a flashcore canonical weight file"):
        io.load(foreign)

    extra = tmp_path / "extra.safetensors"
    p = fc.init(CFG, 1)
    p["bogus"] = np.zeros(3, np.float32)
    safetensors.numpy.save_file(p, str(extra), metadata=io.read_header(good))
    with pytest.raises(io.WeightFileError, match="unexpected \\['bogus'\\]"):
        io.load(extra)

    shape = tmp_path / "shape.safetensors"
    p = fc.init(CFG, 1)
    p["embed.weight"] = p["embed.weight"][:5]
    safetensors.numpy.save_file(p, str(shape), metadata=io.read_header(good))
    with pytest.raises(io.WeightFileError, match="embed.weight: expected \\(11, 16\\)"):
        io.load(shape)

    with pytest.raises(io.WeightFileError, match="holds weights for"):
        io.load(good, config=CFG.replace(num_layers=3))
