"""``python -m flashcore.app.benchprofile``: the wall-time sharing among concurrent spans, the
optimized-HLO reader (categories and dot FLOPs), and one profiled bench step per backend."""

import os
import re

import numpy as np
import pytest

from flashcore.app import benchprofile


def test_attribute_shares_overlap_evenly_and_counts_idle():
    spans = [("a", 0.0, 4.0), ("b", 2.0, 6.0), ("c", 8.0, 9.0)]
    got, running = benchprofile.attribute(spans)
    assert got == pytest.approx({"a": 3.0, "b": 3.0, "c": 1.0})
    assert running == pytest.approx({1: 5.0, 2: 2.0, 0: 2.0})
    assert sum(got.values()) == pytest.approx(9.0 - running[0])


def test_hlo_ops_categories_and_dot_flops():
    jax = pytest.importorskip("jax", reason="the HLO reader is checked on a jax program")
    jnp = jax.numpy

    def f(a, b, c):  # a dot, a reduction, and elementwise work
        return jnp.tanh(a @ b), jnp.sum(c * c, axis=0)

    a = np.ones((64, 32), np.float32)
    b = np.ones((32, 48), np.float32)
    c = np.ones((128, 16), np.float32)
    text = jax.jit(f).lower(a, b, c).compile().as_text()
    ops = benchprofile.hlo_ops(text)
    dots = [op for op in ops.values() if op["category"] == "matmul"]
    assert [op["flop"] for op in dots] == [2.0 * 64 * 48 * 32]
    assert any(op["category"] == "reduce" for op in ops.values())


def _shares(text: str) -> dict[str, float]:
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^\| ([a-z /]+) \| [\d.]+ \| ([\d.]+)% \|$", text, re.M)
    }


@pytest.mark.parametrize("backend", ["torch", "jax", "tf"])
def test_one_profiled_step(backend, tmp_path, capsys):
    module = {"tf": "tensorflow"}.get(backend, backend)
    pytest.importorskip(module, reason=f"the {backend} bench step needs {module}")
    out = tmp_path / "profile.md"
    argv = ["--backend", backend, "--length", "256", "--top", "5", "--out", str(out)]
    assert benchprofile.main(argv) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out
    shares = _shares(text)
    assert set(shares) == set(benchprofile.CATEGORIES)
    assert sum(shares.values()) == pytest.approx(100.0, abs=0.5)
    assert shares["matmul"] > 20  # the step is mostly matmuls at any length
    assert len(re.findall(r"^\| \S.* \| (matmul|reduce|elementwise)", text, re.M)) == 5


def test_compare_xla_options_times_both_programs_in_pairs(tmp_path, capsys):
    pytest.importorskip("jax", reason="the XLA options are jax's")
    out = tmp_path / "ab.txt"
    argv = ["--backend", "jax", "--length", "256", "--compare-xla-options", "3", "--out", str(out)]
    assert benchprofile.main(argv) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out
    ratios = re.search(r"per pair \[(.*)\]", text).group(1).split(", ")
    assert len(ratios) == 3 and all(float(r) > 0 for r in ratios)
    from flashcore.jax import compiler_options

    assert str(compiler_options() or "none") in text


def test_compare_xla_options_is_for_jax_only():
    with pytest.raises(SystemExit):
        benchprofile.main(["--backend", "torch", "--compare-xla-options", "2"])


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "tf"])
def test_compare_dots_times_float32_and_both_bf16_paths_in_one_run(
    backend, tmp_path, capsys, monkeypatch
):
    pytest.importorskip({"tf": "tensorflow"}.get(backend, backend))
    from flashcore.dotpath import ENV

    monkeypatch.setenv(ENV, "auto")
    out = tmp_path / "dots.md"
    argv = ["--backend", backend, "--length", "256", "--compare-dots", "2", "--out", str(out)]
    assert benchprofile.main(argv) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out
    rows = re.findall(
        r"^\| (float32|bfloat16|bfloat16 \(f32 dots\)) \| ([\d.]+) \| ([\d.]+) \|", text, re.M
    )
    assert [r[0] for r in rows] == ["float32", "bfloat16", "bfloat16 (f32 dots)"]
    assert float(rows[0][2]) == 1.0 and all(float(r[1]) > 0 for r in rows)
    assert os.environ[ENV] == "auto"  # the user's setting is back


def test_compare_dots_is_for_the_xla_backends():
    with pytest.raises(SystemExit):
        benchprofile.main(["--backend", "torch", "--compare-dots", "2"])
