"""``flashcore quality``: the paper's claim, by steps and measured step time, resumable.

FLASH, FLASH-Quad (GAU) and Transformer++ language models of equal parameter count (within
``--param-tolerance``) are trained with ``flashcore train`` (one run folder each) for the same
number of steps on the same batches in the same order, with the same AdamW schedule, in every
*setting* (``clm-1024``: causal LM at context 1024; ``mlm-1024``: BERT-style masked LM with
bidirectional layers). The learning rates ``--lrs`` are swept per architecture at the settings
``--sweep-at`` (default: the first) and the best of each is reused at the other settings of that
objective (``--sweep-all`` sweeps everywhere); ``--extend-edges N`` adds up to N rates per architecture beyond a best rate
that lies at an edge of the sweep. Because every model takes the same steps, quality at equal steps cannot
depend on other load on the machine; time enters only through each model's median train-step
time, measured side by side (interleaved, same shapes) in one process, so that

    seconds to reach Transformer++'s final loss = steps needed x measured step time.

Writes (OUT):

    experiment.json      the experiment's arguments (what ``--resume`` continues)
    records/ID.json      each finished run's arguments, commit and held-out curve (a fresh clone
                         resumes with these read back: commit them)
    results.json         every run (arguments, parameters, tokens seen, held-out curve), the step
                         times, the per-setting summary and the machine
    table.md             the summary table; loss_vs_steps.png, loss_vs_seconds.png

Run folders (weights, checkpoints, logs) go under ``--runs`` (default OUT/runs). A killed
experiment continues with ``--resume``: finished runs are read back, an unfinished one continues
from its newest checkpoint.

    flashcore quality --out docs/quality --runs runs/quality
    flashcore quality --resume --out docs/quality --runs runs/quality
    flashcore quality --resume --lrs 1e-3 2e-3 4e-3 8e-3 ...   # the sweep extended: only the
                                                               # new rates' runs are trained
    flashcore quality --resume --extend-edges 1 ...            # one more rate past an edge
    flashcore quality --resume --archs flash gau transformer transformer-deep ...
                                                               # a model added: only its runs
    flashcore quality --resume --sweep-at clm-1024 mlm-1024 ...  # a setting swept as well
    flashcore quality --resume --record-only ...               # record the finished run folders
                                                               # (and print the unfinished runs'
                                                               # `flashcore train` commands, to
                                                               # run them in parallel)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import io, mlm
from ..params import init, param_spec
from . import progress, runstate
from .cli_args import nonneg_int, positive
from .data import load_corpus, sample_batch
from .engine import BACKENDS, OptimConfig, load_engine
from .train import build_config, train_main, train_parser

__all__ = [
    "ARCHS",
    "Setting",
    "QualityError",
    "main",
    "model_argv",
    "param_count",
    "crossing",
    "summarize",
]

ARCHS = ("flash", "gau", "transformer", "transformer-deep")
NAMES = {
    "flash": "FLASH",
    "gau": "FLASH-Quad",
    "transformer": "Transformer++",  # half the layers: the paper's parameter accounting
    "transformer-deep": "Transformer++",  # as many blocks as FLASH has layers, a narrower FFN
}
#: the baselines every row is compared with, each at its own best rate
REFERENCES = ("transformer", "transformer-deep")
FORMAT, VERSION = "flashcore-quality", 1
# what --resume may change: how to run, not what the experiment is
RESUME_MAY_CHANGE = ("quiet", "resume", "force", "time_rounds", "time_warmup", "record_only")


class QualityError(ValueError):
    """An experiment that cannot run as asked (unequal models, a conflicting --resume, ...)."""


@dataclass(frozen=True)
class Setting:
    """One of the paper's settings: ``objective`` "clm" (causal) or "mlm", at ``context``."""

    objective: str
    context: int

    @property
    def name(self) -> str:
        return f"{self.objective}-{self.context}"

    @classmethod
    def parse(cls, text: str) -> Setting:
        """``clm-1024`` / ``mlm-1024`` -> Setting (argparse type)."""
        objective, _, ctx = text.partition("-")
        if objective not in ("clm", "mlm") or not ctx.isdigit() or int(ctx) < 1:
            raise argparse.ArgumentTypeError(
                f"a setting is clm-CONTEXT or mlm-CONTEXT (e.g. clm-1024), got {text!r}"
            )
        return cls(objective, int(ctx))


# -- the models ------------------------------------------------------------------------------


def _model_flags(arch: str, setting: Setting, args, ffn_dim: int | None = None) -> list[str]:
    flags = [
        "--arch", "transformer" if arch in REFERENCES else arch, "--objective", setting.objective,
        "--context", str(setting.context), "--dim", str(args.dim),
    ]  # fmt: skip
    if arch in REFERENCES:  # "transformer": one block ~ two GAU layers (12 d^2 each way)
        blocks = args.layers if arch == "transformer-deep" else max(1, args.layers // 2)
        flags += ["--layers", str(blocks), "--heads", str(args.heads)]
        if ffn_dim is not None:
            flags += ["--ffn-dim", str(ffn_dim)]
    else:
        flags += [
            "--layers", str(args.layers), "--qk-dim", str(args.qk_dim),
            "--expansion", str(args.expansion), "--chunk", str(args.chunk),
            "--init", getattr(args, "init", "uniform"),  # named: a record shows its start
        ]  # fmt: skip
    return flags


def param_count(flags: list[str]) -> int:
    """Parameters of the model that ``flashcore train FLAGS`` builds."""
    config = build_config(train_parser().parse_args(flags))
    return sum(math.prod(s.shape) for s in param_spec(config).values())


def model_argv(setting: Setting, args) -> dict[str, tuple[list[str], int]]:
    """arch -> (``flashcore train`` model flags, parameter count) for every arch in ``args.archs``.

    FLASH and FLASH-Quad have the same layers; Transformer++ gets half as many blocks
    ("transformer") or as many ("transformer-deep"), and the SwiGLU width that brings its
    parameter count nearest FLASH's (a multiple of 8 where that is within the tolerance). Raises :class:`QualityError` when a model is
    further than ``args.param_tolerance`` from FLASH's."""
    ref_arch = "flash" if "flash" in args.archs else args.archs[0]
    out = {a: _model_flags(a, setting, args) for a in args.archs if a not in REFERENCES}
    ref = param_count(_model_flags(ref_arch, setting, args))
    for arch in (a for a in REFERENCES if a in args.archs):
        at = lambda h, arch=arch: param_count(_model_flags(arch, setting, args, h))  # noqa: E731
        slope = (at(16) - at(8)) / 8  # parameters per unit of SwiGLU width
        exact = max(1, round((ref - at(8)) / slope + 8))
        width = max(8, 8 * round(exact / 8))  # a multiple of 8 where that stays within tolerance
        if abs(at(width) - ref) > args.param_tolerance * ref:
            width = exact
        out[arch] = _model_flags(arch, setting, args, width)
    counts = {a: (flags, param_count(flags)) for a, flags in out.items()}
    far = {a: n for a, (_, n) in counts.items() if abs(n - ref) > args.param_tolerance * ref}
    if far:
        raise QualityError(
            f"{setting.name}: parameter counts differ from {NAMES[ref_arch]}'s {ref:,} by more "
            f"than {args.param_tolerance:.0%}: "
            + ", ".join(f"{label(a, counts[a][0])} {n:,}" for a, n in far.items())
            + " (change --dim / --layers / --expansion / --qk-dim)"
        )
    return counts


# -- the runs --------------------------------------------------------------------------------


def _run_id(setting: Setting, arch: str, lr: float) -> str:
    return f"{setting.name}-{arch}-lr{lr:g}"


def _train_flags(args, lr: float, setting: Setting) -> list[str]:
    flags = [
        "--backend", args.backend, "--steps", str(args.steps), "--lr", repr(lr),
        "--batch", str(max(1, args.tokens_per_step // setting.context)),
        "--warmup", str(args.warmup), "--schedule", "cosine",
        "--eval-every", str(args.eval_every), "--eval-tokens", str(args.eval_tokens),
        "--seed", str(args.seed), "--keep", "1",
    ]  # fmt: skip
    if args.data is not None:
        flags += ["--data", str(args.data)]
    if args.dtype == "bf16":
        flags.append("--bf16")
    if args.quiet:
        flags.append("--quiet")
    return flags


def read_curve(run: Path) -> list[dict]:
    """The held-out evaluations in ``run``'s log: [{step, loss, bpb}] by step (the last record of
    a step wins: a resumed run's log is cut back to its checkpoint before it continues)."""
    by_step: dict[int, dict] = {}
    log = run / "log.jsonl"
    if log.exists():
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            if "eval" in rec:
                ev = rec["eval"]
                by_step[rec["step"]] = {
                    "step": rec["step"],
                    "loss": ev["loss"],
                    "bpb": ev["bits_per_byte"],
                }
    return [by_step[s] for s in sorted(by_step)]


def _finished(run: Path, steps: int) -> bool:
    ckpt = runstate.latest(run, hashes=False)
    return ckpt is not None and ckpt.step >= steps


def _commit() -> str | None:
    """The git commit of the code that runs, "-dirty" when the checkout has changes (None outside
    a git checkout)."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"], capture_output=True,
            text=True, timeout=10, cwd=Path(__file__).resolve().parent,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _read_record(path: Path, record: dict) -> dict | None:
    """A finished run's record saved in OUT/records, when it is the run ``record`` describes
    (same model, training flags and steps) and reached the last step; else None."""
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    same = all(saved.get(k) == record[k] for k in ("train_flags", "run_flags", "steps", "lr"))
    if not same or not saved.get("curve") or saved["curve"][-1]["step"] < record["steps"]:
        return None
    return saved


def _train_run(run: Path, flags: list[str]) -> None:
    """Train (or continue) one run folder to the end; raises QualityError on failure."""
    if runstate.holds_run(run):
        argv = ["--resume", str(run)] + (["--quiet"] if "--quiet" in flags else [])
    else:
        argv = [*flags, "--out", str(run)]
    rc = train_main(argv, announce=False)
    if rc != 0:
        raise QualityError(f"flashcore train {' '.join(argv)} failed (exit code {rc})")


def run_all(args, settings: list[Setting], runs_dir: Path) -> list[dict]:
    """Every run of the experiment, trained or read back -> run records.

    Each finished run's record (its arguments and held-out curve) is also written to
    OUT/records/ID.json, small enough to commit: a fresh clone resumes with those runs read back
    from the records even where their run folders (weights, checkpoints) are gone."""
    records_dir = args.out / "records"
    commit = _commit()  # the code this process runs (imported now, whatever is committed later)
    sweep_at = sweep_settings(args, settings)
    order = sweep_at + [s for s in settings if s not in sweep_at]
    models = {s: model_argv(s, args) for s in order}  # every size checked before any training
    records: list[dict] = []
    best_lr: dict[tuple[str, str], float] = {}  # (swept setting, arch) -> its best rate

    def one(setting: Setting, arch: str, lr: float, swept: bool) -> None:
        flags, n_params = models[setting][arch]
        run = runs_dir / _run_id(setting, arch, lr)
        run_flags = _train_flags(args, lr, setting)
        batch = max(1, args.tokens_per_step // setting.context)
        record = {
            "id": run.name, "setting": setting.name, "objective": setting.objective,
            "context": setting.context, "arch": arch, "lr": lr, "params": n_params,
            "batch": batch, "steps": args.steps,
            "tokens_seen": args.steps * batch * setting.context,
            "train_flags": flags, "run_flags": [f for f in run_flags if f != "--quiet"],
            "swept": swept,
        }  # fmt: skip
        record_path = records_dir / f"{run.name}.json"
        done = _finished(run, args.steps)
        saved = None if done else _read_record(record_path, record)
        how = "finished, read back" if done else "recorded, read back" if saved else "training"
        how = "not finished" if how == "training" and args.record_only else how
        progress.note(
            f"[{len(records) + 1}] {setting.name} {label(arch, flags)} lr {lr:g}, {n_params:,} "
            f"parameters: {how} ({record_path if saved else run})",
            file=sys.stdout,
        )
        if saved is not None:
            records.append(saved)
            return
        if not done and args.record_only:
            command = " ".join(["flashcore train", *flags, *run_flags, "--out", str(run)])
            progress.note(f"    its command: {command}", file=sys.stdout)
            return
        if not done:
            record["commit"] = commit  # the code that trains it
            _train_run(run, [*flags, *run_flags])
        else:  # keep the commit that trained it (None: trained by another process)
            old = json.loads(record_path.read_text()) if record_path.exists() else {}
            record["commit"] = old.get("commit")
        record["curve"] = read_curve(run)
        text = json.dumps(record, indent=1)
        records_dir.mkdir(parents=True, exist_ok=True)
        io.atomic_write(record_path, lambda tmp, text=text: Path(tmp).write_text(text))
        records.append(record)

    for setting in order:
        swept = args.sweep_all or setting in sweep_at
        for arch in args.archs:
            rates = args.lrs if swept else [best_lr[rate_source(setting, sweep_at).name, arch]]
            for lr in rates:
                one(setting, arch, lr, swept)
        if not swept:
            continue
        for arch in args.archs:
            for _ in range(args.extend_edges):  # a best rate at an edge: one more rate beyond it
                lr = edge_rate(records, setting.name, arch)
                if lr is None:
                    break
                one(setting, arch, lr, swept)
        if setting in sweep_at:
            for arch in args.archs:
                tried = {
                    r["lr"] for r in records if r["arch"] == arch and r["setting"] == setting.name
                }
                if not set(args.lrs) <= tried:  # --record-only with the sweep unfinished
                    return records
                best_lr[setting.name, arch] = best_runs(records, setting.name)[arch]["lr"]
    return records


def sweep_settings(args, settings: list[Setting]) -> list[Setting]:
    """The settings whose learning rates are swept: ``--sweep-at`` (default the first setting)."""
    return list(args.sweep_at) if args.sweep_at else [settings[0]]


def rate_source(setting: Setting, sweep_at: list[Setting]) -> Setting:
    """The swept setting whose best rates an unswept ``setting`` reuses: the first swept setting
    with the same objective (clm-4096 takes clm-1024's), else the first swept setting."""
    same = [s for s in sweep_at if s.objective == setting.objective]
    return (same or sweep_at)[0]


def edge_rate(records: list[dict], setting: str, arch: str) -> float | None:
    """The rate that extends ``arch``'s sweep at ``setting`` past its best rate when that best lies
    at an edge of the rates tried (half the lowest, twice the highest); None when it is inside
    (or only one rate was tried)."""
    lrs = sorted({r["lr"] for r in records if r["setting"] == setting and r["arch"] == arch})
    if len(lrs) < 2:
        return None
    best = best_runs(records, setting)[arch]["lr"]
    if best == lrs[0]:
        return lrs[0] / 2
    if best == lrs[-1]:
        return lrs[-1] * 2
    return None


# -- step times ------------------------------------------------------------------------------


def step_times(args, settings: list[Setting]) -> dict:
    """setting -> arch -> {"median_s", "samples_s"}: train steps of every model (the experiment's
    shapes and dtype), measured side by side, interleaved round by round, in this process."""
    corpus = load_corpus(args.data)
    out: dict[str, dict] = {}
    for setting in settings:
        models = model_argv(setting, args)
        batch = max(1, args.tokens_per_step // setting.context)
        rng = np.random.default_rng(args.seed)
        x, y = sample_batch(corpus.train, batch, setting.context, rng)
        mask = None
        if setting.objective == "mlm":
            x, y, mask = mlm.mask_tokens(x, rng)
        engines = {}
        for arch, (flags, _) in models.items():
            config = build_config(train_parser().parse_args(flags))
            engines[arch] = load_engine(args.backend)(
                config,
                init(config, seed=args.seed),
                dtype="bfloat16" if args.dtype == "bf16" else "float32",
                optim=OptimConfig(),
                seed=args.seed,
            )
        samples: dict[str, list[float]] = {a: [] for a in engines}
        lr = 1e-4  # a small constant rate: the timed steps barely move the weights
        total = (args.time_warmup + args.time_rounds) * len(engines)
        with progress.bar(total, desc=f"step times {setting.name}", quiet=args.quiet) as bar:
            for r in range(args.time_warmup + args.time_rounds):
                for arch, engine in engines.items():
                    t0 = time.perf_counter()
                    engine.train_step(x, y, lr, mask)  # returns a float: the step has finished
                    dt = time.perf_counter() - t0
                    if r >= args.time_warmup:
                        samples[arch].append(dt)
                    bar.update(1)
        for engine in engines.values():
            engine.close()
        out[setting.name] = {
            a: {"median_s": statistics.median(s), "samples_s": s} for a, s in samples.items()
        }
    return out


# -- the report ------------------------------------------------------------------------------


def crossing(curve: list[dict], target: float) -> float | None:
    """The (fractional) step at which ``curve`` first reaches ``target`` loss, linear between
    evaluations; None when it never does."""
    prev = None
    for pt in curve:
        if pt["loss"] <= target:
            if prev is None:
                return float(pt["step"])
            f = (prev["loss"] - target) / max(prev["loss"] - pt["loss"], 1e-300)
            return prev["step"] + f * (pt["step"] - prev["step"])
        prev = pt
    return None


def best_runs(records: list[dict], setting: str) -> dict[str, dict]:
    """arch -> its run with the lowest final held-out loss at ``setting``."""
    best: dict[str, dict] = {}
    for r in records:
        if r["setting"] == setting and r["curve"]:
            if (
                r["arch"] not in best
                or r["curve"][-1]["loss"] < best[r["arch"]]["curve"][-1]["loss"]
            ):
                best[r["arch"]] = r
    return best


def _layers(flags: list[str] | None) -> int | None:
    flags = flags or []
    return int(flags[flags.index("--layers") + 1]) if "--layers" in flags else None


def label(arch: str, flags: list[str] | None = None) -> str:
    """An architecture's name in the reports; a Transformer++ carries its depth (from its
    ``flashcore train`` flags)."""
    n = _layers(flags)
    if arch in REFERENCES and n is not None:
        return f"{NAMES[arch]} ({n} block{'' if n == 1 else 's'})"
    return NAMES[arch]


def _versus(run: dict, base: dict, step_s: float | None, base_s: float | None) -> dict:
    """``run`` against the reference run ``base`` at equal steps: the gap in final loss, whether
    it is within 2%, the steps ``run`` needs to reach ``base``'s final loss and (with step times)
    the estimated seconds and the speedup."""
    target = base["curve"][-1]["loss"]
    # the reference itself: its final step by definition (an earlier evaluation can read a little
    # below the final one, and its row compares it with itself)
    need = float(run["curve"][-1]["step"]) if run is base else crossing(run["curve"], target)
    gap = (run["curve"][-1]["loss"] - target) / target * 100
    out = {
        "reference": label(base["arch"], base.get("train_flags")),
        "gap_pct": gap,
        "within_2pct": abs(gap) <= 2.0,
        "steps_to_tpp": need,
    }
    if need is not None and step_s is not None and base_s is not None:
        out["seconds_to_tpp"] = need * step_s
        out["speedup"] = base["curve"][-1]["step"] * base_s / (need * step_s)
    return out


def summarize(records: list[dict], times: dict, settings: list[str]) -> list[dict]:
    """One row per (setting, arch): final bits per byte and, against each Transformer++
    (``vs``: half depth and equal depth, each at its best rate), the gap at equal steps, the steps
    and estimated seconds to reach its final loss, and the speedup. The top-level ``gap_pct``,
    ``steps_to_tpp``, ``seconds_to_tpp`` and ``speedup`` are against the half-depth one (the
    paper's accounting)."""
    rows = []
    for setting in settings:
        best = best_runs(records, setting)
        at = times.get(setting, {})
        seconds = lambda arch, at=at: at.get(arch, {}).get("median_s")  # noqa: E731
        for arch in ARCHS:
            if arch not in best:
                continue
            r = best[arch]
            row = {
                "setting": setting, "arch": arch, "label": label(arch, r.get("train_flags")),
                "lr": r["lr"], "params": r["params"], "steps": r["curve"][-1]["step"],
                "tokens_seen": r["tokens_seen"], "final_bpb": r["curve"][-1]["bpb"],
                "step_s": seconds(arch),
            }  # fmt: skip
            vs = {
                ref: _versus(r, best[ref], seconds(arch), seconds(ref))
                for ref in REFERENCES
                if ref in best
            }
            if vs:
                row["vs"] = vs
            if "transformer" in vs:
                keys = ("gap_pct", "steps_to_tpp", "seconds_to_tpp", "speedup")
                row.update({k: vs["transformer"][k] for k in keys if k in vs["transformer"]})
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """The summary rows as a markdown table (one group of columns per Transformer++ reference
    present), then one line per setting and model: within 2% of each reference or not."""
    refs = [ref for ref in REFERENCES if any(ref in r.get("vs", {}) for r in rows)]
    ref_label = {
        ref: next(r["vs"][ref]["reference"] for r in rows if ref in r.get("vs", {})) for ref in refs
    }
    head = (
        "| setting | model | parameters | best lr | tokens seen | final bits/byte | step time (ms) "
    )
    for ref in refs:
        name = ref_label[ref]
        head += (
            f"| vs {name} | steps to {name}'s final loss | est. seconds to {name}'s final loss "
            "| speedup "
        )
    lines = [head + "|", "|" + "---|" * (7 + 4 * len(refs))]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        line = (
            f"| {r['setting']} | {r.get('label', NAMES[r['arch']])} | {r['params']:,} "
            f"| {r['lr']:g} | {r['tokens_seen']:,} | {r['final_bpb']:.4f} "
            f"| {fmt(None if r['step_s'] is None else r['step_s'] * 1e3, '.1f')} "
        )
        for ref in refs:
            v = r.get("vs", {}).get(ref, {})
            speedup = v.get("speedup")
            line += (
                f"| {fmt(v.get('gap_pct'), '+.1f')}% | {fmt(v.get('steps_to_tpp'), '.0f')} "
                f"| {fmt(v.get('seconds_to_tpp'), '.0f')} "
                f"| {'-' if speedup is None else format(speedup, '.2f') + 'x'} "
            )
        lines.append(line + "|")
    claims = [
        f"- {r['setting']}: {r.get('label', NAMES[r['arch']])} is "
        f"{'within' if v['within_2pct'] else 'not within'} 2% of {v['reference']} at equal steps "
        f"({v['gap_pct']:+.1f}%)"
        + (f"; {v['speedup']:.2f}x its speed to that loss" if v.get("speedup") else "")
        for r in rows
        if r["arch"] not in REFERENCES
        for v in r.get("vs", {}).values()
    ]
    return "\n".join(lines + ([""] + claims if claims else []))


COLORS = {
    "flash": "tab:blue",
    "gau": "tab:green",
    "transformer": "tab:orange",
    "transformer-deep": "tab:red",
}


def plot(records: list[dict], times: dict, settings: list[str], out: Path) -> None:
    """loss_vs_steps.png (every run of the sweep) and loss_vs_seconds.png (each architecture's
    best run; seconds = step x its measured step time), one panel per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for kind in ("steps", "seconds"):
        fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4), squeeze=False)
        for ax, setting in zip(axes[0], settings):
            best = best_runs(records, setting)
            for r in records:
                if r["setting"] != setting or not r["curve"]:
                    continue
                is_best = best.get(r["arch"]) is r
                scale = 1.0
                if kind == "seconds":
                    if not is_best or r["arch"] not in times.get(setting, {}):
                        continue
                    scale = times[setting][r["arch"]]["median_s"]
                ax.plot(
                    [p["step"] * scale for p in r["curve"]],
                    [p["bpb"] for p in r["curve"]],
                    marker="o" if is_best else None,
                    markersize=3,
                    alpha=1.0 if is_best else 0.35,
                    color=COLORS[r["arch"]],  # one colour per architecture in every panel
                    label=f"{label(r['arch'], r.get('train_flags'))} lr {r['lr']:g}",
                )
            ax.set_title(setting)
            ax.set_xlabel("step" if kind == "steps" else "estimated seconds (steps x step time)")
            ax.set_ylabel("held-out bits per byte")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / f"loss_vs_{kind}.png", dpi=90)
        plt.close(fig)


def machine() -> dict:
    """Where the experiment ran: CPU, cores, threads, library versions."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version()}
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    except ImportError:
        pass
    return info


# -- the command -----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="flashcore quality", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--settings", type=Setting.parse, nargs="+",
        default=[Setting("clm", 1024), Setting("clm", 4096), Setting("mlm", 1024)],
        help="clm-CONTEXT (causal LM) / mlm-CONTEXT (masked LM); default clm-1024 clm-4096 mlm-1024",
    )  # fmt: skip
    ap.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    ap.add_argument("--lrs", type=positive(float), nargs="+", default=[1e-3, 2e-3, 4e-3])
    ap.add_argument(
        "--sweep-at", type=Setting.parse, nargs="+", default=None,
        help="the settings where --lrs are swept (default: the first); every other setting "
        "reuses the best rates of the first swept setting with its objective",
    )  # fmt: skip
    ap.add_argument("--sweep-all", action="store_true", help="sweep --lrs at every setting")
    ap.add_argument(
        "--extend-edges",
        type=nonneg_int,
        default=0,
        help="up to N more rates per architecture while its best rate lies at an edge of the "
        "sweep (half the lowest / twice the highest)",
    )
    ap.add_argument("--steps", type=positive(int), default=1000)
    ap.add_argument("--tokens-per-step", type=positive(int), default=8192)
    ap.add_argument("--warmup", type=nonneg_int, default=50)
    ap.add_argument("--eval-every", type=positive(int), default=50)
    ap.add_argument("--eval-tokens", type=positive(int), default=65536)
    ap.add_argument("--dim", type=positive(int), default=256)
    ap.add_argument("--layers", type=positive(int), default=4, help="FLASH / GAU layers")
    ap.add_argument("--qk-dim", type=positive(int), default=64)
    ap.add_argument("--expansion", type=positive(float), default=2.0)
    ap.add_argument("--chunk", type=positive(int), default=256, help="FLASH chunk size C")
    ap.add_argument("--heads", type=positive(int), default=4, help="Transformer++ heads")
    ap.add_argument(
        "--init", choices=["uniform", "paper"], default="uniform",
        help="the FLASH / FLASH-Quad start (flashcore train --init; records without one: paper)",
    )  # fmt: skip
    ap.add_argument("--param-tolerance", type=positive(float), default=0.02)
    ap.add_argument("--backend", choices=BACKENDS, default="torch")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, help="a text file or folder (default: the Python stdlib)")
    ap.add_argument("--time-rounds", type=positive(int), default=10, help="timed steps per model")
    ap.add_argument("--time-warmup", type=nonneg_int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs/quality"))
    ap.add_argument("--runs", type=Path, default=None, help="run folders (default OUT/runs)")
    ap.add_argument("--resume", action="store_true", help="continue the experiment in OUT")
    ap.add_argument("--force", action="store_true", help="start over (deletes OUT's runs)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument(
        "--record-only",
        action="store_true",
        help="write the records of the run folders that have finished (e.g. trained by "
        "`flashcore train` with the experiment's flags, in parallel), train nothing, no report",
    )
    return ap


def _plain_value(v):
    if isinstance(v, list):
        return [_plain_value(i) for i in v]
    if isinstance(v, Setting):
        return v.name
    return str(v) if isinstance(v, Path) else v


def _plain(args: argparse.Namespace) -> dict:
    """The arguments as JSON values (settings by name, paths as strings)."""
    return {k: _plain_value(v) for k, v in vars(args).items()}


def _check_resume(args, argv: list[str], ap) -> argparse.Namespace:
    """``--resume``: the saved experiment's arguments, with what was given checked against them."""
    path = args.out / "experiment.json"
    if not path.exists():
        raise QualityError(f"--resume: {path} does not exist (no experiment in {args.out})")
    saved = json.loads(path.read_text())
    if saved.get("format") != FORMAT or saved.get("version") != VERSION:
        raise QualityError(f"{path}: not a {FORMAT} version {VERSION} file")
    for action in ap._actions:
        action.default = argparse.SUPPRESS
    given = _plain(argparse.Namespace(**vars(ap.parse_args(argv))))
    extended_lrs = None  # --lrs may add rates to the sweep (the finished runs stay valid)
    old_lrs = saved["args"].get("lrs", [])
    if "lrs" in given and given["lrs"] != old_lrs and set(old_lrs) <= set(given["lrs"]):
        extended_lrs = old_lrs + [lr for lr in given["lrs"] if lr not in old_lrs]
        del given["lrs"]
    extended_archs = None  # and --archs may add models (e.g. the equal-depth Transformer++)
    old_archs = saved["args"].get("archs", [])
    if "archs" in given and given["archs"] != old_archs and set(old_archs) <= set(given["archs"]):
        extended_archs = old_archs + [a for a in given["archs"] if a not in old_archs]
        del given["archs"]
    extended_sweep = None  # and --sweep-at may add settings to sweep (e.g. mlm-1024 as well)
    old_sweep = saved["args"].get("sweep_at") or saved["args"]["settings"][:1]
    old_sweep = [old_sweep] if isinstance(old_sweep, str) else old_sweep  # version-1 files: one
    if (
        "sweep_at" in given
        and given["sweep_at"] != old_sweep
        and set(old_sweep) <= set(given["sweep_at"])
    ):
        extended_sweep = old_sweep + [s for s in given["sweep_at"] if s not in old_sweep]
        del given["sweep_at"]
    elif given.get("sweep_at") == old_sweep:
        del given["sweep_at"]
    raised_edges = None  # so may --extend-edges (a longer sweep, the finished runs stay valid)
    if given.get("extend_edges", 0) > saved["args"].get("extend_edges", 0):
        raised_edges = given.pop("extend_edges")
    defaults = _plain(parser().parse_args([]))  # for what an older experiment.json lacks
    has = lambda k: saved["args"].get(k, defaults.get(k))  # noqa: E731
    conflicts = [
        f"--{k.replace('_', '-')}: the experiment has {has(k)}, you gave {v}"
        for k, v in given.items()
        if k not in RESUME_MAY_CHANGE and has(k) != v
    ]
    if conflicts:
        raise QualityError(
            "--resume: arguments that contradict the experiment:\n  " + "\n  ".join(conflicts)
        )
    merged = parser().parse_args([])
    for k, v in saved["args"].items():
        if k in RESUME_MAY_CHANGE:
            continue
        if k == "settings":
            v = [Setting.parse(s) for s in v]
        elif k == "sweep_at" and v is not None:
            v = [Setting.parse(x) for x in ([v] if isinstance(v, str) else v)]
        elif k in ("out", "runs", "data") and v is not None:
            v = Path(v)
        setattr(merged, k, v)
    for k in RESUME_MAY_CHANGE:  # given on this command line, else the experiment's
        setattr(
            merged, k, getattr(args, k) if k in given else saved["args"].get(k, getattr(merged, k))
        )
    merged.resume, merged.force = True, False
    merged.record_only = bool(given.get("record_only", False))  # this command's, never saved
    if extended_lrs is not None:  # the experiment now sweeps these: saved for the next --resume
        merged.lrs = saved["args"]["lrs"] = extended_lrs
    if raised_edges is not None:
        merged.extend_edges = saved["args"]["extend_edges"] = raised_edges
    if extended_archs is not None:
        merged.archs = saved["args"]["archs"] = extended_archs
    if extended_sweep is not None:
        saved["args"]["sweep_at"] = extended_sweep
        merged.sweep_at = [Setting.parse(x) for x in extended_sweep]
    if any(v is not None for v in (extended_lrs, raised_edges, extended_archs, extended_sweep)):
        text = json.dumps(saved, indent=1)
        io.atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return merged


def main(argv: list[str] | None = None) -> int:
    """``flashcore quality ARGV`` -> exit code (2: a bad argument or experiment folder)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser()
    args = ap.parse_args(argv)
    try:
        return _main(args, argv, ap)
    except (QualityError, runstate.RunStateError) as err:
        print(f"flashcore quality: {err}", file=sys.stderr)
        return 2


def _main(args, argv, ap) -> int:
    if args.resume and args.force:
        raise QualityError("--force starts over and --resume continues: pass one")
    if args.resume:
        args = _check_resume(args, argv, ap)
    for s in args.sweep_at or []:
        if s not in args.settings:
            raise QualityError(f"--sweep-at {s.name} is not one of --settings")
    runs_dir = args.runs or args.out / "runs"
    exp = args.out / "experiment.json"
    if not args.resume:
        if exp.exists() and not args.force:
            raise QualityError(
                f"{args.out} holds an experiment; continue it with --resume, or start over "
                f"(deleting its runs in {runs_dir}) with --force"
            )
        if args.force:
            for folder in (runs_dir, args.out / "records"):
                if folder.exists():
                    shutil.rmtree(folder)
        for s in args.settings:
            model_argv(s, args)  # refuse unequal models before writing anything
        saved = {"format": FORMAT, "version": VERSION, "args": _plain(args)}
        io.atomic_write(exp, lambda tmp: Path(tmp).write_text(json.dumps(saved, indent=1)))
    records = run_all(args, args.settings, runs_dir)
    if args.record_only:
        print(f"{len(records)} runs recorded in {args.out / 'records'}; no report (--record-only)")
        return 0
    names = [s.name for s in args.settings]
    times = step_times(args, args.settings)
    rows = summarize(records, times, names)
    results = {
        "format": FORMAT, "version": VERSION, "args": _plain(args), "machine": machine(),
        "runs": records, "step_times": times, "summary": rows,
    }  # fmt: skip
    text = json.dumps(results, indent=1)
    io.atomic_write(args.out / "results.json", lambda tmp: Path(tmp).write_text(text))
    md = table(rows)
    io.atomic_write(args.out / "table.md", lambda tmp: Path(tmp).write_text(md + "\n"))
    plot(records, times, names, args.out)
    print(md)
    print(f"\nwrote {args.out}/results.json, table.md, loss_vs_steps.png, loss_vs_seconds.png")
    return 0
