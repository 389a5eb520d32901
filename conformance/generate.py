"""Regenerate the golden reference files.

    python -m flashcore.conformance.generate [--only NAME ...] [--out DIR]

Outputs come from the spec on NumPy in float64. Gradients come from reverse-mode autodiff of the
same spec run on PyTorch float64 tensors (through array-api-compat), and each gradient tensor is
checked against float64 central finite differences of the NumPy spec before anything is written,
so the files do not rest on one framework's autodiff alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from . import golden
from .cases import CASES, make_inputs, make_params

FD_TOLERANCE = 1e-5  # relu^2 is C1, not C2: central differences across a kink lose order


def autodiff_grads(config, params, inputs) -> tuple[float, dict[str, np.ndarray]]:
    """Loss and gradients w.r.t. x (layers) and every parameter, by torch float64 autodiff."""
    import array_api_compat.torch as txp
    import torch

    from flashcore.kernels import Kernels, with_kernels

    # the plain spec on torch tensors; erf (the Laplace attention) differentiable through torch's
    xp = with_kernels(txp, "array_api_compat.torch", Kernels(erf=torch.special.erf))
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    ti = {k: torch.tensor(v) for k, v in inputs.items()}
    if "x" in ti:
        ti["x"] = ti["x"].to(torch.float64).requires_grad_(True)
    loss = golden.spec_loss(config, tp, ti, xp=xp)
    loss.backward()
    grads = {}
    if "x" in ti:
        grads["x"] = ti["x"].grad.numpy().copy()
    for k, v in tp.items():
        grads[f"param/{k}"] = (v.grad if v.grad is not None else torch.zeros_like(v)).numpy().copy()
    return float(loss.detach()), grads


def build(case) -> golden.Golden:
    inputs = make_inputs(case)
    params = make_params(case)
    output = np.asarray(golden.spec_output(case.config, params, inputs))
    loss_np = float(golden.spec_loss(case.config, params, inputs))
    loss_ad, grads = autodiff_grads(case.config, params, inputs)
    if abs(loss_np - loss_ad) > 1e-10 * max(1.0, abs(loss_np)):
        raise RuntimeError(f"{case.name}: numpy loss {loss_np} != torch loss {loss_ad}")
    g = golden.Golden(case.name, case.config, inputs, params, output, loss_np, grads)
    errors = golden.fd_check(g)
    bad = {k: e for k, e in errors.items() if e > FD_TOLERANCE}
    if bad:
        raise RuntimeError(f"{case.name}: autodiff disagrees with finite differences: {bad}")
    return g


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1].strip())
    ap.add_argument("--only", nargs="*", help="case names (default: all)")
    ap.add_argument("--out", type=Path, default=golden.GOLDEN_DIR)
    args = ap.parse_args(argv)
    selected = [c for c in CASES if not args.only or c.name in args.only]
    if args.only and len(selected) != len(args.only):
        known = {c.name for c in CASES}
        print(f"unknown case(s): {sorted(set(args.only) - known)}", file=sys.stderr)
        return 2
    worst = 0.0
    for case in selected:
        g = build(case)
        golden.save(g, args.out)
        worst = max([worst, *golden.fd_check(g).values()])
    print(
        f"wrote {len(selected)} golden files to {args.out}; worst finite-difference error {worst:.2e}"
    )
    if args.out == golden.GOLDEN_DIR and not args.only:
        keep = {golden.path_for(c.name).name for c in CASES}
        for stale in golden.GOLDEN_DIR.glob("*.npz"):
            if stale.name not in keep:
                stale.unlink()
                print(f"removed stale {stale.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
