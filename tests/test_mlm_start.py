"""A masked-LM FLASH trained by ``flashcore train`` with default flags comes alive: its relu^2
attention learns to attend (the position-dependent part of that branch's output grows from its
start), and its masked-position loss falls below the unigram entropy of the masked bytes. The
paper's start (``--init paper``) fails this: its relu^2 attention stays dead (docs/init.md)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="flashcore train's default backend is torch")

import flashcore as fc  # noqa: E402
from flashcore import io, layers, ops  # noqa: E402
from flashcore.app import train  # noqa: E402
from flashcore.app.data import load_corpus, sample_batch  # noqa: E402
from flashcore.app.engine import load_engine  # noqa: E402
from flashcore.app.evaluate import evaluate  # noqa: E402
from flashcore.params import subtree  # noqa: E402

# small, and only the size flags given: the start, the objective's masking, the optimizer and the
# schedule are flashcore train's defaults
SMALL = [
    "--objective", "mlm", "--dim", "64", "--layers", "2", "--qk-dim", "32", "--chunk", "32",
    "--context", "128", "--batch", "8", "--steps", "150", "--eval-every", "0",
    "--eval-tokens", "8192", "--quiet",
]  # fmt: skip


def relu2_selective_rms(params: dict, config: fc.LMConfig, tokens: np.ndarray) -> list[float]:
    """Per layer, the RMS of the relu^2 branch's output relu(S)^2 V minus its mean over the
    queries of the chunk: what attention adds beyond an average of the chunk. 0 for a dead branch
    (all S <= 0) and for a uniform one; it grows when the attention learns where to look.
    tokens: (b, t) with t a multiple of the chunk size."""
    block = config.block
    b, t = tokens.shape
    c = block.chunk_size
    x = params["embed.weight"][tokens].astype(np.float64)
    out = []
    for i in range(config.num_layers):
        p = {k: v.astype(np.float64) for k, v in subtree(params, f"layers.{i}.").items()}
        _, v, (qq, qk, lq, lk) = layers.project(p, x, block, None, None, np)
        pos = np.arange(c)
        bias = ops.rel_bias(p["rel_bias.weight"], pos, pos, config=block, xp=np, like=v)
        quad = layers.attention_core_flash(  # the linear branch off: lin_q = 0
            qq, qk, np.zeros_like(lq), lk, v, bias=bias, config=block, xp=np
        ).reshape(b, t // c, c, -1)
        out.append(float(np.sqrt(np.mean((quad - quad.mean(axis=2, keepdims=True)) ** 2))))
        x = fc.flash(p, x, config=block, xp=np)
    return out


def unigram_entropy(data: np.ndarray) -> float:
    """Entropy (nats) of the byte distribution of ``data``: the masked-position loss of the best
    prediction that ignores the context (masked positions are drawn uniformly)."""
    p = np.bincount(data, minlength=256) / len(data)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def train_small(tmp_path, *extra: str) -> dict:
    """Train SMALL (+ extra flags) -> the start's and the end's relu^2 selective RMS, the held-out
    masked loss and the unigram entropy of the held-out bytes."""
    argv = [*SMALL, *extra, "--out", str(tmp_path / "run")]
    args = train.train_parser().parse_args(argv)
    config = train.build_config(args)
    start = train.initial_params(config, args)
    assert train.train_main(argv, announce=False) == 0
    end, saved = io.load(tmp_path / "run" / "model.safetensors")
    assert saved == config
    corpus = load_corpus(None)
    probe, _ = sample_batch(corpus.valid, 4, args.context, np.random.default_rng(0))
    engine = load_engine("torch")(config, end)
    try:
        ev = evaluate(engine, corpus.valid, context=args.context, batch=8, max_tokens=8192,
                      objective="mlm")  # fmt: skip
    finally:
        engine.close()
    return dict(
        start=relu2_selective_rms(start, config, probe),
        end=relu2_selective_rms(end, config, probe),
        loss=ev["loss"],
        unigram=unigram_entropy(corpus.valid),
    )


def test_a_masked_lm_flash_trains_from_the_default_start(tmp_path):
    """150 steps of flashcore train (about 7 s on 2 idle cores)."""
    r = train_small(tmp_path)
    grown = [e > 10 * s for s, e in zip(r["start"], r["end"])]
    assert all(grown), f"relu^2 attention did not come alive: {r['start']} -> {r['end']}"
    assert r["loss"] < r["unigram"], r


@pytest.mark.slow  # 150 training steps
def test_the_paper_start_fails_the_same_check(tmp_path):
    """The check above can fail: from --init paper the same run's relu^2 attention dies (every
    S <= 0 in both layers: exactly zero output), as in the quality experiment's masked LMs."""
    r = train_small(tmp_path, "--init", "paper")
    assert r["end"] == [0.0, 0.0], r
