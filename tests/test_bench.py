"""``flashcore bench``: one step definition in every backend, the report's ratios and targets, and a
tiny run of the command end to end (children, rows per backend and model, bench.md / .json / .png).

The step's proof: every installed backend's ``build_step`` (flashcore.<backend>.bench) on the same
canonical weights, x and cotangent gives torch's loss and gradients (w.r.t. x and every canonical
parameter) within the conformance table's tolerance. A backend whose step were another loss
(mean(y^2), sum(y)) or left out x would fail it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json

import numpy as np
import pytest

import flashcore as fc
from flashcore.app import bench, benchreport, benchrun
from flashcore.conformance.assertions import assert_close

NEEDS = {"torch": "torch", "jax": "jax", "tf": "tensorflow"}


def _skip_unless(*backends: str) -> None:
    for b in backends:
        if importlib.util.find_spec(NEEDS[b]) is None:
            pytest.skip(f"{NEEDS[b]} is not installed (the {b} backend)")


# A small FLASH pair (3 chunks, causal) and a Transformer++ block: the bench's build_step on them.
TINY = {
    "flashcore": fc.FlashConfig(dim=32, qk_dim=8, chunk_size=16, causal=True, max_len=16),
    "transformer++": fc.TransformerConfig(dim=32, heads=2, ffn_dim=48, causal=True),
}


def _gradients(backend: str, model: str, config, t: int, dtype: str) -> dict[str, np.ndarray]:
    importlib.import_module("torch")  # torch before tensorflow in one process
    step = importlib.import_module(f"flashcore.{backend}.bench").build_step
    x, cot = benchrun.inputs(t, config.dim)
    _, gradients, _ = step(model, config, benchrun.canonical_weights(model, config), x, cot, dtype)
    return gradients()


def _assert_same_step(got: dict, want: dict, dtype: str, label: str) -> None:
    assert set(got) == set(want), f"{label}: names differ: {sorted(set(got) ^ set(want))}"
    assert len(want) > 2  # loss, x and the parameters
    for name, w in want.items():
        quantity = {"loss": "loss", "x": "grad_input"}.get(name, "grad_params")
        assert_close(got[name], w, quantity=quantity, dtype=dtype, err_msg=f"{label} {name}")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("model", list(TINY))
@pytest.mark.parametrize("backend", ["jax", "tf"])
def test_the_step_is_one_definition_in_every_backend(backend, model, dtype):
    _skip_unless("torch", backend)
    config = TINY[model]
    want = _gradients("torch", model, config, 40, dtype)
    got = _gradients(backend, model, config, 40, dtype)
    assert {f"layers.0.{k}" for k in fc.param_spec(config)} <= set(want)
    _assert_same_step(got, want, dtype, f"{backend} vs torch, {model} {dtype}")


def test_a_different_step_would_fail_the_check():
    # the check can fail: the torch step against the same gradients of another loss, mean(y^2)
    _skip_unless("torch")
    import torch

    config = TINY["flashcore"]
    want = _gradients("torch", "flashcore", config, 40, "float32")
    weights = benchrun.canonical_weights("flashcore", config)
    net = importlib.import_module("flashcore.torch.bench").build_model("flashcore", config, weights)
    x = torch.from_numpy(benchrun.inputs(40, config.dim)[0]).requires_grad_(True)
    torch.mean(net(x) ** 2).backward()
    with pytest.raises(AssertionError):
        assert_close(x.grad, want["x"], quantity="grad_input", dtype="float32")


@pytest.mark.slow  # the bench's own sizes (d 512, C 256): one XLA compile per backend
def test_the_bench_jobs_compute_the_same_gradients_at_the_bench_size():
    _skip_unless("torch", "jax", "tf")
    job = {"model": "flashcore", "dtype": "float32", "t": 512}
    want = None
    for backend in ("torch", "jax", "tf"):
        _, gradients, _ = benchrun.build({**job, "backend": backend})
        got = gradients()
        if want is None:
            want = got
        else:
            _assert_same_step(got, want, "float32", f"{backend} vs torch at the bench's size")


# -- the report, on made-up rows (framework-free) ---------------------------------------------------


def _row(backend, model, dtype, t, us, *, cpu_us=None, mb=100.0):
    wall = us * t / 1e6
    cpu = (cpu_us or us) * t / 1e6
    return dict(backend=backend, model=model, dtype=dtype, t=t, wall_s=wall, cpu_s=cpu,
                us_per_token=us, cpu_us_per_token=cpu_us or us, peak_mb=mb)  # fmt: skip


LENGTHS = (1024, 4096, 16384, 65536)


def _rows(torch_fp32=100.0, jax_fp32=110.0, tf_fp32=130.0):
    """torch FLASH 1.2x (fp32) / 1.4x (bf16) faster than the peer and bf16 2x faster than fp32;
    jax within 1.25x of torch, tf not; T++ 4x slower at 16K; flat per-token time."""
    rows = []
    for t in LENGTHS:
        for dt, scale in (("float32", 1.0), ("bfloat16", 0.5)):
            peer = 1.2 if dt == "float32" else 1.4
            rows.append(_row("torch", "flashcore", dt, t, torch_fp32 * scale, mb=50))
            rows.append(_row("torch", "flash-pytorch", dt, t, torch_fp32 * scale * peer, mb=80))
            if t <= 16384:
                rows.append(_row("torch", "transformer++", dt, t, 4 * torch_fp32 * scale))
            rows.append(_row("jax", "flashcore", dt, t, jax_fp32 * scale))
            rows.append(_row("tf", "flashcore", dt, t, tf_fp32 * scale))
    rows.append({"backend": "jax", "model": "transformer++", "dtype": "float32", "t": 65536,
                 "skipped": "T > 4096"})  # fmt: skip
    return rows


def _target(targets, backend, dtype, start):
    (tg,) = [g for g in targets if (g["backend"], g["dtype"]) == (backend, dtype)
             and g["target"].startswith(start)]  # fmt: skip
    return tg


def test_ratios_compare_the_same_t_and_dtype():
    rows = _rows()
    benchreport.add_ratios(rows)
    r = benchreport.find(rows, "torch", "flashcore", "float32", 4096)
    assert r["x_vs_flash_pytorch"] == pytest.approx(1.2) and r["x_vs_tpp"] == pytest.approx(4.0)
    assert "x_vs_torch" not in r and "x_vs_float32" not in r
    j = benchreport.find(rows, "jax", "flashcore", "bfloat16", 16384)
    assert j["x_vs_torch"] == pytest.approx(50 / 55) and j["x_vs_float32"] == pytest.approx(2.0)
    assert j["x_vs_flash_pytorch"] == pytest.approx(70 / 55) and "x_vs_tpp" not in j
    assert "x_vs_flash_pytorch" not in benchreport.find(
        rows, "torch", "flash-pytorch", "float32", 1024
    )


def test_targets_met_and_missed():
    rows = _rows()
    benchreport.add_ratios(rows)
    targets = benchreport.targets(rows)
    met = lambda tg: (tg["met_wall"], tg["met_cpu"])  # noqa: E731
    assert met(_target(targets, "torch", "float32", "FLASH >= 1.15x faster")) == (True, True)
    assert met(_target(targets, "torch", "bfloat16", "FLASH >= 1.3x faster")) == (True, True)
    assert met(_target(targets, "torch", "bfloat16", "bf16 >= 1.8x")) == (True, True)
    assert met(_target(targets, "torch", "float32", "peak memory")) == (True, None)
    assert met(_target(targets, "jax", "float32", "FLASH within 1.25x")) == (True, True)
    assert met(_target(targets, "tf", "float32", "FLASH within 1.25x")) == (False, False)
    assert not _target(targets, "tf", "bfloat16", "FLASH within 1.25x")["required"]
    for b in ("torch", "jax", "tf"):
        assert met(_target(targets, b, "float32", "us/token at 64K")) == (True, True)
    assert met(_target(targets, "torch", "float32", "causal FLASH >= 3x")) == (True, True)
    assert (
        _target(targets, "tf", "float32", "FLASH within 1.25x")["wall"]
        == "worst 1.30x torch's (1K)"
    )

    # slower: torch only 1.1x faster than the peer in fp32 at 64K, per-token time grows 20%
    rows = _rows()
    for r in rows:
        if (r["backend"], r["model"], r["t"]) == ("torch", "flashcore", 65536):
            r["wall_s"] *= 1.2  # by wall time only, in both dtypes
            r["us_per_token"] *= 1.2
            r["peak_mb"] = 90.0  # the peer's: 80
    benchreport.add_ratios(rows)
    targets = benchreport.targets(rows)
    assert _target(targets, "torch", "float32", "FLASH >= 1.15x faster")["met_wall"] is False
    assert _target(targets, "torch", "float32", "FLASH >= 1.15x faster")["met_cpu"] is True
    assert _target(targets, "torch", "float32", "us/token at 64K")["met_wall"] is False
    assert _target(targets, "torch", "float32", "peak memory")["met_wall"] is False
    md = benchreport.markdown(rows, targets, _meta())
    assert (
        "| torch | float32 | us/token at 64K <= 1.1x that at 1K | 1.20x | 1.00x | no, yes |" in md
    )


def test_every_row_has_its_percent_of_peak_by_wall_and_cpu_time_and_its_dot_path():
    rows = _rows()
    peaks = {"float32": {"gflops": 100.0, "gflops_cpu": 80.0},
             "bfloat16": {"gflops": 400.0, "gflops_cpu": 320.0}}  # fmt: skip
    measured = [r for r in rows if "wall_s" in r]
    for r in measured:
        r["gflops"], r["gflops_cpu"] = 50.0, 40.0
        if r["backend"] != "torch" and r["dtype"] == "bfloat16":
            r["dot_path"] = "float32"
    benchreport.add_peak_fractions(rows, peaks)
    benchreport.add_ratios(rows)
    jb = benchreport.find(rows, "jax", "flashcore", "bfloat16", 1024)
    tb = benchreport.find(rows, "torch", "flashcore", "bfloat16", 1024)
    assert jb["peak_dtype"] == "float32" and jb["peak_fraction"] == pytest.approx(0.5)
    assert tb["peak_dtype"] == "bfloat16" and tb["peak_fraction_cpu"] == pytest.approx(0.125)
    md = benchreport.markdown(rows, benchreport.targets(rows), _meta())
    assert "| GFLOP/s (CPU) | % peak (CPU) |" in md and "| GFLOP/s |" not in md
    targets_part = md.split("## Targets", 1)[1]
    for r in measured:
        pct = 100 * r["peak_fraction"], 100 * r["peak_fraction_cpu"]
        line = (f"| {r['backend']} | {r['model']} | {benchreport.dtype_text(r)} | {r['t']} "
                f"| 50 | {pct[0]:.0f} | 40 | {pct[1]:.0f} | {r['peak_dtype']} |")  # fmt: skip
        assert line in targets_part, line
    assert "| jax | flashcore | bfloat16 (f32 dots) | 1024 |" in md
    assert "GFLOP/s   50 wall,   40 CPU" in benchreport.row_text(jb)


def test_targets_the_run_cannot_judge_say_so():
    rows = [_row("torch", "flashcore", "float32", 256, 100.0)]
    benchreport.add_ratios(rows)
    targets = benchreport.targets(rows)
    assert targets and all(tg["met_wall"] is None for tg in targets)
    assert all(tg["wall"].startswith("not measured") for tg in targets)


def _meta():
    return {"started": "now", "command": "flashcore bench --lengths 1K", "backends": ["torch"],
            "processor": "cpu", "machine": "m", "cpu_count": 2, "threads": None,
            "matmul_peak_gflops": {"used": {"float32": {"gflops": 1.0, "gflops_cpu": 1.0}}},
            "matmul_size": 8, "params": {"flash_pair": 1, "transformer++_ffn_dim": 8},
            "step": "The step.", "bfloat16": "bf16.", "flops_model": "FLOPs."}  # fmt: skip


# -- the command ------------------------------------------------------------------------------------


def test_backend_picks_one_backend_and_a_bad_one_is_a_usage_error(capsys):
    assert bench._parse(["--backend", "jax"]).backends == ["jax"]
    assert bench._parse(["--backends", "tf", "torch"]).backends == ["torch", "tf"]
    assert bench._parse([]).backends == ["torch", "jax", "tf"]
    with pytest.raises(SystemExit) as err:
        bench._parse(["--backend", "numpy"])
    assert err.value.code == 2 and "{torch,jax,tf}" in capsys.readouterr().err


def test_the_grid_has_each_backends_models_and_skips_the_quadratic_baseline():
    args = bench._parse(["--lengths", "4K,16K", "--dtypes", "float32"])
    rows = bench._grid(args)
    keys = {(r["backend"], r["model"], r["t"]) for r in rows}
    assert ("jax", "flash-pytorch", 4096) not in keys and ("torch", "flash-pytorch", 4096) in keys
    skipped = {(r["backend"], r["model"], r["t"]) for r in rows if "skipped" in r}
    assert {("jax", "transformer++", 16384), ("tf", "transformer++", 16384)} <= skipped
    if importlib.util.find_spec("torch") is not None:
        assert ("torch", "transformer++", 16384) not in skipped


def test_children_get_the_malloc_settings_and_keep_the_users_tunables(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    env = benchrun.child_env(system_malloc=False)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert env["MALLOC_MMAP_MAX_"] == "0"
    # another tunable of the user's is kept, and a hugetlb value of theirs wins
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    env = benchrun.child_env(system_malloc=False)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2")
    env = benchrun.child_env(system_malloc=False)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2"
    assert benchrun.malloc_env(dict(env))["GLIBC_TUNABLES"] == env["GLIBC_TUNABLES"]
    # --system-malloc leaves the environment as it is
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.delenv("MALLOC_MMAP_MAX_", raising=False)
    env = benchrun.child_env(system_malloc=True)
    assert "GLIBC_TUNABLES" not in env and "MALLOC_MMAP_MAX_" not in env


@pytest.mark.slow  # a child process per (backend, model, dtype), an XLA compile in each jax / tf one
def test_bench_main_end_to_end(tmp_path, capsys):
    backends = [b for b in ("torch", "jax", "tf") if importlib.util.find_spec(NEEDS[b])]
    if "torch" not in backends:
        pytest.skip("torch is not installed (the reference backend)")
    peer = importlib.util.find_spec("flash_pytorch") is not None
    argv = ["--lengths", "256", "--dtypes", "float32", "bfloat16", "--repeats", "1"]
    argv += ["--warmup", "1", "--threads", "1", "--matmul-size", "256", "--out", str(tmp_path)]
    argv += ["--quiet"]
    assert bench.main(argv) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    rows = {(r["backend"], r["model"], r["dtype"]): r for r in data["rows"]}
    want = {("torch", "flashcore"), ("torch", "transformer++")} | (
        {("torch", "flash-pytorch")} if peer else set()
    )
    want |= {(b, m) for b in backends if b != "torch" for m in ("flashcore", "transformer++")}
    assert {(b, m) for b, m, _ in rows} == want
    for (b, m, dt), r in rows.items():
        assert "error" not in r, (b, m, dt, r["error"])
        assert r["wall_s"] > 0 and r["cpu_s"] > 0 and r["peak_mb"] >= 0 and r["gflops"] > 0
        assert r["t"] == 256 and len(r["wall_all"]) == 1
        assert "x_vs_tpp" in r or m == "transformer++"
        if b != "torch":
            assert "x_vs_torch" in r and r["warmup"] >= 1  # compiled before the timed steps
        if dt == "bfloat16":
            assert "x_vs_float32" in r
        if peer and (b, m) != ("torch", "flash-pytorch"):
            assert "x_vs_flash_pytorch" in r
    assert rows[("torch", "flashcore", "float32")]["core_path"] == "torch"
    fw = data["meta"]["framework_matmul_gflops"]  # the jax / tf bf16-vs-fp32 matmul evidence
    assert set(fw) == set(backends) - {"torch"}
    assert all(fw[b][dt]["gflops"] > 0 for b in fw for dt in ("float32", "bfloat16"))
    md = (tmp_path / "bench.md").read_text()
    assert f"`flashcore bench {' '.join(argv)}`" in md.splitlines()[2]
    assert "| torch | flashcore | float32 | 256 |" in md and "## Targets" in md
    for b in backends:  # on CPU jax's and tf's bf16 blocks run in float32, and say so
        path = "native" if b == "torch" else "float32"
        assert rows[(b, "flashcore", "bfloat16")].get("dot_path", "native") == path
        label = "bfloat16" if b == "torch" else "bfloat16 (f32 dots)"
        assert f"| {b} | flashcore | {label} | 256 |" in md
    if peer:
        tg = _target(data["targets"], "torch", "float32", "FLASH >= 1.15x faster")
        assert tg["met_wall"] in (True, False)
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert capsys.readouterr().out.startswith(f"flashcore bench {' '.join(argv)}")


def test_attention_rows_give_rates_and_the_pair_against_the_block():
    res = {
        m: {"gau_s": 2.0, "sdpa_s": 1.0, "gau_fwd_s": 0.5, "sdpa_fwd_s": 0.5}
        for m in ("causal", "full")
    }
    rows = bench._attention_rows(1024, "bfloat16", res)
    assert [r["causal"] for r in rows] == [True, False]
    for r in rows:
        gau = benchrun.attention_flops("gau", 1024, r["causal"])
        sdpa = benchrun.attention_flops("sdpa", 1024, r["causal"])
        assert r["gau_gflops_cpu"] == pytest.approx(gau / 2.0 / 1e9)
        assert r["rate_ratio"] == pytest.approx(gau / sdpa / 2.0)
        assert r["rate_ratio_fwd"] == pytest.approx(gau / sdpa)
        assert r["flop_ratio"] == pytest.approx(2 * gau / sdpa) and r["time_ratio"] == 4.0
    md = bench._attention_markdown(rows + bench._attention_rows(4096, "float32", {"error": "x"}))
    assert "| 1024 | bfloat16 | yes |" in md and "| 4096 | float32 | | x |" in md
    assert bench._attention_markdown([]) == ""
