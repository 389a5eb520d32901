"""``python -m flashcore.app.prefill_bench`` at a tiny size (the 1M-token figure of
docs/decoding.md is the same command at full size): the report's fields, each run measured in its
own child process, and bad options refused."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch", reason="the benchmark's default backend is torch")

from flashcore.app import prefill_bench  # noqa: E402

TINY = ["--tokens", "4K", "--piece", "1K", "--full-tokens", "2K", "--dim", "32", "--chunk", "64",
        "--layers", "2"]  # fmt: skip


def test_the_report_at_a_tiny_size(capsys):
    assert prefill_bench.main([*TINY, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "torch" and report["piece"] == 1024
    assert report["model"] == {"dim": 32, "layers": 2, "chunk": 64, "vocab": 256,
                               "qk_dim": 128, "expanded_dim": 64}  # fmt: skip
    assert report["machine"]["cpu"] and report["machine"]["cores"] >= 1
    pre, full = report["prefill"], report["full"]
    assert pre["mode"] == "prefill" and pre["tokens"] == 4096
    assert pre["logits_shape"] == [1, 256]  # the last position's only
    assert full["mode"] == "full" and full["tokens"] == 2048
    assert full["logits_shape"] == [1, 2048, 256]
    for r in (pre, full):
        assert r["finite"] and r["seconds"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["seconds"])
        assert r["peak_rss"] >= r["base_rss"] > 2**20  # bytes, a whole interpreter's


def test_the_table_and_a_skipped_full_forward(capsys):
    argv = ["--tokens", "1K", "--piece", "512", "--full-tokens", "0", "--dim", "16", "--chunk",
            "64", "--layers", "1"]  # fmt: skip
    assert prefill_bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "| streamed prefill, piece 512 | 1,024 |" in out and "full forward" not in out


@pytest.mark.parametrize("backend", ["torch", "jax", "tf"])
def test_decoding_latency_after_two_prompt_lengths(capsys, backend):
    pytest.importorskip({"torch": "torch", "jax": "jax", "tf": "tensorflow"}[backend],
                        reason=f"{backend} is not installed")  # fmt: skip
    argv = ["--backend", backend, "--tokens", "128", "--piece", "128", "--full-tokens", "0",
            "--dim", "16", "--chunk", "64", "--qk-dim", "16", "--layers", "1",
            "--decode-after", "128,256", "--decode-steps", "3", "--json"]  # fmt: skip
    assert prefill_bench.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    first, second = report["decode"]
    assert (first["tokens"], second["tokens"]) == (128, 256)
    for r in report["decode"]:
        assert r["mode"] == "decode" and r["steps"] == 3 and len(r["ms_all"]) == 3 and r["finite"]
        assert r["ms_per_token"] == pytest.approx(sorted(r["ms_all"])[1])
    assert report["decode_latency_ratio"] == pytest.approx(
        second["ms_per_token"] / first["ms_per_token"]
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--piece", "1000"], "must be a multiple of --chunk"),
        (["--tokens", "1K", "--piece", "2K"], "at least one piece"),
        (["--tokens", "lots"], "integers, nK or nM"),
        (["--piece", "1K", "--decode-after", "512"], "at least one piece"),
        (["--backend", "mxnet"], "invalid choice"),
    ],
)
def test_bad_options_are_refused(capsys, argv, message):
    with pytest.raises(SystemExit):
        prefill_bench.main(argv)
    assert message in capsys.readouterr().err
