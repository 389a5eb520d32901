"""Shared by the data-parallel ``flashcore train`` tests (torchrun/DDP and JAX sharding): a tiny
run's arguments, a tiny corpus, and the comparison of two run folders.

Why 1e-5 relative: data parallelism changes only the order of float32 sums (each worker's mean
loss and gradient over its rows, then the all-reduce across workers, vs one sum over the whole
batch), so the loss, gradients, AdamW moments and weights differ by float32 roundoff (~1e-7
relative per step) that AdamW's m / sqrt(v) carries forward without amplifying (the gradients here
are far above eps); five steps stay far below 1e-5. A wrong split (a row missed or counted twice,
a sum instead of a mean, a local instead of a global clipping norm) moves them by 1e-3 or more.
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from flashcore.app import runstate
from flashcore.conformance.tolerances import training_tolerance

RTOL, _ = training_tolerance("data_parallel", "loss")  # of the scale, every tensor

# global batch 4 over 2 workers; --eval-tokens 192 = 3 held-out windows: an uneven last batch
TINY = ["train", "--dim", "32", "--layers", "2", "--qk-dim", "16", "--chunk", "16",
        "--context", "64", "--batch", "4", "--eval-every", "0", "--eval-tokens", "192",
        "--log-every", "1", "--warmup", "2", "--quiet"]  # fmt: skip


def make_corpus(folder: Path) -> Path:
    """A few stdlib files (about 20 kB) as a training corpus -> ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    src = Path(sysconfig.get_paths()["stdlib"])
    for name in ("abc.py", "bisect.py", "colorsys.py", "keyword.py", "this.py", "copy.py"):
        (folder / name).write_bytes((src / name).read_bytes())
    return folder


def records(run: Path) -> tuple[dict[int, float], dict[int, float]]:
    """-> {step: training loss}, {step: held-out loss} from ``run/log.jsonl``."""
    losses, evals = {}, {}
    for line in (run / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            assert rec["step"] not in losses, f"{run}: step {rec['step']} logged twice"
            losses[rec["step"]] = rec["loss"]
        if "eval" in rec:
            evals[rec["step"]] = rec["eval"]["loss"]
    return losses, evals


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b| (0 when both are 0)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(float(np.abs(b).max(initial=0.0)), 1e-30)
    return float(np.abs(a - b).max(initial=0.0)) / scale


def compare_runs(got: Path, want: Path, steps: int) -> dict[str, float]:
    """The worst relative differences between two run folders (losses per step, held-out
    losses, weights, AdamW moments); asserts both have the same steps and tensors."""
    got_loss, got_eval = records(got)
    want_loss, want_eval = records(want)
    assert sorted(got_loss) == sorted(want_loss) == list(range(1, steps + 1)), (got_loss, want_loss)
    assert steps in got_eval and steps in want_eval, (got_eval, want_eval)
    worst = {
        "loss": max(_rel(got_loss[s], want_loss[s]) for s in want_loss),
        "eval": max(_rel(got_eval[s], want_eval[s]) for s in want_eval.keys() & got_eval.keys()),
    }
    got_ckpt, want_ckpt = runstate.latest(got), runstate.latest(want)
    for name in ("model", "train_state"):
        a = load_file(got_ckpt.path / f"{name}.safetensors")
        b = load_file(want_ckpt.path / f"{name}.safetensors")
        assert a.keys() == b.keys(), name
        worst[name] = max(_rel(a[k], b[k]) for k in b)
    state = load_file(got_ckpt.state)
    assert int(state["step"]) == steps
    assert want_loss[steps] < want_loss[1]  # it learns: a run that does nothing compares equal
    return worst


def _excess(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> float:
    """max |a - b| / (atol + rtol max |b|): at most 1 when within the bound."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    bound = atol + rtol * float(np.abs(b).max(initial=0.0))
    return float(np.abs(a - b).max(initial=0.0)) / max(bound, 1e-30)


def assert_runs_close(got: Path, want: Path, steps: int, kind: str) -> dict[str, float]:
    """Assert that two run folders agree within the TRAINING tolerance of ``kind``
    (``conformance/tolerances.py``): losses per step and held-out losses to its "loss" bound,
    every weight and AdamW moment tensor to its "params" bound (relative to the tensor's largest
    entry, plus absolute). Returns the worst of each as a fraction of its bound (<= 1)."""
    worst = compare_runs(got, want, steps)  # also checks steps, tensors and that it learns
    loss_rtol, loss_atol = training_tolerance(kind, "loss")
    rtol, atol = training_tolerance(kind, "params")
    got_loss, got_eval = records(got)
    want_loss, want_eval = records(want)
    out = {
        "loss": max(_excess(got_loss[s], want_loss[s], loss_rtol, loss_atol) for s in want_loss),
        "eval": _excess(got_eval[steps], want_eval[steps], loss_rtol, loss_atol),
    }
    got_ckpt, want_ckpt = runstate.latest(got), runstate.latest(want)
    for name in ("model", "train_state"):
        a = load_file(got_ckpt.path / f"{name}.safetensors")
        b = load_file(want_ckpt.path / f"{name}.safetensors")
        out[name] = max(_excess(a[k], b[k], rtol, atol) for k in b)
    assert max(out.values()) <= 1.0, (out, worst)
    return out
