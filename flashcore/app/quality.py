"""``flashcore quality``: the paper's claim at small scale, on this machine.

Trains FLASH, FLASH-Quad (GAU) and Transformer++ language models of (nearly) the same parameter
count on the embedded corpus, at each context length, under the same wall-clock budget, with the
same data order, batch, schedule and learning-rate sweep; reports the best of each. Writes:

    OUT/results.json        every evaluation (step, seconds, held-out loss) of every run
    OUT/table.md            final held-out bits per byte, and the wall time FLASH needed to reach
                            Transformer++'s final loss
    OUT/loss_vs_steps.png, OUT/loss_vs_seconds.png

    flashcore quality --contexts 1024 4096 --budget 600 --out runs/quality
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from ..config import FlashConfig, LMConfig, TransformerConfig
from ..params import init
from . import progress
from .data import VOCAB_SIZE, eval_batches, load_corpus, sample_batch
from .engine import OptimConfig, load_engine
from .schedule import lr_at

ARCHS = ("flash", "gau", "transformer")


def model_config(
    arch: str, *, dim: int, layers: int, context: int, chunk: int, qk: int
) -> LMConfig:
    """Same width; the Transformer++ gets half the layers (one block ~ two GAU layers, 12 d^2)."""
    if arch == "transformer":
        block = TransformerConfig(dim=dim, heads=max(1, dim // 64), causal=True)
        return LMConfig(block=block, vocab_size=VOCAB_SIZE, num_layers=max(1, layers // 2))
    block = FlashConfig(
        dim=dim, kind=arch, qk_dim=qk, chunk_size=chunk, causal=True, max_len=context,
        rel_bias="learned" if arch == "flash" else "t5",
    )  # fmt: skip
    return LMConfig(block=block, vocab_size=VOCAB_SIZE, num_layers=layers)


def held_out(engine, data, context, batch, tokens) -> float:
    total = count = 0
    for x, y in eval_batches(data, batch, context, tokens):
        s, n = engine.eval_loss(x, y)
        total, count = total + s, count + n
    return total / count


def run_one(arch, lr, args, context, corpus) -> dict:
    cfg = model_config(
        arch, dim=args.dim, layers=args.layers, context=context, chunk=args.chunk, qk=args.qk_dim
    )
    params = init(cfg, seed=args.seed)
    engine = load_engine(args.backend)(
        cfg, params, dtype="bfloat16" if args.bf16 else "float32", optim=OptimConfig()
    )
    rng = np.random.default_rng(args.seed)  # the same batches for every model
    batch = max(1, args.tokens_per_step // context)
    curve, step, spent = [], 0, 0.0
    est_steps = args.max_steps
    pb = progress.bar(
        args.budget, desc=f"{arch} lr {lr:g} ctx {context}", quiet=args.quiet, unit="s"
    )
    while spent < args.budget and step < args.max_steps:
        step += 1
        x, y = sample_batch(corpus.train, batch, context, rng)
        t0 = time.perf_counter()
        engine.train_step(
            x,
            y,
            lr_at(
                step, lr=lr, warmup=args.warmup, steps=est_steps, schedule="constant", min_ratio=1.0
            ),
        )
        dt = time.perf_counter() - t0
        spent += dt
        pb.update(min(dt, max(0.0, args.budget - pb.n)))
        if step % args.eval_every == 0 or spent >= args.budget:
            loss = held_out(engine, corpus.valid, context, batch, args.eval_tokens)
            curve.append({"step": step, "seconds": spent, "loss": loss, "bpb": loss / math.log(2)})
            progress.note(
                f"  {arch:<11} lr {lr:g} ctx {context}: step {step:>5} {spent:7.1f}s "
                f"bpb {curve[-1]['bpb']:.4f}",
                file=sys.stdout,
            )
    pb.close()
    n_params = sum(v.size for v in params.values())
    return {
        "arch": arch,
        "lr": lr,
        "context": context,
        "params": int(n_params),
        "batch": batch,
        "curve": curve,
    }


def time_to_reach(curve: list[dict], target: float) -> float | None:
    """Seconds at which a curve first reaches ``target`` loss (linear between evaluations)."""
    prev = None
    for pt in curve:
        if pt["loss"] <= target:
            if prev is None:
                return pt["seconds"]
            f = (prev["loss"] - target) / max(prev["loss"] - pt["loss"], 1e-12)
            return prev["seconds"] + f * (pt["seconds"] - prev["seconds"])
        prev = pt
    return None


def loss_at_step(curve: list[dict], step: int) -> float | None:
    pts = [p for p in curve if p["step"] <= step]
    return pts[-1]["loss"] if pts else None


def summarize(results: list[dict], contexts: list[int]) -> str:
    lines = [
        "| context | model | parameters | steps | final bits/byte | at Transformer++'s steps |",
        "|---|---|---|---|---|---|",
    ]
    notes = []
    for ctx in contexts:
        best = {}
        for r in results:
            if r["context"] == ctx and r["curve"]:
                if (
                    r["arch"] not in best
                    or r["curve"][-1]["loss"] < best[r["arch"]]["curve"][-1]["loss"]
                ):
                    best[r["arch"]] = r
        tpp = best.get("transformer")
        for arch in ARCHS:
            if arch not in best:
                continue
            r = best[arch]
            at = loss_at_step(r["curve"], tpp["curve"][-1]["step"]) if tpp else None
            at_s = f"{at / math.log(2):.4f}" if at is not None else "-"
            lines.append(
                f"| {ctx} | {arch} (lr {r['lr']:g}) | {r['params']:,} | {r['curve'][-1]['step']} | "
                f"{r['curve'][-1]['bpb']:.4f} | {at_s} |"
            )
        if tpp and "flash" in best:
            target = tpp["curve"][-1]["loss"]
            t = time_to_reach(best["flash"]["curve"], target)
            total = tpp["curve"][-1]["seconds"]
            if t is None:
                notes.append(
                    f"- context {ctx}: FLASH did not reach Transformer++'s final loss ({target / math.log(2):.4f} bits/byte) within the budget."
                )
            else:
                notes.append(
                    f"- context {ctx}: FLASH reached Transformer++'s final loss ({target / math.log(2):.4f} bits/byte) "
                    f"after {t:.0f} s of training, {t / total:.2f}x the {total:.0f} s Transformer++ used."
                )
            same_step = loss_at_step(best["flash"]["curve"], tpp["curve"][-1]["step"])
            if same_step is not None:
                gap = (same_step - target) / target * 100
                notes.append(
                    f"- context {ctx}: at Transformer++'s final step count, FLASH's held-out loss is {gap:+.1f}% of Transformer++'s."
                )
    return "\n".join(lines + [""] + notes)


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for xkey, fname in (("step", "loss_vs_steps.png"), ("seconds", "loss_vs_seconds.png")):
        contexts = sorted({r["context"] for r in results})
        fig, axes = plt.subplots(1, len(contexts), figsize=(6 * len(contexts), 4), squeeze=False)
        for ax, ctx in zip(axes[0], contexts):
            for r in results:
                if r["context"] == ctx and r["curve"]:
                    ax.plot(
                        [p[xkey] for p in r["curve"]],
                        [p["bpb"] for p in r["curve"]],
                        marker="o",
                        markersize=3,
                        label=f"{r['arch']} lr {r['lr']:g}",
                    )
            ax.set_title(f"context {ctx}")
            ax.set_xlabel(xkey)
            ax.set_ylabel("held-out bits per byte")
            ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=90)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="flashcore quality", description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    ap.add_argument("--budget", type=float, default=300.0, help="training seconds per run")
    ap.add_argument("--max-steps", type=int, default=100_000)
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-3])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--qk-dim", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--tokens-per-step", type=int, default=8192)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/quality"))
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    corpus = load_corpus(None)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for ctx in args.contexts:
        for arch in args.archs:
            for lr in args.lrs:
                results.append(run_one(arch, lr, args, ctx, corpus))
                (args.out / "results.json").write_text(
                    json.dumps(
                        {"args": {k: str(v) for k, v in vars(args).items()}, "runs": results},
                        indent=1,
                    )
                )
    table = summarize(results, args.contexts)
    (args.out / "table.md").write_text(table + "\n")
    plot(results, args.out)
    print(table)
    print(f"\nwrote {args.out}/table.md, results.json, loss_vs_steps.png, loss_vs_seconds.png")
    return 0
