"""Which start trains relu^2 attention: small FLASH / FLASH-Quad / Transformer++ LMs, causal and
masked, from several starts, with the training loop of ``flashcore train`` (torch engine, AdamW,
warmup + cosine, the same batches and masks) and a probe of the relu^2 attention every few steps.

    OMP_NUM_THREADS=1 python docs/init/study.py run --seed 0 --out docs/init/runs-seed0.json
    python docs/init/study.py report docs/init/runs-seed*.json   # docs/init/table.md, curves.png
    python docs/init/study.py first-gradient   # the paper start's gradient at step 0
    python docs/init/study.py first-gradient --quality --seeds 1 --archs flash

Starts (the FLASH / GAU weights they change; everything else is ``flashcore.init``'s):

- ``paper``: gamma ~ N(0, 0.02^2), beta = 0, relative-bias weights 0 (``FlashConfig.init="paper"``).
- ``uniform``: relative-bias weights n^-1/2 (n: the keys a query sees at most, C for FLASH, the
  context for FLASH-Quad), so that every relu^2 row starts as a uniform average of mass 1
  (``FlashConfig.init="uniform"``, the default).
- ``bias0.05``: relative-bias weights 0.05 (``flashcore train --rel-bias-init 0.05``).
- ``randbias``: relative-bias weights ~ N(0, 0.02^2).
- ``gamma1``: gamma ~ N(1, 0.02^2) (the scale-offset starting as the identity).

The probe (NumPy float64, the spec's own ``project``) reports per layer the relu^2
pre-activations S = Q K^T / n + B over the allowed pairs (mean, fraction > 0) and the RMS of the
relu^2 branch's output relu(S)^2 V.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch  # noqa: F401  (torch before anything that may import TensorFlow)

import flashcore as fc
from flashcore import layers, mlm, ops
from flashcore.app.data import load_corpus, sample_batch
from flashcore.app.engine import OptimConfig, load_engine
from flashcore.app.evaluate import evaluate
from flashcore.app.schedule import lr_at
from flashcore.params import subtree

HERE = Path(__file__).resolve().parent
STARTS = ("paper", "uniform", "bias0.05", "randbias", "gamma1")
ARCHS = ("flash", "gau", "transformer")
SIZE = dict(dim=128, layers=2, qk_dim=64, chunk=64, context=256, batch=8, heads=4)
TRAIN = dict(steps=400, lr=3e-3, warmup=30, schedule="cosine", min_ratio=0.1)
PROBE_EVERY = 20
LABELS = {"uniform": "uniform (the default)"}


def lm_config(arch: str, objective: str, start: str) -> fc.LMConfig:
    """The study's LM (the shape ``flashcore train`` builds from SIZE)."""
    causal = objective == "clm"
    if arch == "transformer":
        block = fc.TransformerConfig(dim=SIZE["dim"], heads=SIZE["heads"], causal=causal)
    else:
        block = fc.FlashConfig(
            dim=SIZE["dim"], kind=arch, expansion=2.0, qk_dim=SIZE["qk_dim"],
            chunk_size=SIZE["chunk"], causal=causal, max_len=SIZE["context"],
            rel_bias="learned" if arch == "flash" else "t5",
            init="uniform" if start == "uniform" else "paper",
        )  # fmt: skip
    vocab = mlm.BYTE_MLM_VOCAB if objective == "mlm" else 256
    return fc.LMConfig(block=block, vocab_size=vocab, num_layers=SIZE["layers"])


def start_params(config: fc.LMConfig, start: str, seed: int) -> dict:
    """flashcore.init's weights with ``start``'s changes."""
    params = fc.init(config, seed=seed)
    if isinstance(config.block, fc.TransformerConfig):
        return params
    rng = np.random.default_rng([seed, 7])
    for name, value in params.items():
        if name.endswith("rel_bias.weight") and start == "bias0.05":
            params[name] = np.full_like(value, 0.05)
        if name.endswith("rel_bias.weight") and start == "randbias":
            params[name] = rng.normal(0.0, 0.02, value.shape).astype(value.dtype)
        if name.endswith("qk.gamma") and start == "gamma1":
            params[name] = (value + 1.0).astype(value.dtype)
    return params


def probe(params: dict, config: fc.LMConfig, tokens: np.ndarray) -> list[dict]:
    """Per FLASH / GAU layer: the relu^2 pre-activations and the branch's output (see above)."""
    block = config.block
    if isinstance(block, fc.TransformerConfig):
        return []
    b, t = tokens.shape
    x = params["embed.weight"][tokens].astype(np.float64)
    out = []
    for i in range(config.num_layers):
        p = {k: v.astype(np.float64) for k, v in subtree(params, f"layers.{i}.").items()}
        _, v, heads = layers.project(p, x, block, None, None, np)
        n = block.chunk_size if block.kind == "flash" else t
        q, k = (h.reshape(b, t // n, n, -1) for h in heads[:2])  # (b, g, n, s)
        v = v.reshape(b, t // n, n, -1)
        pos = np.arange(n)
        bias = ops.rel_bias(p.get("rel_bias.weight"), pos, pos, config=block, xp=np, like=q)
        s = layers.scores_to_logits(q @ np.swapaxes(k, -1, -2), bias, 1.0 / n, block)
        allowed = np.tril(np.ones((n, n), bool)) if block.causal else np.ones((n, n), bool)
        a = np.where(allowed, ops.attend(s, None, kind="relu2", length=n, xp=np), 0.0)
        branch = a @ v  # (b, g, n, e)
        sa = s[..., allowed]
        w = p.get("rel_bias.weight")
        out.append(
            dict(
                s_mean=float(sa.mean()),
                s_std=float(sa.std()),
                frac_pos=float((sa > 0).mean()),
                relu2_rms=float(np.sqrt(np.mean(branch**2))),
                bias_max=float(w.max()),
                bias_mean=float(w.mean()),
                gamma_qk=float(np.abs(p["qk.gamma"][:2]).mean()),
            )
        )
        x = fc.block_fn(block)(p, x, config=block, xp=np)
    return out


def unigram_entropy(data: np.ndarray, vocab: int = 256) -> float:
    """H of the byte distribution of ``data``, nats (the loss of the best context-free guess)."""
    p = np.bincount(data, minlength=vocab) / len(data)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def run_one(arch: str, objective: str, start: str, seed: int, corpus) -> dict:
    config = lm_config(arch, objective, start)
    params = start_params(config, start, seed)
    engine = load_engine("torch")(config, params, optim=OptimConfig(), seed=seed)
    rng = np.random.default_rng(seed)
    probe_tokens, _ = sample_batch(corpus.valid, 4, SIZE["context"], np.random.default_rng(99))
    if objective == "mlm":
        probe_tokens, _, _ = mlm.mask_tokens(probe_tokens, np.random.default_rng(98))
    curve, probes, t0 = [], [], time.perf_counter()
    sched = {k: TRAIN[k] for k in ("lr", "warmup", "steps", "schedule")}
    for step in range(1, TRAIN["steps"] + 1):
        if (step - 1) % PROBE_EVERY == 0:
            probes.append(dict(step=step - 1, layers=probe(engine.params(), config, probe_tokens)))
        x, y = sample_batch(corpus.train, SIZE["batch"], SIZE["context"], rng)
        count = None
        if objective == "mlm":
            x, y, count = mlm.mask_tokens(x, rng)
        loss = engine.train_step(x, y, lr_at(step, **sched, min_ratio=TRAIN["min_ratio"]), count)
        if not math.isfinite(loss):
            break
        curve.append(loss)
    probes.append(dict(step=TRAIN["steps"], layers=probe(engine.params(), config, probe_tokens)))
    ev = evaluate(
        engine, corpus.valid, context=SIZE["context"], batch=SIZE["batch"], max_tokens=32768,
        objective=objective,
    )  # fmt: skip
    engine.close()
    return dict(
        arch=arch, objective=objective, start=start, seed=seed, curve=curve, probes=probes,
        eval_loss=ev["loss"], eval_bpb=ev["bits_per_byte"], seconds=time.perf_counter() - t0,
    )  # fmt: skip


def cmd_first_gradient(args) -> int:
    """The paper start's gradient at step 0 (float64 autograd through the spec), per layer: the
    sum over the relative-bias weights (> 0: the first AdamW step moves the bias down) and the
    largest |gradient| of the bias, of beta and gamma's q, k rows (FLASH: quad_q, quad_k) and of
    the hidden projection."""
    corpus = load_corpus(None)
    if args.quality:  # the model of flashcore quality's clm-1024 / mlm-1024 (its seed 0 batch)
        SIZE.update(dim=256, layers=4, chunk=256, context=1024)
    for objective in args.objectives.split(","):
        for arch in args.archs.split(","):
            down = total = 0
            for seed in range(args.seeds):
                config = lm_config(arch, objective, "paper")
                params = {
                    k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
                    for k, v in fc.init(config, seed=seed).items()
                }
                rng = np.random.default_rng(seed)  # the run's first batch and masks
                x, y = sample_batch(corpus.train, SIZE["batch"], SIZE["context"], rng)
                keep = None
                if objective == "mlm":
                    x, y, keep = mlm.mask_tokens(x, rng)
                    keep = torch.tensor(keep)
                loss = fc.lm_loss(
                    params, torch.tensor(x), torch.tensor(y), config=config, loss_mask=keep
                )
                loss.backward()
                cells = []
                for i in range(config.num_layers):
                    g = {k: params[f"layers.{i}.{k}"].grad for k in (
                        "rel_bias.weight", "qk.beta", "qk.gamma", "hidden.kernel")}  # fmt: skip
                    s = float(g["rel_bias.weight"].sum())
                    down, total = down + (s > 0), total + 1
                    cells.append(
                        f"L{i} sum {s:+.1e} max|g| bias {float(g['rel_bias.weight'].abs().max()):.0e}"
                        f" beta {float(g['qk.beta'][:2].abs().max()):.0e}"  # quad_q, quad_k
                        f" gamma {float(g['qk.gamma'][:2].abs().max()):.0e}"
                        f" hidden {float(g['hidden.kernel'].abs().max()):.0e}"
                    )
                print(f"{objective} {arch:5s} seed {seed}: " + " | ".join(cells), flush=True)
            print(
                f"{objective} {arch}: the first step moves the bias down in {down} of {total} layers"
            )
    return 0


def cmd_run(args) -> int:
    corpus = load_corpus(None)
    out = Path(args.out)
    done = json.loads(out.read_text()) if out.exists() else {"runs": []}
    done["unigram_nats"] = unigram_entropy(corpus.valid)
    done.update(size=SIZE, train=TRAIN)
    have = {(r["arch"], r["objective"], r["start"], r["seed"]) for r in done["runs"]}
    for objective in args.objectives.split(","):
        for arch in args.archs.split(","):
            for start in args.starts.split(",") if arch != "transformer" else ["paper"]:
                if (arch, objective, start, args.seed) in have:
                    continue
                r = run_one(arch, objective, start, args.seed, corpus)
                done["runs"].append(r)
                out.write_text(json.dumps(done))
                last = r["probes"][-1]["layers"]
                print(
                    f"{objective} {arch:11s} {start:9s} seed {args.seed}: eval {r['eval_loss']:.3f} "
                    f"nats ({r['eval_bpb']:.3f} bpb), relu2 rms "
                    f"{[round(ly['relu2_rms'], 4) for ly in last]}, {r['seconds']:.0f} s",
                    flush=True,
                )
    return 0


def _alive(run: dict) -> str:
    """'k/L': layers whose relu^2 branch is alive at the end (some S > 0, so its output and
    gradient are not exactly 0)."""
    last = run["probes"][-1]["layers"]
    return f"{sum(ly['relu2_rms'] > 0 for ly in last)}/{len(last)}" if last else "-"


NAMES = {"flash": "FLASH", "gau": "FLASH-Quad", "transformer": "Transformer++"}


def _tables(runs: list[dict], meta: dict) -> list[str]:
    """The summary (mean over seeds), every run, and the paper start's probes over time."""
    key = lambda r: (r["objective"], ARCHS.index(r["arch"]), STARTS.index(r["start"]), r["seed"])  # noqa: E731
    runs = sorted(runs, key=key)
    lines = [
        f"Unigram entropy of the held-out bytes (the masked LM's best context-free loss): "
        f"{meta['unigram_nats']:.3f} nats.",
        "",
        "| objective | model | start | seeds | held-out loss (nats), mean | each seed | "
        "relu² layers alive at the end |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["objective"], r["arch"], r["start"]), []).append(r)
    for (objective, arch, start), rs in groups.items():
        losses = [r["eval_loss"] for r in rs]
        lines.append(
            f"| {objective} | {NAMES[arch]} | {start if arch != 'transformer' else '-'} | "
            f"{len(rs)} | {np.mean(losses):.3f} | {', '.join(f'{x:.3f}' for x in losses)} | "
            f"{', '.join(_alive(r) for r in rs)} |"
        )
    lines += [
        "",
        "Every run at its end: the fraction of relu² pre-activations S > 0 and the RMS of the "
        "relu² branch's output relu(S)² V, per layer.",
        "",
        "| objective | model | start | seed | loss | bits/byte | S > 0 | relu² output RMS | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        last = r["probes"][-1]["layers"]
        pos = ", ".join(f"{ly['frac_pos']:.2f}" for ly in last) or "-"
        rms = ", ".join(f"{ly['relu2_rms']:.2g}" for ly in last) or "-"
        lines.append(
            f"| {r['objective']} | {NAMES[r['arch']]} | "
            f"{r['start'] if r['arch'] != 'transformer' else '-'} | {r['seed']} | "
            f"{r['eval_loss']:.3f} | {r['eval_bpb']:.3f} | {pos} | {rms} | {r['seconds']:.0f} |"
        )
    lines += [
        "",
        "The paper's start over time (each cell: layer 0 / layer 1): fraction of S > 0, largest "
        "relative-bias weight, mean |γ| of the quadratic q, k rows.",
        "",
        "| objective | model | seed | step | S > 0 | max bias weight | mean abs γ |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if r["start"] != "paper" or r["arch"] == "transformer":
            continue
        for p in r["probes"]:
            if p["step"] not in (0, 20, 40, 100, TRAIN["steps"]):
                continue
            ls = p["layers"]
            lines.append(
                f"| {r['objective']} | {NAMES[r['arch']]} | {r['seed']} | {p['step']} | "
                + " | ".join(
                    " / ".join(fmt.format(ly[k]) for ly in ls)
                    for k, fmt in (
                        ("frac_pos", "{:.2f}"),
                        ("bias_max", "{:+.3f}"),
                        ("gamma_qk", "{:.3f}"),
                    )
                )
                + " |"
            )
    return lines


def cmd_report(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, meta = [], {}
    for path in args.files:
        data = json.loads(Path(path).read_text())
        runs += data["runs"]
        meta = data
    lines = _tables(runs, meta)
    (HERE / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    names = NAMES

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    colours = dict(zip(STARTS, ("k", "tab:red", "tab:orange", "tab:green", "tab:blue")))
    for (i, objective), (j, arch) in (
        (a, b) for a in enumerate(("clm", "mlm")) for b in enumerate(("flash", "gau"))
    ):
        ax = axes[i][j]
        for r in runs:
            if r["objective"] != objective or r["arch"] not in (arch, "transformer"):
                continue
            c = np.convolve(r["curve"], np.ones(20) / 20, mode="valid")
            tpp = r["arch"] == "transformer"
            ax.plot(
                np.arange(len(c)) + 20, c, color="grey" if tpp else colours[r["start"]],
                ls=":" if tpp else ("-" if r["seed"] == 0 else "--"), lw=1,
                label=("Transformer++" if tpp else LABELS.get(r["start"], r["start"]))
                if r["seed"] == 0
                else None,
            )  # fmt: skip
        if objective == "mlm":
            ax.axhline(meta["unigram_nats"], color="grey", lw=0.5, label="unigram entropy")
        ax.set_title(f"{names[arch]}, {objective} (train loss, 20-step mean; dashed: seed 1)")
        ax.set_ylabel("nats")
        ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(HERE / "curves.png", dpi=90)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", required=True)
    r.add_argument("--objectives", default="mlm,clm")
    r.add_argument("--archs", default=",".join(ARCHS))
    r.add_argument("--starts", default=",".join(STARTS))
    p = sub.add_parser("report")
    p.add_argument("files", nargs="+")
    g = sub.add_parser("first-gradient")
    g.add_argument("--seeds", type=int, default=6)
    g.add_argument("--objectives", default="mlm,clm")
    g.add_argument("--archs", default="flash,gau")
    g.add_argument("--quality", action="store_true", help="d 256, 4 layers, C 256, context 1024")
    args = ap.parse_args(argv)
    return {"run": cmd_run, "report": cmd_report, "first-gradient": cmd_first_gradient}[args.cmd](
        args
    )


if __name__ == "__main__":
    sys.exit(main())
