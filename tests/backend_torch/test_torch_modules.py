"""flashcore.torch modules: names, init, and a forward that is the spec's."""

import numpy as np
import pytest

import flashcore as fc

torch = pytest.importorskip("torch", reason="flashcore.torch needs torch")

from _torch_cases import (  # noqa: E402
    ALL_CONFIGS,
    LAYER_CONFIGS,
    LM_CONFIGS,
    module_for,
    noisy_params,
    sample_inputs,
)

import flashcore.torch as ft  # noqa: E402
from flashcore.conformance.assertions import assert_close  # noqa: E402
from flashcore.conformance.tolerances import longest_reduction  # noqa: E402
from flashcore.torch import naming  # noqa: E402
from flashcore.torch.xp import xp  # noqa: E402

IDS = list(ALL_CONFIGS)


@pytest.mark.parametrize("name", IDS)
def test_naming_table_covers_exactly_the_canonical_names(name):
    config = ALL_CONFIGS[name]
    module = module_for(config, init=False)
    table = ft.naming_table(config)
    assert set(table) == set(fc.param_spec(config))
    native = dict(module.named_parameters())
    assert sorted(n for n, _ in table.values()) == sorted(native)  # a bijection
    for canonical, (native_name, transpose) in table.items():
        shape = fc.param_spec(config)[canonical].shape
        assert tuple(native[native_name].shape) == (shape[::-1] if transpose else shape), canonical
        # Exactly the nn.Linear weights transpose.
        owner = module.get_submodule(native_name.rpartition(".")[0])
        assert transpose == (isinstance(owner, torch.nn.Linear) and native_name.endswith("weight"))


def test_naming_table_refuses_an_unmapped_canonical_name(monkeypatch):
    monkeypatch.delitem(naming.LAYER, "qk.gamma")
    with pytest.raises(KeyError, match="qk.gamma"):
        ft.naming_table(LAYER_CONFIGS["flash"])


def test_state_dict_names_are_idiomatic():
    module = ft.FLASH(LAYER_CONFIGS["flash"], seed=0)
    assert list(module.state_dict()) == [
        "norm.scale",
        "hidden.weight",
        "hidden.bias",
        "qk.gamma",
        "qk.beta",
        "rel_bias.weight",
        "out.weight",
        "out.bias",
    ]
    lm = ft.LM(LM_CONFIGS["lm-gau-untied"], seed=0)
    names = list(lm.state_dict())
    assert names[:2] == ["embed.weight", "layers.0.norm.scale"]
    assert names[-2:] == ["final_norm.scale", "head.weight"]


@pytest.mark.parametrize("name", IDS)
@pytest.mark.parametrize("seed", [0, 7])
def test_seeded_init_equals_flashcore_init(name, seed):
    config = ALL_CONFIGS[name]
    got = module_for(config, seed=seed).to_canonical()
    ref = fc.init(config, seed)
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def test_unseeded_init_follows_torch_manual_seed():
    config = LAYER_CONFIGS["flash"]
    torch.manual_seed(3)
    a = ft.FLASH(config).to_canonical()
    torch.manual_seed(3)
    b = ft.FLASH(config).to_canonical()
    c = ft.FLASH(config).to_canonical()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["hidden.kernel"], c["hidden.kernel"])


def test_float64_init_equals_flashcore_init_in_float64():
    config = LM_CONFIGS["lm-flash"]
    got = ft.LM(config, seed=1, dtype=torch.float64).to_canonical()
    ref = fc.init(config, 1, dtype=np.float64)
    assert all(np.array_equal(got[k], ref[k]) for k in ref)


def _layout(params: dict, layout: str) -> dict:
    """Canonical weights as torch tensors: contiguous, or every matrix as a transposed view (the
    layout the modules hand the spec; BLAS picks another kernel and summation order for it)."""
    out = {k: torch.from_numpy(v) for k, v in params.items()}
    if layout == "transposed":
        out = {k: v.T.contiguous().mT if v.ndim == 2 else v for k, v in out.items()}
        assert any(not v.is_contiguous() for v in out.values())
    return out


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """Run the test under one and under two intra-op threads (another blocking of every matmul)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("name", IDS)
def test_forward_equals_the_spec(name, layout, threads):
    """float64: the module's forward is the spec on the canonical weights, up to the order of its
    sums (the module hands the spec transposed views of its Linear weights)."""
    config = ALL_CONFIGS[name]
    params = noisy_params(config)
    module = module_for(config, init=False, dtype=torch.float64)
    module.load_canonical(params)
    x, mask, seg = sample_inputs(config)
    p = _layout(params, layout)
    if isinstance(config, fc.LMConfig):
        ref = fc.lm_logits(p, x, config=config, mask=mask, segment_ids=seg, xp=xp)
    else:
        ref = fc.block_fn(config)(p, x, config=config, mask=mask, segment_ids=seg, xp=xp)
    got = module(x, mask=mask, segment_ids=seg)
    assert got.shape == ref.shape and got.dtype == torch.float64
    assert_close(got, ref, reorder=longest_reduction(config, x.shape[1]))


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("name", ["lm-flash", "lm-transformer-headbias"])
def test_lm_loss_helpers_equal_flashcore_lm_loss(name, layout, threads):
    config = LM_CONFIGS[name]
    params = noisy_params(config)
    lm = module_for(config, init=False, dtype=torch.float64)
    lm.load_canonical(params)
    tokens, mask, seg = sample_inputs(config)
    targets = torch.roll(tokens, -1, dims=1)
    p = _layout(params, layout)
    ref = fc.lm_loss(p, tokens, targets, config=config, mask=mask, segment_ids=seg, xp=xp)
    got = lm.loss(tokens, targets, mask=mask, segment_ids=seg)
    assert got.ndim == 0
    n = longest_reduction(config, tokens.shape[1] * tokens.shape[0])
    assert_close(got, ref, reorder=n)
    logits = lm(tokens, mask=mask, segment_ids=seg)
    assert_close(lm.cross_entropy(logits, targets, mask), ref, reorder=n)
    got.backward()
    assert all(p.grad is not None for p in lm.parameters())


def test_flash_passes_the_kernel_dispatcher(monkeypatch):
    """FLASH on the spec's layer (a call the fused layer does not take) runs the torch kernel
    dispatcher, the ``flash`` fast core of the namespace's Kernels (flashcore.torch.xp.KERNELS)."""
    import dataclasses

    import flashcore.torch.kernels as kernels
    from flashcore.kernels import FastCore
    from flashcore.torch.xp import KERNELS
    from flashcore.torch.xp import xp as xpt

    assert KERNELS.flash.run is kernels.attention_core
    monkeypatch.setattr(kernels, "layer_path", lambda *a, **k: "spec")
    calls = []
    real = KERNELS.flash.run

    def spy(*args, **kwargs):
        calls.append(kwargs["config"])
        return real(*args, **kwargs)

    spied = FastCore(spy, KERNELS.flash.unsupported)
    monkeypatch.setattr(xpt, "kernels", dataclasses.replace(KERNELS, flash=spied))
    layer = ft.FLASH(LAYER_CONFIGS["flash"], seed=0)
    layer(torch.randn(1, 5, 16))
    assert calls == [layer.config]


@pytest.mark.parametrize(
    "cls,config",
    [
        (ft.FLASH, LAYER_CONFIGS["gau"]),
        (ft.GAU, LAYER_CONFIGS["flash"]),
        (ft.TransformerBlock, LAYER_CONFIGS["flash"]),
        (ft.LM, LAYER_CONFIGS["flash"]),
    ],
)
def test_wrong_config_type_is_refused(cls, config):
    with pytest.raises(ValueError, match=cls.__name__):
        cls(config)


def test_bad_input_gets_the_spec_error():
    layer = ft.FLASH(LAYER_CONFIGS["flash"], seed=0)
    with pytest.raises(ValueError, match="feature size 8"):
        layer(torch.randn(1, 5, 8))
    with pytest.raises(TypeError, match="mask must be bool"):
        layer(torch.randn(1, 5, 16), mask=torch.ones(1, 5))
