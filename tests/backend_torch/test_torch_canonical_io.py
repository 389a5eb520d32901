"""load_canonical / to_canonical: exact names, every shape, no partial loads, bit-exact round trips."""

import numpy as np
import pytest

import flashcore as fc
from flashcore.conformance.assertions import assert_close
from flashcore.conformance.tolerances import longest_reduction

torch = pytest.importorskip("torch", reason="flashcore.torch needs torch")

from _torch_cases import ALL_CONFIGS, LAYER_CONFIGS, LM_CONFIGS, module_for, noisy_params  # noqa: E402

import flashcore.torch as ft  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float64]


def _snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["flash", "transformer", "lm-flash-abspos"])
@pytest.mark.parametrize("route", ["numpy", "tensors"])
def test_round_trip_is_bit_exact_in_the_native_dtype(name, dtype, route):
    config = ALL_CONFIGS[name]
    src = module_for(config, init=False, dtype=dtype)
    src.load_canonical(noisy_params(config))
    exported = src.to_canonical(tensors=route == "tensors")
    for k, v in exported.items():
        want = fc.param_spec(config)[k].shape
        assert tuple(v.shape) == want, k
        if route == "tensors":
            assert v.dtype == dtype and v.is_contiguous() and not v.requires_grad
        else:
            assert isinstance(v, np.ndarray) and v.dtype.name == str(dtype).split(".")[1]
    dst = module_for(config, init=False, dtype=dtype)
    dst.load_canonical(exported)
    assert _same(src.state_dict(), dst.state_dict())


def test_exported_tensors_are_independent_copies():
    layer = ft.FLASH(LAYER_CONFIGS["flash"], seed=0)
    out = layer.to_canonical(tensors=True)
    out["hidden.kernel"].add_(1.0)
    arr = layer.to_canonical()
    arr["out.kernel"] += 1.0
    ref = fc.init(layer.config, 0)
    again = layer.to_canonical()
    assert np.array_equal(again["hidden.kernel"], ref["hidden.kernel"])
    assert np.array_equal(again["out.kernel"], ref["out.kernel"])


def test_kernels_are_transposed_linear_weights():
    layer = ft.FLASH(LAYER_CONFIGS["flash"], seed=0)
    canon = layer.to_canonical()
    np.testing.assert_array_equal(canon["hidden.kernel"], layer.hidden.weight.detach().numpy().T)
    x = torch.randn(3, 16)
    torch.testing.assert_close(
        layer.hidden(x), x @ torch.from_numpy(canon["hidden.kernel"]) + layer.hidden.bias
    )


def test_safetensors_round_trip_in_bfloat16(tmp_path):
    from safetensors.torch import load_file, save_file

    config = LM_CONFIGS["lm-flash"]
    lm = ft.LM(config, seed=2, dtype=torch.bfloat16)
    save_file(lm.to_canonical(tensors=True), tmp_path / "w.safetensors")
    other = ft.LM(config, init=False, dtype=torch.bfloat16)
    other.load_canonical(load_file(tmp_path / "w.safetensors"))
    assert _same(lm.state_dict(), other.state_dict())


def test_flashcore_io_round_trip_in_bfloat16(tmp_path):
    """The spec's canonical weight files (NumPy, bfloat16 via ml_dtypes) load back bit-exactly."""
    io = pytest.importorskip("flashcore.io", reason="flashcore.io not present")
    pytest.importorskip("ml_dtypes", reason="bfloat16 NumPy arrays need ml_dtypes")
    config = LM_CONFIGS["lm-flash"]
    lm = ft.LM(config, seed=2, dtype=torch.bfloat16)
    path = io.save(tmp_path / "w.safetensors", lm.to_canonical(), config)
    params, cfg = io.load(path)
    other = ft.LM(cfg, init=False, dtype=torch.bfloat16)
    other.load_canonical(params)
    assert _same(lm.state_dict(), other.state_dict())


def test_loading_casts_to_the_module_dtype():
    layer = ft.FLASH(LAYER_CONFIGS["flash"], init=False, dtype=torch.bfloat16)
    params = fc.init(layer.config, 0, dtype=np.float64)
    layer.load_canonical(params)
    assert all(p.dtype == torch.bfloat16 for p in layer.parameters())
    want = torch.from_numpy(params["hidden.kernel"]).to(torch.bfloat16).T
    assert torch.equal(layer.hidden.weight.detach(), want)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda p: p.pop("qk.gamma"), r"missing \['qk.gamma'\], unexpected \[\]"),
        (lambda p: p.update(extra=np.zeros(2)), r"missing \[\], unexpected \['extra'\]"),
        (
            lambda p: p.update(bogus=p.pop("out.bias")),
            r"missing \['out.bias'\], unexpected \['bogus'\]",
        ),
        (
            lambda p: p.update({"hidden.kernel": p["hidden.kernel"].T}),
            r"hidden.kernel: expected \(16, 72\), got \(72, 16\)",
        ),
        (
            lambda p: p.update({"norm.scale": np.ones(()), "qk.beta": np.ones((2, 8))}),
            r"norm.scale: expected \(1,\), got \(\); qk.beta: expected \(4, 8\)",
        ),
        (
            lambda p: p.update({"out.bias": np.zeros(16, np.int64)}),
            r"out.bias: expected a floating dtype",
        ),
    ],
    ids=["missing", "unexpected", "renamed", "transposed", "two-shapes", "int"],
)
def test_a_bad_load_raises_and_changes_nothing(change, message):
    layer = ft.FLASH(LAYER_CONFIGS["flash"], seed=0)
    before = _snapshot(layer)
    params = noisy_params(layer.config, seed=5)  # every value differs from the current ones
    change(params)
    with pytest.raises(ValueError, match=message):
        layer.load_canonical(params)
    assert _same(before, layer.state_dict())


def test_lm_load_lists_per_layer_names():
    config = LM_CONFIGS["lm-flash"]
    lm = ft.LM(config, seed=0)
    params = fc.init(config, 1)
    params["layers.1.hidden.weight"] = params.pop("layers.1.hidden.kernel")  # a torch name
    with pytest.raises(ValueError, match=r"missing \['layers.1.hidden.kernel'\], unexpected"):
        lm.load_canonical(params)


def test_golden_weights_load_and_reproduce_the_golden_output():
    from flashcore.conformance import golden

    g = golden.load("flash-causal-packed+pad")
    layer = ft.FLASH(g.config, init=False, dtype=torch.float64)
    layer.load_canonical(g.params)
    inp = {k: torch.from_numpy(v) for k, v in g.inputs.items()}
    out = layer(inp["x"], mask=inp["mask"], segment_ids=inp["segment_ids"])
    assert_close(out, g.output, reorder=longest_reduction(g.config, g.case.time))
