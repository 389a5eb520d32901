"""flashcore.torch.bench: the FLOP model, the matched Transformer++ baseline; and a tiny end-to-end
run of the command, flashcore.app.torchbench.main (children, table, JSON, plot)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from flashcore.app import torchbench  # noqa: E402
from flashcore.conformance.assertions import assert_close  # noqa: E402
from flashcore.torch import TransformerBlock, bench  # noqa: E402


def _counted_flops(model, t: int) -> dict[str, int]:
    """torch's own count of the matmul FLOPs of one forward+backward step at (1, t, DIM), by op."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, t, bench.DIM, requires_grad=True)
    # the math SDPA: its matmuls are visible to the counter (the fused CPU kernel's are not)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        y = model(x)
        (y * torch.randn_like(y)).sum().backward()
    return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


def test_flash_flops_per_token_matches_torchs_count_of_the_spec_core():
    # independent of the formula: torch counts every matmul of two FLASH layers with the spec's
    # own core (dense C x C chunks, as the formula assumes), forward and backward, at T = 2 chunks
    t = 2 * bench.CHUNK
    counted = sum(_counted_flops(bench._flashcore_pair(spec_core=True), t).values())
    assert bench.flops_per_token("flashcore", t) == counted / t
    assert bench.flops_per_token("flash-pytorch", 8 * t) == counted / t  # linear in T


def test_transformer_flops_per_token_matches_torchs_count():
    # torch's count of the block's matmuls; its dense T x T attention matmuls (bmm) are halved,
    # as the formula counts causal attention
    t = 2 * bench.CHUNK
    ffn = bench.matched_ffn_dim(2 * bench.flash_layer_params())
    counted = _counted_flops(bench._transformer_block(ffn), t)
    assert set(counted) == {"aten.mm", "aten.bmm"}, counted
    per_token = (counted["aten.mm"] + counted["aten.bmm"] / 2) / t
    assert bench.flops_per_token("transformer++", t, ffn) == per_token


def test_transformer_baseline_matches_the_flash_pair_in_size():
    import flashcore as fc

    target = 2 * sum(a.size for a in fc.init(bench._flash_config(), 0).values())
    assert target == 2 * bench.flash_layer_params()
    ffn = bench.matched_ffn_dim(target)
    model = bench._transformer_block(ffn)  # flashcore.torch's block, not a private copy
    assert isinstance(model, TransformerBlock) and model.config.ffn_dim == ffn
    assert abs(bench._param_count(model) - target) / target < 0.01
    x = torch.randn(1, 40, bench.DIM)
    y = model(x)
    assert y.shape == x.shape
    # causal: the first 10 outputs do not depend on later positions
    x2 = x.clone()
    x2[:, 10:] += 1.0
    assert_close(model(x2)[:, :10].detach(), y[:, :10].detach(), reorder=40)


@pytest.mark.slow  # a child process per (model, dtype)
def test_bench_main_end_to_end(tmp_path):
    models = ["flashcore", "transformer++"]
    try:
        import flash_pytorch  # noqa: F401

        models.append("flash-pytorch")
    except ImportError:
        pass
    argv = ["--lengths", "256", "--dtypes", "float32", "bfloat16", "--repeats", "1"]
    argv += ["--warmup", "0", "--threads", "1", "--matmul-size", "256", "--out", str(tmp_path)]
    argv += ["--models", *models]
    assert torchbench.main(argv) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    rows = {(r["model"], r["dtype"]): r for r in data["rows"]}
    for model in models:
        for dt in ("float32", "bfloat16"):
            r = rows[(model, dt)]
            assert "error" not in r, r["error"]
            assert r["wall_s"] > 0 and r["us_per_token"] > 0 and r["peak_mb"] >= 0
    assert rows[("flashcore", "float32")]["core_path"] == "torch"
    md = (tmp_path / "bench.md").read_text()
    assert "| flashcore | float32 | 256 |" in md and "## Targets" in md
    assert (tmp_path / "bench.png").stat().st_size > 0
