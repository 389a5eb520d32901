"""``flashcore conformance``: run the golden cases against installed backends and print a matrix.

    flashcore conformance [--backend B ...] [--dtype D ...] [--case GLOB ...] [--report FILE]

Rows are backend x case group, columns dtypes; a cell reads ``12 pass, worst 0.031`` (checks
passed; the worst error as a fraction of its tolerance: 1 is at the tolerance, above fails),
``FAIL 2/12, worst 3.1``, ``xfail N`` (known failures listed in xfail/), ``skip N`` (checks the
backend cannot run; the reasons are listed under the matrix) or ``not installed: reason``.
``--report x.json`` / ``x.md`` writes the same. ``flashcore conformance`` shows a progress bar on
a terminal (``--quiet``: none; the application hands :func:`main` its bar as ``each``). The exit
status is 1
when any check fails or an expected-failure entry is stale, so CI pipelines can gate on it.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from . import golden
from .adapters import load_adapter, selected_backends
from .cases import CASES
from .runner import Check, apply_xfails, load_xfails, run_case

DTYPES = ("float64", "float32", "bfloat16")


LEGEND = (
    "cells: checks passed (FAIL: failed/judged), xfail: known failures (xfail/*.txt), skip: not\n"
    "run; worst: the largest error of the cell's checks as a fraction of its tolerance (1 = at the\n"
    "tolerance, above it a check fails)"
)


def _plain(items, *, desc: str, quiet: bool = False):
    return iter(items)


def run(
    backends: list[str],
    dtypes: list[str] | None,
    cases: list[str] | None,
    quiet: bool = True,
    each=None,
):
    """-> (checks, {backend: reason not installed}, unused xfail lines per backend).

    ``each(items, desc=..., quiet=...)``: how to iterate over the cases of a backend (a progress
    bar; default a plain iteration)."""
    each = each or _plain
    selected = [c for c in CASES if not cases or any(fnmatch.fnmatchcase(c.name, p) for p in cases)]
    if not selected:
        raise SystemExit(f"no golden case matches {cases}")
    checks: list[Check] = []
    missing: dict[str, str] = {}
    stale: dict[str, list[str]] = {}
    for backend in backends:
        adapter, reason = load_adapter(backend)
        if adapter is None:
            missing[backend] = reason or "unavailable"
            continue
        xfails = load_xfails(backend)
        for case in each(selected, desc=f"conformance {backend}", quiet=quiet):
            g = golden.load(case.name)
            for dtype in adapter.dtypes:
                if dtypes and dtype not in dtypes:
                    continue
                checks += apply_xfails(run_case(adapter, g, dtype, backend), xfails)
        if not cases and not dtypes:  # a full run: every entry must still match something
            stale[backend] = [f"line {x.line}: {x.pattern}" for x in xfails if not x.used]
    return checks, missing, stale


def _cell(group_checks: list[Check]) -> str:
    if not group_checks:
        return "-"
    judged = [c for c in group_checks if c.status not in ("skip",)]
    bad = [c for c in judged if c.status in ("fail", "stale-xfail")]
    worst = max(
        (c.error for c in judged if c.error is not None and c.status != "xfail"), default=0.0
    )
    skipped = len(group_checks) - len(judged)
    xf = sum(c.status == "xfail" for c in judged)
    parts = [f"FAIL {len(bad)}/{len(judged)}" if bad else f"{len(judged) - xf} pass"]
    if xf:
        parts.append(f"xfail {xf}")
    if skipped:
        parts.append(f"skip {skipped}")
    if judged:
        parts.append(f"worst {worst:.2g}")
    return ", ".join(parts)


def skip_reasons(checks: list[Check]) -> list[str]:
    """One line per (backend, reason) of the skipped checks, with how many."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for c in checks:
        if c.status == "skip":
            counts[(c.backend, c.reason or "no reason given")] += 1
    return [f"{b}: {n} skipped: {reason}" for (b, reason), n in counts.items()]


def matrix(checks: list[Check], missing: dict[str, str], dtypes: list[str]) -> list[list[str]]:
    rows = [["backend", "group", *dtypes]]
    by = defaultdict(list)
    for c in checks:
        by[(c.backend, c.group, c.dtype)].append(c)
    seen = []
    for c in checks:
        if (c.backend, c.group) not in seen:
            seen.append((c.backend, c.group))
    for backend, group in seen:
        rows.append([backend, group, *(_cell(by[(backend, group, d)]) for d in dtypes)])
    for backend, reason in missing.items():
        rows.append([backend, "*", f"not installed: {reason}", *([""] * (len(dtypes) - 1))])
    return rows


def _text(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


def _markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def main(argv: list[str] | None = None, *, each=None) -> int:
    """The command; ``each``: the case iteration of :func:`run` (the CLI passes a progress bar)."""
    ap = argparse.ArgumentParser(prog="flashcore conformance", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--backend",
        action="append",
        help="backend id or module:Class (repeatable, comma-separated)",
    )
    ap.add_argument("--dtype", action="append", choices=DTYPES, help="only these dtypes")
    ap.add_argument("--case", action="append", help="only cases matching this glob")
    ap.add_argument("--report", type=Path, help="write the results to FILE (.json or .md)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.report and args.report.suffix not in (".json", ".md"):
        ap.error(f"--report must end in .json or .md, got {args.report}")
    backends = selected_backends(args.backend)
    t0 = time.perf_counter()
    checks, missing, stale = run(backends, args.dtype, args.case, quiet=args.quiet, each=each)
    dtypes = [d for d in DTYPES if any(c.dtype == d for c in checks)] or list(
        args.dtype or DTYPES[:1]
    )
    rows = matrix(checks, missing, dtypes)
    print(_text(rows))
    print("\n" + LEGEND)
    reasons = skip_reasons(checks)
    if reasons:
        print("\nskipped checks:\n  " + "\n  ".join(reasons))
    failures = [c for c in checks if c.status in ("fail", "stale-xfail")]
    for c in failures:
        print("\n" + (c.describe() if c.status == "fail" else f"{c.test_id}: {c.reason}"))
    dead = {b: lines for b, lines in stale.items() if lines}
    for backend, lines in dead.items():
        print(f"\nstale expected-failure entries for {backend} (match no check): {lines}")
    counts = defaultdict(int)
    for c in checks:
        counts[c.status] += 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"\n{len(checks)} checks in {time.perf_counter() - t0:.1f}s: {summary}")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        if args.report.suffix == ".json":
            payload = {
                "checks": [c.to_dict() for c in checks],
                "not_installed": missing,
                "stale_xfails": dead,
                "summary": dict(counts),
            }
            args.report.write_text(json.dumps(payload, indent=1))
        else:
            args.report.write_text(_markdown(rows) + "\n")
        print(f"report written to {args.report}")
    return 1 if failures or dead else 0


if __name__ == "__main__":
    sys.exit(main())
