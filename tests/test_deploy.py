"""Deployment exports (flashcore.deploy, ``flashcore export --format``): a FLASH LM and a GAU
layer exported as ONNX, StableHLO and SavedModel run at batches and lengths other than the traced
one (t = 1, a multiple of C, a remainder) and match the NumPy float64 spec and the framework
forward (torch, jax, tf) with the central float32 tolerance; the conformance adapters skip what
a format cannot express, with the reason; bad input gives a clear error and leaves nothing
behind; the serving snippet of docs/deployment.md runs and equals ``flashcore generate
--temperature 0``."""

from __future__ import annotations

import functools
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest

import flashcore as fc
from flashcore import deploy
from flashcore.app import export as app_export
from flashcore.conformance import golden
from flashcore.conformance.adapters import load_adapter
from flashcore.conformance.runner import compare, run_case
from flashcore.conformance.tolerances import tolerance

ROOT = Path(__file__).resolve().parents[1]
# the golden cases exported: a FLASH LM and a GAU layer, both with padding (a mask input)
CASES = {"lm": "lm-flash-untied-pad", "gau": "gau-causal-pad"}
FRAMEWORK = {"onnx": "torch", "stablehlo": "jax", "savedmodel": "tf"}
NEEDS = {"onnx": ("torch", "onnxruntime", "onnxscript"), "stablehlo": ("jax",),
         "savedmodel": ("jax", "tensorflow")}  # fmt: skip
FORMATS = [
    pytest.param(f, marks=pytest.mark.slow) if f != "stablehlo" else f for f in deploy.FORMATS
]  # an ONNX trace takes ~30 s, a SavedModel ~20 s; StableHLO ~5 s


def _needs(fmt: str) -> None:
    for module in NEEDS[fmt]:
        pytest.importorskip(module)


def _names(inputs: dict) -> tuple[str, ...]:
    return tuple(n for n in ("tokens", "x", *deploy.OPTIONAL_INPUTS) if n in inputs)


@functools.cache
def _exported(fmt: str, model: str) -> deploy.Exported:
    g = golden.load(CASES[model])
    params = {k: v.astype(np.float32) for k, v in g.params.items()}
    folder = Path(tempfile.mkdtemp(prefix=f"flashcore-test-{fmt}-")) / model
    deploy.export(fmt, params, g.config, folder, inputs=_names(g.inputs))
    return deploy.load(folder)


def _inputs(config, names, b: int, t: int, seed: int) -> dict:
    """Random inputs, the first row padded at its end."""
    out = deploy.example_inputs(config, names, b, t, "float64", seed)
    if "mask" in out and t > 1:
        out["mask"][0, -(t // 3 + 1) :] = False
    return out


def _assert_close(expected, got, what: str) -> None:
    err, worst = compare(expected, got, *tolerance("float32", "output"))
    assert err <= 1.0, f"{what}: {err:.3g} x the float32 tolerance at {worst}"


@pytest.mark.parametrize("model", sorted(CASES))
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_runs_at_other_lengths_and_matches_the_framework(fmt, model):
    _needs(fmt)
    framework, why = load_adapter(FRAMEWORK[fmt])
    if framework is None:
        pytest.skip(why)
    g = golden.load(CASES[model])
    exported = _exported(fmt, model)
    assert exported.inputs == _names(g.inputs)
    c = getattr(g.config, "block", g.config).chunk_size
    traced = deploy.trace_length(g.config)
    shapes = [(1, 1), (3, c), (2, 2 * c + 3), (1, traced + 5)]
    assert traced not in [t for _, t in shapes]
    for b, t in shapes:
        inputs = _inputs(g.config, exported.inputs, b, t, seed=b * 100 + t)
        got = exported(**inputs)
        spec = golden.spec_output(g.config, g.params, inputs)
        _assert_close(spec, got, f"{fmt} {model} (b={b}, t={t}) against the float64 spec")
        # what an adapter's run reads besides the inputs: a cotangent (layers), targets (LMs)
        loss_inputs = (
            {"cotangent": np.ones_like(spec)} if "x" in inputs else {"targets": inputs["tokens"]}
        )
        native = framework.output(g.config, g.params, inputs | loss_inputs, "float32")
        _assert_close(native, got, f"{fmt} {model} (b={b}, t={t}) against {FRAMEWORK[fmt]}")
    got = exported(**{n: g.inputs[n] for n in exported.inputs})
    _assert_close(g.output, got, f"{fmt} {model} on the golden case {g.name}")


def test_conformance_cli_passes_a_golden_case(capsys):
    """``flashcore conformance --backend stablehlo``: outputs and losses pass, gradients are
    reported as skipped with the reason."""
    _needs("stablehlo")
    from flashcore.app.conformance import main

    assert main(["--backend", "stablehlo", "--case", "gau-bidir-T%C", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"stablehlo\s+\S+\s+2 pass, skip 2", out), out
    assert "inference only" in out


@pytest.mark.parametrize("fmt", sorted(deploy.FORMATS))
@pytest.mark.parametrize(
    "case, why", [("dropout-lm-flash", "no dropout"), ("flash-causal-packed", "segment_ids")]
)
def test_cases_a_format_cannot_express_are_skipped_with_the_reason(fmt, case, why):
    adapter = load_adapter(fmt)[0] or _adapter_class(fmt)()
    checks = run_case(adapter, golden.load(case), "float32", fmt)
    assert {c.status for c in checks} == {"skip"}
    assert all(why in c.reason for c in checks), checks[0].reason


def test_a_format_that_cannot_express_a_model_says_why(tmp_path, capsys):
    """The SavedModel refuses the Laplace attention (its erf does not load in TensorFlow) before
    any work, naming the formats that take it; the conformance adapter skips those cases."""
    config = fc.FlashConfig(dim=8, kind="gau", qk_dim=4, max_len=16, attention="laplace")
    src = fc.io.save(tmp_path / "laplace.safetensors", fc.init(config, seed=0), config)
    code, err = _cli([src, tmp_path / "out", "--format", "savedmodel"], capsys)
    assert code == 2 and "cannot express this model: attention='laplace'" in err, err
    assert not (tmp_path / "out").exists()
    adapter = _adapter_class("savedmodel")()
    assert "laplace" in adapter.unsupported(golden.load("gau-causal-laplace").config, {})


def _adapter_class(fmt: str):
    from flashcore.conformance.adapters import export as ex

    return {"onnx": ex.OnnxAdapter, "stablehlo": ex.StableHLOAdapter,
            "savedmodel": ex.SavedModelAdapter}[fmt]  # fmt: skip


# -- bad input ------------------------------------------------------------------------------


@pytest.fixture
def weights(tmp_path):
    """A canonical weight file of a tiny GAU layer."""
    config = fc.FlashConfig(dim=8, kind="gau", qk_dim=4, max_len=16, causal=True)
    return fc.io.save(tmp_path / "gau.safetensors", fc.init(config, seed=0), config)


def _cli(argv, capsys) -> tuple[int, str]:
    code = app_export.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_an_unknown_format_is_an_error(weights, tmp_path, capsys):
    code, err = _cli([weights, tmp_path / "out", "--format", "tflite"], capsys)
    assert code == 2 and "unknown export format 'tflite'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gau.safetensors"]


def test_a_missing_extra_names_it(weights, tmp_path, capsys, monkeypatch):
    fake = deploy.Format("onnx", "no_such_module_xyz:write", "no_such_module_xyz:load",
                         "torch and onnxruntime", "export")  # fmt: skip
    monkeypatch.setitem(deploy.FORMATS, "onnx", fake)
    code, err = _cli([weights, tmp_path / "out", "--format", "onnx"], capsys)
    assert code == 2 and "pip install 'flashcore[export]'" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gau.safetensors"]


def test_a_failed_write_leaves_nothing(weights, tmp_path, capsys, monkeypatch):
    def half_written(params, config, folder, names, dtype, example):
        (folder / "model.onnx").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(deploy.Format, "function", lambda self, which: half_written)
    code, err = _cli([weights, tmp_path / "out", "--format", "onnx"], capsys)
    assert code == 2 and "disk full" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gau.safetensors"]


def test_an_existing_folder_needs_force(weights, tmp_path, capsys):
    _needs("stablehlo")
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    code, err = _cli([weights, dst, "--format", "stablehlo"], capsys)
    assert code == 2 and "exists; pass --force" in err
    assert (dst / "keep.txt").read_text() == "mine"
    code, err = _cli([weights, dst, "--format", "stablehlo", "--force", "--mask"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in dst.iterdir()) == [deploy.METADATA, "model.stablehlo"]
    assert deploy.load(dst).inputs == ("x", "mask")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_folder_without_metadata_is_not_an_export(tmp_path):
    with pytest.raises(deploy.ExportError, match="not a flashcore export"):
        deploy.load(tmp_path)


# -- the docs page ---------------------------------------------------------------------------


def _serving_block() -> str:
    text = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```python\n(.*?)```", text, re.S)
    return block


@pytest.mark.slow
def test_the_docs_serving_snippet_equals_greedy_generate(tmp_path, capsys, monkeypatch):
    _needs("onnx")
    config = fc.LMConfig(
        block=fc.FlashConfig(dim=16, chunk_size=4, qk_dim=8, causal=True),
        vocab_size=256,
        num_layers=1,
    )
    run = fc.io.save(tmp_path / "model.safetensors", fc.init(config, seed=3), config)
    monkeypatch.chdir(tmp_path)
    code, err = _cli([run, "lm-onnx", "--format", "onnx"], capsys)
    assert code == 0, err
    scope: dict = {}
    exec(compile(_serving_block(), "docs/deployment.md", "exec"), scope)
    capsys.readouterr()
    from flashcore.app.evaluate import generate_main

    argv = [str(run), "--prompt", "The ", "--max-new", "20", "--temperature", "0", "--json"]
    assert generate_main(argv) == 0
    generated = json.loads(capsys.readouterr().out)
    prompt = list(b"The ")
    assert scope["tokens"][: len(prompt)] == prompt
    assert scope["tokens"][len(prompt) :] == list(generated["new_tokens"])
