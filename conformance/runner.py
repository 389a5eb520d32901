"""Run golden cases through an adapter and judge them against the tolerance table.

One :class:`Check` per (backend, case, dtype, quantity); quantities are ``output``, ``loss``,
``grad_input`` (layers only) and ``grad_params``. Used by the pytest suite in conformance/tests
and by ``flashcore conformance``.
"""

from __future__ import annotations

import fnmatch
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import golden
from .adapters import Adapter
from .tolerances import tolerance

__all__ = [
    "Check",
    "compare",
    "run_case",
    "XFail",
    "XFAIL_DIR",
    "load_xfails",
    "dead_xfails",
    "repro_command",
]

# the in-tree expected-failure files: conformance/xfail/<backend>.txt (the folder ships with the
# package; it holds a README and, while a backend has known failures, that backend's file)
XFAIL_DIR = Path(__file__).resolve().parent / "xfail"


@dataclass
class Check:
    backend: str
    case: str
    group: str
    dtype: str
    quantity: str
    status: str  # pass | fail | skip | xfail | stale-xfail
    error: float | None = None  # worst |got - exp| / (atol * scale + rtol * |exp|); <= 1 passes
    rtol: float | None = None
    atol: float | None = None
    worst: dict = field(default_factory=dict)  # tensor, index, expected, got
    reason: str = ""

    @property
    def test_id(self) -> str:
        return f"{self.backend}/{self.case}/{self.dtype}/{self.quantity}"

    def describe(self) -> str:
        """One paragraph for a failure: the case, the worst element and how to reproduce it."""
        w = self.worst
        if not w:
            return f"{self.test_id}: {self.reason}\n  reproduce: {repro_command(self)}"
        where = f"{w.get('tensor', '')}[{', '.join(map(str, w.get('index', ())))}]"
        return (
            f"{self.test_id}: error {self.error:.3g} x tolerance (rtol={self.rtol:g}, "
            f"atol={self.atol:g} x scale {w.get('scale', 0):.3g}); worst element {where}: "
            f"expected {w.get('expected')!r}, got {w.get('got')!r}\n"
            f"  reproduce: {repro_command(self)}"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "test_id": self.test_id}


def repro_command(check: Check) -> str:
    return (
        f"flashcore conformance --backend {shlex.quote(check.backend)} "
        f"--case {shlex.quote(check.case)} --dtype {check.dtype}"
    )


def compare(
    expected: np.ndarray, got: np.ndarray, rtol: float, atol: float, scale: float | None = None
) -> tuple[float, dict]:
    """Worst ratio |got - exp| / (atol * scale + rtol * |exp|) and where it is (NaN counts as inf).

    ``scale`` defaults to max |expected| (1 if that is 0).
    """
    expected = np.asarray(expected, np.float64)
    got = np.asarray(got, np.float64)
    if expected.shape != got.shape:
        return float("inf"), {"shape": f"expected {expected.shape}, got {got.shape}"}
    if expected.size == 0:
        return 0.0, {}
    if scale is None:
        scale = float(np.max(np.abs(expected))) or 1.0
    bound = atol * scale + rtol * np.abs(expected)
    diff = np.abs(got - expected)
    ratio = np.where(np.isfinite(diff), diff / bound, np.inf)
    flat = int(np.argmax(ratio))
    idx = np.unravel_index(flat, expected.shape)
    return float(ratio.reshape(-1)[flat]), {
        "index": [int(i) for i in idx],
        "expected": float(expected[idx]),
        "got": float(got[idx]),
        "scale": scale,
    }


def loss_scale(g: golden.Golden) -> float:
    """The magnitude a loss error is judged against: sum |output * cotangent| for layers (their
    loss is a sum with cancellation: a small loss can come from large terms), |loss| for LMs."""
    if "cotangent" in g.inputs:
        return float(np.sum(np.abs(g.output * g.inputs["cotangent"]))) or 1.0
    return abs(g.loss) or 1.0


def run_case(
    adapter: Adapter, g: golden.Golden, dtype: str, backend: str | None = None
) -> list[Check]:
    """Run one golden case in one dtype; return one Check per quantity.

    ``backend`` is the id the checks carry (default: the adapter's name); pass the string the
    adapter was loaded by (e.g. ``module:Class``) so that the reproduce line works.
    """
    group = g.case.group
    backend = backend or adapter.name
    checks: list[Check] = []

    def judge(
        quantity: str, pairs: list[tuple[str, np.ndarray, np.ndarray]], scale: float | None = None
    ) -> None:
        rtol, atol = tolerance(dtype, quantity)
        worst_err, worst = -1.0, {}
        for tensor, exp, got in pairs:
            err, info = compare(exp, got, rtol, atol, scale)
            if err > worst_err:
                worst_err, worst = err, {"tensor": tensor, **info}
        status = "pass" if worst_err <= 1.0 else "fail"
        checks.append(
            Check(backend, g.name, group, dtype, quantity, status, worst_err, rtol, atol, worst)
        )

    quantities = ["output", "loss", *(["grad_input"] if "x" in g.grads else []), "grad_params"]
    why = adapter.unsupported(g.config, g.inputs)
    if why:  # a case the backend cannot express: every check skipped, with the reason
        return [Check(backend, g.name, group, dtype, q, "skip", reason=why) for q in quantities]
    try:
        with adapter.strict_precision():
            res = adapter.run(g.config, g.params, g.inputs, dtype)
    except Exception as err:  # a port that cannot run a case fails it, with the reason
        reason = f"the adapter raised {type(err).__name__}: {err}"
        return [
            Check(backend, g.name, group, dtype, q, "fail", float("inf"), reason=reason)
            for q in quantities
        ]
    judge("output", [("output", g.output, res.output)])
    judge("loss", [("loss", np.asarray(g.loss), np.asarray(res.loss))], loss_scale(g))
    quantities = (["grad_input"] if "x" in g.grads else []) + ["grad_params"]
    if res.grads is None:
        for q in quantities:
            checks.append(
                Check(backend, g.name, group, dtype, q, "skip", reason=res.no_grads_reason)
            )
        return checks
    missing = sorted(set(g.grads) - set(res.grads))
    if missing:
        for q in quantities:
            checks.append(
                Check(
                    backend,
                    g.name,
                    group,
                    dtype,
                    q,
                    "fail",
                    float("inf"),
                    reason=f"adapter returned no gradient for {missing}",
                )
            )
        return checks
    if "x" in g.grads:
        judge("grad_input", [("grad/x", g.grads["x"], res.grads["x"])])
    params = [(f"grad/{k}", v, res.grads[k]) for k, v in sorted(g.grads.items()) if k != "x"]
    judge("grad_params", params, max(float(np.max(np.abs(v))) for _, v, _ in params) or 1.0)
    return checks


@dataclass
class XFail:
    pattern: str  # fnmatch pattern over test ids: backend/case/dtype/quantity
    reason: str
    line: int
    used: bool = False


def load_xfails(backend: str, directory: Path | None = None) -> list[XFail]:
    """Expected failures of one backend: ``xfail/<backend>.txt``, one ``pattern  # reason`` a line.

    A line without a reason is an error: every expected failure must say why.
    """
    path = (directory or XFAIL_DIR) / f"{backend}.txt"
    if not path.exists():
        return []
    out = []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pattern, _, reason = line.partition("#")
        if not reason.strip():
            raise ValueError(f"{path}:{n}: an expected failure needs a reason after '#': {raw!r}")
        out.append(XFail(pattern.strip(), reason.strip(), n))
    return out


def dead_xfails(xfails: list[XFail], check_ids: list[str]) -> list[XFail]:
    """The entries whose pattern matches none of ``check_ids`` (``backend/case/dtype/quantity``):
    a typo or a renamed case, an entry that silently excuses nothing."""
    return [xf for xf in xfails if not any(fnmatch.fnmatchcase(i, xf.pattern) for i in check_ids)]


def apply_xfails(checks: list[Check], xfails: list[XFail]) -> list[Check]:
    """Mark failures listed as expected (xfail) and listed checks that now pass (stale-xfail)."""
    for c in checks:
        for xf in xfails:
            if fnmatch.fnmatchcase(c.test_id, xf.pattern):
                xf.used = True
                if c.status == "fail":
                    c.status, c.reason = "xfail", xf.reason
                elif c.status == "pass":
                    c.status = "stale-xfail"
                    c.reason = f"listed as expected failure (line {xf.line}: {xf.reason}) but passes: remove the entry"
    return checks
