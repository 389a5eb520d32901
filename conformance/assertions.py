"""Float assertions for tests, with every tolerance from the one table (tolerances.py).

Two kinds of comparison, and no third:

- ``assert_close(got, want, quantity=...)``: a backend, port or low-precision run against the
  reference: the conformance table, ``TOLERANCES[(dtype, quantity)]``.
- ``assert_close(got, want, reorder=n)``: the same expression by another code path, memory layout,
  thread count or CPU (a module against the spec it calls, a file written on another machine):
  ``reorder_tolerance(dtype, n)``, a few ulps per unit of the longest reduction ``n``.

Bit equality (``np.testing.assert_array_equal``) is for bytes that were copied, or for the same
function called twice in one process on the same inputs; never for two code paths.

Errors are measured against the scale of the whole quantity (max |want| unless ``scale`` is
given), as the conformance runner does: |got - want| <= atol * scale + rtol * |want|.
"""

from __future__ import annotations

import numpy as np

from .runner import compare
from .tolerances import reorder_tolerance, tolerance

__all__ = ["assert_close", "assert_greedy_tokens", "to_numpy", "dtype_name"]


def dtype_name(a) -> str:
    """'float64', 'float32', 'bfloat16', 'float16' or the like, for numpy, torch, jax and tf."""
    dt = getattr(a, "dtype", None)
    name = str(dt if dt is not None else np.asarray(a).dtype)
    return name.rpartition(".")[2].replace("<dtype: '", "").rstrip("'>")


def to_numpy(a) -> np.ndarray:
    """A float64 NumPy copy of a numpy / torch / jax / tf array (bfloat16 included)."""
    if hasattr(a, "detach"):  # torch
        a = a.detach().cpu()
        return (a.double() if a.is_floating_point() else a).numpy()
    if hasattr(a, "numpy") and not isinstance(a, np.ndarray):  # tf
        a = a.numpy()
    a = np.asarray(a)
    return a.astype(np.float64) if a.dtype.kind == "f" or "float" in str(a.dtype) else a


def assert_close(
    got,
    want,
    *,
    quantity: str = "output",
    reorder: int | None = None,
    dtype: str | None = None,
    scale: float | None = None,
    err_msg: str = "",
) -> None:
    """Assert that ``got`` equals ``want`` within the table's tolerance.

    got, want: arrays of one shape (numpy, torch, jax or tf), or Python scalars.
    quantity: 'output', 'loss', 'grad_input' or 'grad_params' (the conformance table's rows).
    reorder: the longest reduction n when ``got`` is the same math as ``want`` summed in another
        order; then the bound is ``reorder_tolerance(dtype, n)`` instead of the conformance row.
    dtype: the precision the comparison is judged in (default: the lower of the two dtypes).
    scale: what absolute errors are measured against (default: max |want|).
    """
    if dtype is None:
        names = {dtype_name(got), dtype_name(want)}
        order = ["float16", "bfloat16", "float32", "float64"]
        dtype = next((n for n in order if n in names), "float64")
    if reorder is not None:
        rtol, atol = reorder_tolerance(dtype, reorder)
        how = f"reorder bound for n = {reorder}"
    else:
        rtol, atol = tolerance(dtype, quantity)
        how = f"{dtype} {quantity} row"
    g, w = to_numpy(got), to_numpy(want)
    if g.shape != w.shape:
        raise AssertionError(f"{err_msg}: shape {g.shape} != expected {w.shape}".lstrip(": "))
    err, where = compare(w, g, rtol, atol, scale)
    if not err <= 1.0:
        raise AssertionError(
            f"{err_msg + ': ' if err_msg else ''}error {err:.3g} x tolerance ({how}: rtol={rtol:.3g}, "
            f"atol={atol:.3g} x scale), worst at {where}"
        )


def assert_greedy_tokens(tokens, logits, *, reorder: int, dtype: str | None = None) -> None:
    """Assert that each token is the argmax of its logits up to rounding: a greedy decoder run by
    another code path than the forward that made ``logits`` may pick any token whose logit is
    within the reorder bound of the maximum (a near tie), and no other.

    tokens: (b, n) integer ids; logits: (b, n, v) from the reference forward.
    """
    t = to_numpy(tokens).astype(np.int64)
    lg = to_numpy(logits)
    if lg.shape[:-1] != t.shape:
        raise AssertionError(f"logits {lg.shape} do not match tokens {t.shape}")
    if dtype is None:
        dtype = dtype_name(logits)
    _, atol = reorder_tolerance(dtype, reorder)
    top = lg.max(-1)
    picked = np.take_along_axis(lg, t[..., None], axis=-1)[..., 0]
    slack = atol * max(float(np.abs(lg).max()), 1.0)
    bad = np.argwhere(picked < top - slack)
    if bad.size:
        i = tuple(bad[0])
        raise AssertionError(
            f"token {t[i]} at {i} has logit {picked[i]:.6g}, the maximum is {top[i]:.6g} "
            f"(token {int(lg[i].argmax())}); allowed slack {slack:.3g}"
        )
