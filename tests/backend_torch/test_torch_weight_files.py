"""flashcore.torch.io: torch files hold exactly ``module.state_dict()`` (native names, [out, in]
Linear weights) plus the config; canonical files through safetensors.torch keep bfloat16; loads are
bit-exact and refuse foreign, bare (without a config) or mismatched files."""

import json

import ml_dtypes
import numpy as np
import pytest

import flashcore as fc
from flashcore.io import WeightFileError
from flashcore.io import load as load_canonical_numpy

torch = pytest.importorskip("torch", reason="flashcore.torch needs torch")

from _torch_cases import ALL_CONFIGS, module_for, noisy_params  # noqa: E402

from flashcore.torch import io as tio  # noqa: E402
from flashcore.torch.naming import naming_table  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16]
CASES = ["flash", "gau", "transformer", "lm-flash-abspos", "lm-transformer-headbias"]


def _module(name, dtype, seed=0):
    config = ALL_CONFIGS[name]
    m = module_for(config, init=False, dtype=dtype)
    m.load_canonical(noisy_params(config, seed))
    return m


def _same_state(a, b) -> bool:
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CASES)
def test_torch_file_is_the_state_dict_and_loads_bit_exactly(tmp_path, name, dtype):
    module = _module(name, dtype)
    path = tio.save(tmp_path / "m.pt", module)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "flashcore-torch" and raw["format_version"] == "1"
    assert fc.config_from_dict(json.loads(raw["config"])) == module.config
    sd = module.state_dict()
    assert raw["state_dict"].keys() == sd.keys()
    for k, v in sd.items():  # native layout: nn.Linear weights stay [out, in]
        assert raw["state_dict"][k].dtype == dtype and torch.equal(raw["state_dict"][k], v), k
    back = tio.load(path)
    assert type(back) is type(module) and back.config == module.config
    assert _same_state(back, module)
    # write_params from canonical weights gives the same file content
    tio.write_params(tmp_path / "p.pt", module.to_canonical(), module.config)
    again = torch.load(tmp_path / "p.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(again[k], v) and again[k].dtype == v.dtype for k, v in sd.items())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_canonical_file_with_native_tensors(tmp_path, dtype):
    from safetensors import safe_open

    module = _module("lm-flash-abspos", dtype, seed=3)
    path = tio.save_canonical(tmp_path / "c.safetensors", module)
    with safe_open(str(path), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {dtype}
    params, config = load_canonical_numpy(path)  # the spec's reader agrees, bit for bit
    want = module.to_canonical()
    assert config == module.config
    assert all(np.array_equal(params[k].view(np.uint8), want[k].view(np.uint8)) for k in want)
    back = tio.load_canonical(path)
    assert _same_state(back, module)


def test_bare_state_dict_needs_a_config(tmp_path):
    module = _module("flash", torch.float32)
    bare = tmp_path / "bare.pt"
    torch.save(module.state_dict(), bare)
    with pytest.raises(WeightFileError, match="bare state dict.*config"):
        tio.load(bare)
    assert _same_state(tio.load(bare, config=module.config), module)
    with pytest.raises(WeightFileError, match=r"qk.gamma: expected \(2, 8\), got \(4, 8\)"):
        tio.load(bare, config=ALL_CONFIGS["gau"])  # same names, other shapes
    other = ALL_CONFIGS["lm-flash"]
    with pytest.raises(WeightFileError, match=r"missing \['embed.weight'") as exc:
        tio.load(bare, config=other)
    assert "bare.pt" in str(exc.value) and "unexpected ['hidden.bias'" in str(exc.value)
    tio.save(tmp_path / "tagged.pt", module)
    with pytest.raises(WeightFileError, match="not for"):
        tio.load(tmp_path / "tagged.pt", config=other)


def test_bad_torch_files(tmp_path):
    module = _module("flash", torch.float32)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(WeightFileError, match="not a flashcore torch file"):
        tio.read_params(tmp_path / "list.pt")
    path = tio.save(tmp_path / "m.pt", module)
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:200])
    with pytest.raises(WeightFileError, match="cut.pt.*not a readable torch file"):
        tio.read_params(tmp_path / "cut.pt")
    raw = torch.load(path, weights_only=True)
    torch.save(dict(raw, format_version="99"), tmp_path / "new.pt")
    with pytest.raises(WeightFileError, match="newer"):
        tio.read_params(tmp_path / "new.pt")
    sd = dict(raw["state_dict"])
    sd["hidden.weight"] = sd["hidden.weight"].to(torch.int32)
    torch.save(dict(raw, state_dict=sd), tmp_path / "ints.pt")
    with pytest.raises(WeightFileError, match=r"ints.pt.*hidden.kernel.*floating"):
        tio.read_params(tmp_path / "ints.pt")
    sd = dict(raw["state_dict"])
    sd["hidden.weight"] = sd["hidden.weight"].T.contiguous()  # a transposed kernel: refused
    torch.save(dict(raw, state_dict=sd), tmp_path / "t.pt")
    with pytest.raises(WeightFileError, match="hidden.kernel: expected"):
        tio.read_params(tmp_path / "t.pt")


def test_read_params_maps_names_through_the_naming_table(tmp_path):
    module = _module("lm-transformer-headbias", torch.bfloat16, seed=5)
    path = tio.save(tmp_path / "m.pt", module)
    params, config = tio.read_params(path)
    sd = module.state_dict()
    for canonical, (native, transpose) in naming_table(config).items():
        want = sd[native].mT if transpose else sd[native]
        got = torch.from_numpy(params[canonical].view(np.uint16)).view(torch.bfloat16)
        assert params[canonical].dtype == ml_dtypes.bfloat16 and torch.equal(got, want), canonical
