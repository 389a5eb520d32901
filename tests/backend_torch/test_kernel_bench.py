"""flashcore bench's FLOP model and its matched Transformer++ baseline (flashcore.app.benchrun),
against torch's own count of the torch models' matmuls (flashcore.torch.bench.build_model). The
command end to end, and the one step in every backend: tests/test_bench.py."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from flashcore.app import benchrun  # noqa: E402
from flashcore.conformance.assertions import assert_close  # noqa: E402
from flashcore.torch import TransformerBlock, bench  # noqa: E402


def _model(model: str, ffn: int | None = None):
    config = benchrun.model_config(
        model, ffn or benchrun.matched_ffn_dim(2 * benchrun.flash_layer_params())
    )
    return bench.build_model(model, config, benchrun.canonical_weights(model, config))


def _counted_flops(model, t: int) -> dict[str, int]:
    """torch's own count of the matmul FLOPs of one forward+backward step at (1, t, DIM), by op."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, t, benchrun.DIM, requires_grad=True)
    # the math SDPA: its matmuls are visible to the counter (the fused CPU kernel's are not)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        y = model(x)
        (y * torch.randn_like(y)).sum().backward()
    return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


def test_flash_flops_per_token_matches_torchs_count_of_the_spec_core():
    # independent of the formula: torch counts every matmul of two FLASH layers with the spec's
    # own core (dense C x C chunks, as the formula assumes), forward and backward, at T = 2 chunks
    t = 2 * benchrun.CHUNK
    counted = sum(_counted_flops(_model("flashcore-speccore"), t).values())
    assert benchrun.flops_per_token("flashcore", t) == counted / t
    assert benchrun.flops_per_token("flash-pytorch", 8 * t) == counted / t  # linear in T


def test_transformer_flops_per_token_matches_torchs_count():
    # torch's count of the block's matmuls; its dense T x T attention matmuls (bmm) are halved,
    # as the formula counts causal attention
    t = 2 * benchrun.CHUNK
    ffn = benchrun.matched_ffn_dim(2 * benchrun.flash_layer_params())
    counted = _counted_flops(_model("transformer++", ffn), t)
    assert set(counted) == {"aten.mm", "aten.bmm"}, counted
    per_token = (counted["aten.mm"] + counted["aten.bmm"] / 2) / t
    assert benchrun.flops_per_token("transformer++", t, ffn) == per_token


def test_transformer_baseline_matches_the_flash_pair_in_size():
    import flashcore as fc

    target = 2 * sum(a.size for a in fc.init(benchrun.flash_config(), 0).values())
    assert target == 2 * benchrun.flash_layer_params()
    ffn = benchrun.matched_ffn_dim(target)
    model = _model("transformer++", ffn)  # flashcore.torch's block, not a private copy
    assert isinstance(model, TransformerBlock) and model.config.ffn_dim == ffn
    assert abs(sum(p.numel() for p in model.parameters()) - target) / target < 0.01
    x = torch.randn(1, 40, benchrun.DIM)
    y = model(x)
    assert y.shape == x.shape
    # causal: the first 10 outputs do not depend on later positions
    x2 = x.clone()
    x2[:, 10:] += 1.0
    assert_close(model(x2)[:, :10].detach(), y[:, :10].detach(), reorder=40)


def test_attention_flops_match_torchs_count_of_the_dense_cores():
    """benchrun.attention_flops (3x the forward) against torch's count of each core's forward
    matmuls, written densely (no mask, so every pair is computed), and the causal half."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    t, d, s = 64, benchrun.DIM, benchrun.QK
    e, nh = benchrun.EXPANSION * d, benchrun.HEADS
    q, k, v = torch.randn(t, s), torch.randn(t, s), torch.randn(t, e)
    with FlopCounterMode(display=False) as counter:
        torch.relu(q @ k.T / t) ** 2 @ v
    assert 3 * counter.get_total_flops() == benchrun.attention_flops("gau", t, False)
    hq = torch.randn(1, nh, t, d // nh)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        torch.nn.functional.scaled_dot_product_attention(hq, hq, hq)
    assert 3 * counter.get_total_flops() == benchrun.attention_flops("sdpa", t, False)
    for core in ("gau", "sdpa"):
        full = benchrun.attention_flops(core, t, False)
        assert benchrun.attention_flops(core, t, True) == full * (t + 1) / (2 * t)


def test_attention_cores_times_both_cores_both_ways():
    res = bench.attention_cores(32, "float32", threads=1, repeats=1)
    assert set(res) == {"causal", "full"}
    for r in res.values():
        assert set(r) == {"gau_s", "sdpa_s", "gau_fwd_s", "sdpa_fwd_s"}
        assert all(v >= 0 for v in r.values())
