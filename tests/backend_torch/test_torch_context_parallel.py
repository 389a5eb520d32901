"""Context-parallel FLASH on 2 CPU processes (gloo): each holds half of every sequence; the
gathered outputs and gradients equal the single-process layer on the whole sequence (float32,
1e-5 relative to scale), and the bytes through the collectives do not grow with the length."""

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="flashcore.torch needs torch")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import _torch_cp_worker as worker  # noqa: E402

import flashcore as fc  # noqa: E402
from flashcore.context_parallel import summary_bytes  # noqa: E402
from flashcore.torch import FLASH  # noqa: E402
from flashcore.torch.context_parallel import context_parallel_flash  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("cp")
    res = subprocess.run(
        [sys.executable, str(Path(worker.__file__)), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return torch.load(out / "results.pt")


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("name", list(worker.CASES))
def test_outputs_and_gradients_equal_the_single_process_layer(results, name):
    got = results[name]
    config, x, mask, w = worker.problem(name)
    layer = worker.make_layer(config)
    x = x.clone().requires_grad_(True)
    y = layer(x, mask=mask)
    (y * w).sum().backward()
    assert _rel(got["y"], y.detach()) <= TOL
    assert _rel(got["x_grad"], x.grad) <= TOL
    want = dict(layer.named_parameters())
    assert got["grads"].keys() == want.keys()
    # Scale: the layer's largest gradient entry. norm.scale's gradient is one sum of b*T*d terms
    # that mostly cancel: there even float32 and float64 single-process layers differ by ~6e-5
    # of its own size.
    scale = max(float(p.grad.abs().max()) for p in want.values())
    for n, p in want.items():
        assert float((got["grads"][n] - p.grad).abs().max()) <= TOL * scale, n


def test_bytes_per_layer_do_not_grow_with_length(results):
    short, long = results[worker.BYTES_CASE], results["long"]
    assert [c[:2] for c in short["calls"]] == [c[:2] for c in long["calls"]]
    assert short["sent"] == long["sent"]
    config = worker.CASES[worker.BYTES_CASE][0]
    b = 2
    halo = b * (config.dim + 1) * 4  # the token shift's row and its mask bit
    flag = b * 4  # NaN / Inf in a shard this one reads (flashcore.nonfinite)
    assert short["forward_sent"] == summary_bytes(config, b) + halo + flag


def test_refuses_unsupported_input_before_communicating():
    # No process group is needed: the checks run before any collective.
    layer = FLASH(fc.FlashConfig(dim=16, qk_dim=8, chunk_size=4), seed=0)
    with pytest.raises(RuntimeError, match="torch.distributed"):
        context_parallel_flash(layer, torch.zeros(1, 8, 16))
    from flashcore.context_parallel import check_shard

    with pytest.raises(ValueError, match="multiple of chunk_size"):
        check_shard(layer.config, 6)
    check_shard(layer.config, 8, segment_ids=torch.zeros(1, 8, dtype=torch.int64))  # supported
    with pytest.raises(NotImplementedError, match="length_mode='array'"):
        check_shard(layer.config.replace(linear_norm="length", length_mode="array"), 8)


def test_benchmark_refuses_a_length_that_does_not_split():
    from flashcore.app import context_parallel_bench as bench

    with pytest.raises(SystemExit):
        bench._parse(["--lengths", "1000"])  # not a multiple of world x chunk = 512
    args, lengths = bench._parse(["--lengths", "1K,2048"])
    assert lengths == [1024, 2048] and args.world == 2
