"""flashcore.app.convert / `flashcore convert`: every path between canonical, torch, flax and keras
round-trips bit-exactly (float32, bfloat16 and float64; FLASH, GAU, Transformer++ and an LM);
flash-pytorch imports into each; bad files, bad options and failed writes give clear errors and
leave nothing behind."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import flashcore as fc
from flashcore.app import convert as cv
from flashcore.app.cli import main as cli_main
from flashcore.io import WeightFileError
from flashcore.io import load as load_canonical
from flashcore.io import save as save_canonical

FRAMEWORK = {"torch": "torch", "flax": "flax", "keras": "tensorflow", "canonical": None}
SUFFIX = {"canonical": ".safetensors", "torch": ".pt", "flax": ".msgpack", "keras": ".weights.h5"}
FORMATS = list(SUFFIX)
BLOCK = fc.FlashConfig(dim=16, chunk_size=8, qk_dim=8, causal=True)
CONFIGS = {
    "flash": BLOCK,
    "gau": fc.FlashConfig(dim=16, kind="gau", max_len=16, qk_dim=8, norm="layer"),
    "transformer": fc.TransformerConfig(dim=16, heads=2, ffn_dim=24),
    "lm": fc.LMConfig(block=BLOCK, vocab_size=11, num_layers=2, tie_embeddings=False),
    # the options GAU-alpha brought, with weights where they have some
    "lm-gau-options": fc.LMConfig(
        block=fc.FlashConfig(
            dim=16,
            kind="gau",
            max_len=16,
            qk_dim=8,
            norm="layer",
            norm_position="post",
            use_bias=False,
            causal=False,
        ),
        vocab_size=11,
        num_layers=2,
        final_norm="none",
        embed_norm="layer",
        type_vocab_size=2,
    ),  # fmt: skip
}
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float64": np.float64}


def _need(fmt: str) -> None:
    name = FRAMEWORK[fmt]
    if name is not None and importlib.util.find_spec(name) is None:
        pytest.skip(f"the {fmt} format needs {name}, which is not installed")


def _noisy(config, dtype, seed=0) -> dict[str, np.ndarray]:
    """Every tensor random (so every bit matters), in ``dtype``."""
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s.shape).astype(dtype) for k, s in fc.param_spec(config).items()}


def _raw(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8)


def _bits_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype
        and a[k].shape == b[k].shape
        and np.array_equal(_raw(a[k]), _raw(b[k]))
        for k in a
    )


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("src,dst", [(a, b) for a in FORMATS for b in FORMATS if a != b])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONFIGS)
def test_every_path_round_trips_bit_exactly(tmp_path, case, dtype, src, dst):
    """canonical -> src -> dst -> canonical gives back the very bits (and dtype) it started with."""
    _need(src), _need(dst)
    config, params = CONFIGS[case], _noisy(CONFIGS[case], DTYPES[dtype])
    start = save_canonical(tmp_path / "start.safetensors", params, config)
    a, b = tmp_path / f"a{SUFFIX[src]}", tmp_path / f"b{SUFFIX[dst]}"
    if src != "canonical":
        assert cv.convert(start, a) == (a, "canonical", src)
    else:
        a = start
    assert cv.convert(a, b) == (b, src, dst)  # formats detected from the files
    got, got_config = cv.read_weights(b)
    assert got_config == config and _bits_equal(got, params)
    end = tmp_path / "end.safetensors"
    cv.convert(b, end)
    assert _bits_equal(load_canonical(end)[0], params)
    assert not [n for n in _files(tmp_path) if n.startswith(".")], "temporary files left"


# ---- flash-pytorch -> each ---------------------------------------------------------------------
PEERS = {
    "FLASH": dict(dim=16, group_size=8, query_key_dim=8),
    "GAU": dict(dim=16, query_key_dim=8),
    "FLASHTransformer": dict(dim=16, num_tokens=11, depth=2, group_size=8, query_key_dim=8),
}


@pytest.mark.parametrize("dst", FORMATS)
@pytest.mark.parametrize("model", PEERS)
def test_flash_pytorch_converts_to_each_format(tmp_path, model, dst):
    torch = pytest.importorskip("torch", reason="flash-pytorch checkpoints are torch files")
    flash_pytorch = pytest.importorskip(
        "flash_pytorch", reason="flash-pytorch is a test dependency"
    )
    from flashcore.peers.flash_pytorch import import_state_dict

    _need(dst)
    torch.manual_seed(0)
    peer = getattr(flash_pytorch, model)(causal=True, **PEERS[model])
    with torch.no_grad():
        for name, p in peer.named_parameters():
            if not name.endswith("rotary_pos_emb.freqs"):  # fixed frequencies, not weights
                p.normal_()
    src = tmp_path / "peer.pt"
    torch.save(peer.state_dict(), src)
    want, want_config = import_state_dict(peer.state_dict(), model, causal=True, group_size=8)
    out = tmp_path / f"w{SUFFIX[dst]}"
    code = cli_main(
        ["convert", str(src), str(out), "--from", "flash-pytorch", "--model", model, "--causal"]
        + (["--group-size", "8"] if model != "GAU" else [])
    )
    assert code == 0
    got, got_config = cv.read_weights(out)
    assert got_config == want_config and _bits_equal(got, want)


# ---- GAU-alpha -> each ---------------------------------------------------------------------------
@pytest.mark.parametrize("dst", FORMATS)
def test_gau_alpha_converts_to_each_format(tmp_path, dst):
    """A GAU-alpha folder (config.json + pytorch_model.bin) -> each format -> canonical: the
    importer's weights, bit for bit, and its config."""
    import _gau_alpha as ga

    from flashcore.peers.gau_alpha import import_state_dict

    _need(dst)
    port = ga.make_port(0, ga.torch.float32)
    folder = ga.write_folder(tmp_path / "gau", port)
    want, want_config = import_state_dict(port.state_dict(), ga.hf_config(port))
    out = tmp_path / f"w{SUFFIX[dst]}"
    assert cli_main(["convert", str(folder), str(out), "--from", "gau-alpha"]) == 0
    got, got_config = cv.read_weights(out)
    assert got_config == want_config and _bits_equal(got, want)
    if dst != "canonical":
        end = tmp_path / "end.safetensors"
        cv.convert(out, end)
        assert _bits_equal(load_canonical(end)[0], want)


def test_gau_alpha_sources_and_errors(tmp_path, capsys):
    import _gau_alpha as ga

    port = ga.make_port(1, ga.torch.float32)
    folder = ga.write_folder(tmp_path / "st", port, "model.safetensors")
    bin_folder = ga.write_folder(tmp_path / "bin", port)
    want = cv.read_weights(folder, "gau-alpha")[0]
    for src in (folder / "model.safetensors", bin_folder / "pytorch_model.bin"):
        assert _bits_equal(cv.read_weights(src, "gau-alpha")[0], want)
    with pytest.raises(WeightFileError, match="--from gau-alpha"):  # not detected alone
        cv.convert(bin_folder / "pytorch_model.bin", tmp_path / "x.safetensors")
    with pytest.raises(WeightFileError, match="drop --config"):
        cv.read_weights(folder, "gau-alpha", config=CONFIGS["lm"])
    (bin_folder / "config.json").write_text(json.dumps({**ga.hf_config(port), "vocab_size": 7}))
    assert (
        cli_main(["convert", str(bin_folder), str(tmp_path / "y.pt"), "--from", "gau-alpha"]) == 2
    )
    assert "word_embeddings.weight: expected (7, 32)" in capsys.readouterr().err
    assert not (tmp_path / "y.pt").exists()
    assert cli_main(["convert", str(folder), str(tmp_path / "z.pt"), "--to", "gau-alpha"]) == 2


def test_flash_pytorch_needs_its_options_and_is_import_only(tmp_path, capsys):
    torch = pytest.importorskip("torch", reason="flash-pytorch checkpoints are torch files")
    flash_pytorch = pytest.importorskip(
        "flash_pytorch", reason="flash-pytorch is a test dependency"
    )
    src = tmp_path / "peer.pt"
    torch.save(flash_pytorch.GAU(dim=16, query_key_dim=8).state_dict(), src)
    with pytest.raises(WeightFileError, match="--from flash-pytorch --model"):
        cv.convert(src, tmp_path / "w.safetensors")  # detected, but options are needed
    with pytest.raises(WeightFileError, match="--model"):
        cv.convert(src, tmp_path / "w.safetensors", src_format="flash-pytorch")
    with pytest.raises(WeightFileError, match="import only"):
        cv.convert(tmp_path / "w.safetensors", tmp_path / "x.pt", dst_format="flash-pytorch")
    assert cli_main(["convert", str(src), str(tmp_path / "x.pt"), "--to", "flash-pytorch"]) == 2
    assert "import only" in capsys.readouterr().err
    assert _files(tmp_path) == ["peer.pt"]


# ---- the command line --------------------------------------------------------------------------
def test_cli_end_to_end_with_a_bare_state_dict_and_config_json(tmp_path, capsys):
    torch = pytest.importorskip("torch", reason="the torch format needs torch")
    config, params = CONFIGS["lm"], _noisy(CONFIGS["lm"], ml_dtypes.bfloat16)
    start = save_canonical(tmp_path / "start.safetensors", params, config)
    tagged = tmp_path / "model.pt"
    assert cli_main(["convert", str(start), str(tagged)]) == 0
    assert "canonical -> torch" in capsys.readouterr().out
    bare = tmp_path / "bare.pth"
    torch.save(torch.load(tagged, weights_only=True)["state_dict"], bare)
    out = tmp_path / "out.safetensors"
    assert cli_main(["convert", str(bare), str(out)]) == 2
    err = capsys.readouterr().err
    assert "bare.pth" in err and "--config" in err and not out.exists()
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config.to_dict()))
    assert cli_main(["convert", str(bare), str(out), "--config", str(cfg)]) == 0
    assert _bits_equal(load_canonical(out)[0], params)
    # an existing DST is kept without --force, replaced with it
    before = out.read_bytes()
    assert cli_main(["convert", str(start), str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_bytes() == before
    assert cli_main(["convert", str(tagged), str(out), "--force"]) == 0
    # a config that contradicts the file's own
    other = tmp_path / "other.json"
    other.write_text(json.dumps(fc.LMConfig(block=BLOCK, vocab_size=12).to_dict()))
    assert (
        cli_main(["convert", str(tagged), str(tmp_path / "x.safetensors"), "--config", str(other)])
        == 2
    )
    assert "not for" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "nonsense"}')
    assert (
        cli_main(["convert", str(bare), str(tmp_path / "x.safetensors"), "--config", str(bad)]) == 2
    )
    assert "bad.json" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_help_lists_the_formats(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["convert", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in cv.FORMATS:
        assert name in out


# ---- errors ------------------------------------------------------------------------------------
@pytest.fixture
def flash_file(tmp_path):
    config = CONFIGS["flash"]
    params = _noisy(config, np.float32)
    return save_canonical(tmp_path / "w.safetensors", params, config), params, config


def test_unknown_suffixes_and_unknown_bytes(tmp_path, flash_file):
    src, _, _ = flash_file
    with pytest.raises(WeightFileError, match="--to") as exc:
        cv.convert(src, tmp_path / "out.weird")
    assert "out.weird" in str(exc.value) and "canonical" in str(exc.value)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello, not weights" * 10)
    with pytest.raises(WeightFileError, match="--from") as exc:
        cv.convert(junk, tmp_path / "out.safetensors")
    assert "junk.bin" in str(exc.value) and "keras" in str(exc.value)
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        cv.convert(tmp_path / "nothing.pt", tmp_path / "out.safetensors")
    with pytest.raises(WeightFileError, match="unknown format"):
        cv.convert(src, tmp_path / "out.safetensors", src_format="onnx")
    assert sorted(_files(tmp_path)) == ["junk.bin", "w.safetensors"]


def _write_foreign(fmt: str, path: Path) -> None:
    if fmt == "canonical":
        from safetensors.numpy import save_file

        save_file({"w": np.zeros(3, np.float32)}, str(path), metadata={"format": "pt"})
    elif fmt == "torch":
        import torch

        torch.save({"step": 3, "note": "training state"}, path)
    elif fmt == "flax":
        from flax import serialization

        path.write_bytes(serialization.msgpack_serialize({"a": np.zeros(2), "b": np.ones(3)}))
    else:
        import h5py

        with h5py.File(path, "w") as f:
            f["vars/0"] = np.zeros(3)


@pytest.mark.parametrize("fmt", FORMATS)
def test_foreign_file_is_named_and_refused(tmp_path, fmt):
    _need(fmt)
    src = tmp_path / f"foreign{SUFFIX[fmt]}"
    _write_foreign(fmt, src)
    with pytest.raises(WeightFileError) as exc:
        cv.convert(src, tmp_path / "out.safetensors")
    assert "foreign" in str(exc.value) and "not a" in str(exc.value)
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_file_is_refused_and_leaves_nothing(tmp_path, flash_file, fmt):
    _need(fmt)
    src, _, _ = flash_file
    native = tmp_path / f"n{SUFFIX[fmt]}"
    if fmt != "canonical":
        cv.convert(src, native)
    else:
        native = src
    data = native.read_bytes()
    cut = tmp_path / "sub" / native.name
    cut.parent.mkdir()
    cut.write_bytes(data[: len(data) // 2])
    dst = tmp_path / "sub" / "out.safetensors"
    for given in (fmt, None):  # told, or detected (the magic bytes survive; else the suffix)
        with pytest.raises(WeightFileError) as exc:
            cv.convert(cut, dst, src_format=given)
        assert str(cut) in str(exc.value)
        assert _files(cut.parent) == [cut.name]  # no DST, no temporary file


def _native_dict_edit(fmt: str, path: Path, edit) -> None:
    """Rewrite a torch / flax file with ``edit`` applied to its native name -> array dict."""
    if fmt == "torch":
        import torch

        obj = torch.load(path, weights_only=True)
        obj["state_dict"] = edit(obj["state_dict"])
        torch.save(obj, path)
    else:
        from flax import serialization

        from flashcore.jax.io import _flatten, _nest

        tree = serialization.msgpack_restore(path.read_bytes())
        tree["params"] = _nest(edit(_flatten(tree["params"])))
        path.write_bytes(serialization.msgpack_serialize(tree))


@pytest.mark.parametrize("fmt", ["canonical", "torch", "flax"])
def test_missing_extra_and_misshapen_tensors_are_listed(tmp_path, flash_file, fmt):
    _need(fmt)
    src, params, config = flash_file
    path = tmp_path / f"n{SUFFIX[fmt]}"
    if fmt == "canonical":
        from safetensors.numpy import save_file

        from flashcore.io import make_metadata

        def write(p):
            save_file(p, str(path), metadata=make_metadata(config))

        first = sorted(params)[0]
        write({("stray.weight" if k == first else k): v for k, v in params.items()})
        names = (first, "stray.weight")
        wrong = dict(params, **{"out.kernel": params["out.kernel"][:-1]})
        reshape_name = "out.kernel"
    else:
        cv.convert(src, path)
        holder = {}

        def grab(d):
            holder.update(d)
            return d

        _native_dict_edit(fmt, path, grab)
        first = sorted(holder)[0]
        _native_dict_edit(
            fmt, path, lambda d: {("stray" if k == first else k): v for k, v in d.items()}
        )
        names = (first, "stray")
        reshape_name = next(k for k in holder if holder[k].ndim == 2)
    with pytest.raises(WeightFileError) as exc:
        cv.read_weights(path)
    msg = str(exc.value)
    assert str(path) in msg and all(n in msg for n in names), msg
    # misshapen: one 2-d tensor loses a row
    if fmt == "canonical":
        write(wrong)
    else:
        cv.convert(src, path, force=True)
        _native_dict_edit(
            fmt, path, lambda d: {k: (v[:-1] if k == reshape_name else v) for k, v in d.items()}
        )
    with pytest.raises(WeightFileError, match="shape") as exc:
        cv.read_weights(path)
    assert str(path) in str(exc.value)


def test_keras_file_with_the_wrong_weights_is_refused(tmp_path, flash_file):
    _need("keras")
    import h5py

    src, _, _ = flash_file
    path = tmp_path / "n.weights.h5"
    cv.convert(src, path)
    with h5py.File(path, "a") as f:  # one variable too few
        groups = []
        f.visititems(lambda name, obj: groups.append(name) if name.endswith("vars") else None)
        del f[groups[0] + "/0"]
    with pytest.raises(WeightFileError) as exc:
        cv.read_weights(path)
    assert str(path) in str(exc.value)


def test_mismatched_from_is_refused(tmp_path, flash_file):
    src, _, _ = flash_file
    for fmt in ("torch", "flax", "keras"):
        with pytest.raises(WeightFileError, match=f"--from {fmt} given, but the file is canonical"):
            cv.convert(src, tmp_path / "out.pt", src_format=fmt)
    assert _files(tmp_path) == ["w.safetensors"]


def test_a_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path, flash_file, monkeypatch):
    src, _, _ = flash_file
    import flashcore.io as fio

    def broken_save_file(arrays, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    import safetensors.numpy

    monkeypatch.setattr(safetensors.numpy, "save_file", broken_save_file)
    dst = tmp_path / "out.safetensors"
    with pytest.raises(OSError, match="disk full"):
        cv.convert(src, dst)
    assert _files(tmp_path) == ["w.safetensors"]
    dst.write_bytes(b"precious")
    with pytest.raises(OSError, match="disk full"):
        cv.convert(src, dst, force=True)
    assert dst.read_bytes() == b"precious" and _files(tmp_path) == [
        "out.safetensors",
        "w.safetensors",
    ]
    assert fio.FORMAT == "flashcore"


def test_keras_needs_one_dtype_and_its_suffix(tmp_path):
    _need("keras")
    config = CONFIGS["flash"]
    params = _noisy(config, np.float32)
    params["out.bias"] = params["out.bias"].astype(ml_dtypes.bfloat16)
    with pytest.raises(WeightFileError, match="mixed dtypes"):
        cv.write_weights(tmp_path / "w.weights.h5", params, config)
    with pytest.raises(WeightFileError, match=r"\.weights\.h5"):
        cv.write_weights(tmp_path / "w.h5", _noisy(config, np.float32), config, "keras")
    assert _files(tmp_path) == []


def test_importing_convert_and_converting_canonical_loads_no_framework(tmp_path, flash_file):
    src, _, _ = flash_file
    code = (
        "import sys, flashcore.app.convert as cv\n"
        f"cv.convert({str(src)!r}, {str(tmp_path / 'copy.safetensors')!r})\n"
        "bad = [m for m in ('torch', 'jax', 'flax', 'tensorflow', 'keras') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert (tmp_path / "copy.safetensors").exists()


def test_written_files_get_ordinary_permissions(tmp_path, flash_file):
    """Not mkstemp's owner-only 0600: the mode a plain open() gives under the current umask."""
    src, _, _ = flash_file
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    out = cv.convert(src, tmp_path / "out.safetensors")[0]
    assert out.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


@pytest.mark.parametrize(
    "fmt, key",
    [("canonical", "config"), ("torch", "state_dict"), ("flax", "params"), ("keras", "dtype")],
)
def test_extra_metadata_may_not_take_a_key_of_the_file_itself(tmp_path, fmt, key):
    _need(fmt)
    config = fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4)
    params = fc.init(config, 0)
    suffix = cv.FORMATS[fmt].suffixes[0]
    path = tmp_path / f"w{suffix}"
    with pytest.raises(ValueError, match="reserved"):
        cv.write_weights(path, params, config, fmt, extra={key: "x"})
    assert not path.exists() and not list(tmp_path.iterdir())  # nothing half-written
    cv.write_weights(path, params, config, fmt, extra={"step": "7"})
    assert cv.training_metadata(path, fmt) == {"step": "7"}
