"""``flashcore generate`` end to end on FLASH, GAU and Transformer++ runs trained in every backend:
the prompt kept verbatim, the requested number of new tokens, a seed reproducing its text, greedy
tokens equal to the argmax of full forwards (the spec's, in float64), and ``--top-p`` reaching the
sampler (a tiny nucleus is greedy) or refused when outside (0, 1].

Each arch trains one tiny run (2 steps, torch engine), shared by the module; every backend
generates from it (a run folder is the same canonical files whichever engine trained it, and
moving a run between engines is tests/test_engines.py's job; training in JAX / TF here would cost
their compilation, ~10-20 s a run). The GAU run has one layer, so that its decoder is the
key/value cache (an LM of several GAU layers dividing by the growing length reruns the forward
per token: flashcore.decode.decode_method).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from _data_parallel import make_corpus

import flashcore as fc
from flashcore import io
from flashcore.app import cli, evaluate, train
from flashcore.app.engine import BACKENDS
from flashcore.conformance.tolerances import tolerance

RTOL, ATOL = tolerance("float32", "output")  # the engines decode in float32

PROMPT = "def f(x):"
NEW = 8

# arch -> (its train options, the decoder flashcore generate must take)
ARCHS = {
    "flash": (["--layers", "2", "--qk-dim", "8", "--chunk", "8"], "state"),
    "gau": (["--layers", "1", "--qk-dim", "8", "--chunk", "8"], "cache"),
    "transformer": (["--layers", "2", "--heads", "2"], "cache"),
}
TINY = ["--dim", "16", "--context", "32", "--batch", "2", "--steps", "2", "--warmup", "1",
        "--eval-every", "0", "--eval-tokens", "64", "--lr", "1e-2", "--quiet"]  # fmt: skip


def _installed(backend: str) -> bool:
    return importlib.util.find_spec("tensorflow" if backend == "tf" else backend) is not None


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """run(arch) -> the folder of a tiny run of that arch (trained once, torch engine)."""
    corpus = make_corpus(tmp_path_factory.mktemp("corpus"))
    made: dict[str, Path] = {}

    def run(arch: str) -> Path:
        if arch not in made:
            out = tmp_path_factory.mktemp(arch) / "run"
            args = ["--arch", arch, *ARCHS[arch][0], *TINY, "--backend", "torch"]
            assert train.train_main([*args, "--data", str(corpus), "--out", str(out)]) == 0
            made[arch] = out
        return made[arch]

    return run


def _generate(capsys, run: Path, backend: str, *opts: str, as_json: bool = True):
    capsys.readouterr()
    argv = ["generate", str(run), "--prompt", PROMPT, "--max-new", str(NEW), "--backend", backend]
    assert cli.main([*argv, *opts, *(["--json"] if as_json else [])]) == 0
    out = capsys.readouterr().out
    return json.loads(out) if as_json else out


def _check_greedy(run: Path, tokens: list[int]) -> None:
    """Every new token is the argmax of a full forward (spec, float64) over the tokens before it,
    up to float32 near-ties (then the run's choice is followed)."""
    params, config = io.load(evaluate.resolve_model(run))
    params = {k: v.astype(np.float64) for k, v in params.items()}
    seq = np.asarray(tokens, np.int64)
    n = len(PROMPT.encode())
    for t in range(n, len(seq)):
        logits = fc.lm_logits(params, seq[None, :t], config=config)[0, -1]  # (v,)
        slack = ATOL * np.abs(logits).max() + RTOL * abs(logits.max())
        assert logits[seq[t]] >= logits.max() - 2 * slack, (t, int(seq[t]), int(logits.argmax()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_generate_on_a_trained_run(runs, capsys, arch, backend):
    for name in {"torch", backend}:  # torch trains the run
        if not _installed(name):
            pytest.skip(f"{name} is not installed")
    run = runs(arch)
    greedy = _generate(capsys, run, backend, "--temperature", "0")
    assert greedy["backend"] == backend and greedy["decoder"] == ARCHS[arch][1]
    assert greedy["prompt_tokens"] == list(PROMPT.encode())  # verbatim
    assert len(greedy["new_tokens"]) == NEW and all(0 <= t < 256 for t in greedy["new_tokens"])
    tokens = greedy["prompt_tokens"] + greedy["new_tokens"]
    assert greedy["text"] == bytes(tokens).decode("utf-8", errors="replace")
    assert greedy["text"].startswith(PROMPT)
    _check_greedy(run, tokens)

    sample = ("--temperature", "1.5", "--top-k", "200", "--top-p", "0.95", "--seed", "7")
    a = _generate(capsys, run, backend, *sample)
    assert len(a["new_tokens"]) == NEW and a["prompt_tokens"] == greedy["prompt_tokens"]
    text = _generate(capsys, run, backend, *sample, as_json=False)  # the same seed, as text
    assert text == a["text"] + "\n" and text.startswith(PROMPT)
    assert a["new_tokens"] != greedy["new_tokens"]  # it samples (8 draws at temperature 1.5)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_top_p_reaches_the_sampler(runs, capsys, arch):
    """A nucleus smaller than any probability keeps the likeliest token only: greedy. (Each
    engine's own top_p: tests/test_engines.py.)"""
    if not _installed("torch"):
        pytest.skip("torch is not installed (it trains the run and generates here)")
    run = runs(arch)
    greedy = _generate(capsys, run, "torch", "--temperature", "0")
    tiny = _generate(capsys, run, "torch", "--temperature", "1", "--top-p", "1e-9", "--seed", "3")
    assert tiny["new_tokens"] == greedy["new_tokens"]
    wide = _generate(capsys, run, "torch", "--temperature", "1", "--top-p", "1", "--seed", "3")
    assert wide["new_tokens"] != greedy["new_tokens"]  # P = 1 keeps every token


@pytest.mark.parametrize("bad", ["0", "-0.5", "1.5", "nan", "x"])
def test_top_p_outside_the_unit_interval_is_refused(capsys, bad):
    with pytest.raises(SystemExit):
        evaluate.generate_main(["nowhere", "--prompt", "a", "--top-p", bad])
    err = capsys.readouterr().err
    assert "--top-p" in err and ("must be in (0, 1]" in err or "not a number" in err), err
