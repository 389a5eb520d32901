"""torch.compile: the layer forward compiles as one graph (fullgraph=True) and matches eager."""

import pytest

torch = pytest.importorskip("torch", reason="flashcore.torch needs torch")

from _torch_cases import LAYER_CONFIGS, module_for, noisy_params, sample_inputs  # noqa: E402

from flashcore.conformance.assertions import assert_close  # noqa: E402
from flashcore.conformance.tolerances import longest_reduction  # noqa: E402

pytestmark = pytest.mark.slow  # each test compiles (20-80 s on 2 cores)


def _build(name):
    config = LAYER_CONFIGS[name]
    module = module_for(config, init=False)
    module.load_canonical(noisy_params(config))
    return config, module


@pytest.mark.parametrize("name", ["flash-causal-t5-layer-shift", "gau", "transformer"])
def test_forward_compiles_fullgraph_and_matches_eager(name):
    torch._dynamo.reset()
    config, module = _build(name)
    compiled = torch.compile(module, fullgraph=True)
    for t in (9, 13):  # a second length: recompiles (dynamic shapes) must stay one graph too
        x, mask, seg = sample_inputs(config, t=t, dtype=torch.float32)
        want = module(x, mask=mask, segment_ids=seg)
        got = compiled(x, mask=mask, segment_ids=seg)
        # Inductor fuses and reorders: the same math summed in another order.
        assert_close(got, want, reorder=longest_reduction(config, t))


def test_forward_compiles_with_graph_breaks_and_matches_eager():
    """Whatever the spec's traceability, compiling must give eager's numbers and gradients."""
    torch._dynamo.reset()
    config, module = _build("flash-causal-t5-layer-shift")
    compiled = torch.compile(module)
    x, mask, seg = sample_inputs(config, dtype=torch.float32)
    want = module(x, mask=mask, segment_ids=seg)
    want.sum().backward()
    want_grads = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    got = compiled(x, mask=mask, segment_ids=seg)
    got.sum().backward()
    n = longest_reduction(config, x.shape[0] * x.shape[1])
    assert_close(got, want, reorder=n)
    scale = max(float(w.abs().max()) for w in want_grads)  # judged jointly, as conformance does
    for g, w in zip([p.grad for p in module.parameters()], want_grads, strict=True):
        assert_close(g, w, reorder=n, scale=scale)


def test_decode_step_compiles_fullgraph_and_matches_the_forward():
    """flashcore.decode promises branch-free steps; one compiled graph serves every position."""
    torch._dynamo.reset()
    config, layer = _build("flash-causal-t5-layer-shift")
    step = torch.compile(layer.decode_step, fullgraph=True)
    x = torch.randn(2, 6, config.dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = layer(x)
        state = layer.decode_init(2)
        for i in range(6):  # crosses a chunk boundary (C = 4)
            out, state = step(x[:, i], state)
            assert_close(out, full[:, i], reorder=longest_reduction(config, 6))
