"""The one tolerance table of the conformance suite. No test loosens it locally.

A result passes when, elementwise, |got - expected| <= atol * scale + rtol * |expected|, with
scale = max |expected| over the tensor (1 if that is 0). The reported error is the worst ratio
|got - expected| / (atol * scale + rtol * |expected|); <= 1 passes.

Why these numbers:
- float64: the spec in float64 reproduces itself to ~1e-15; backends reorder sums (blocked
  matmuls, fused kernels), which costs a few ulps times the reduction length (<= 64 here).
- float32: unit roundoff 6e-8; the layer chains ~6 reductions of length <= 64 and a relu^2 that
  doubles relative error, giving ~1e-6 relative to the tensor's scale; 1e-5 leaves 10x headroom.
  Gradients go through one more pass of each reduction and the cotangent: 1e-4.
- bfloat16: unit roundoff 3.9e-3 (8-bit mantissa) per rounding of inputs, weights and every
  intermediate stored in bf16 (the attention core accumulates in float32); a handful of
  roundings compound to ~2e-2 of scale. Gradients, with twice the chain: 5e-2.
"""

from __future__ import annotations

__all__ = ["TOLERANCES", "QUANTITIES", "tolerance"]

QUANTITIES = ("output", "loss", "grad_input", "grad_params")

# (dtype, quantity) -> (rtol, atol-relative-to-scale)
TOLERANCES: dict[tuple[str, str], tuple[float, float]] = {
    ("float64", "output"): (1e-10, 1e-10),
    ("float64", "loss"): (1e-10, 1e-10),
    ("float64", "grad_input"): (1e-9, 1e-9),
    ("float64", "grad_params"): (1e-9, 1e-9),
    ("float32", "output"): (1e-5, 1e-5),
    ("float32", "loss"): (1e-5, 1e-5),
    ("float32", "grad_input"): (1e-4, 1e-4),
    ("float32", "grad_params"): (1e-4, 1e-4),
    ("bfloat16", "output"): (2e-2, 2e-2),
    ("bfloat16", "loss"): (2e-2, 2e-2),
    ("bfloat16", "grad_input"): (5e-2, 5e-2),
    ("bfloat16", "grad_params"): (5e-2, 5e-2),
}


def tolerance(dtype: str, quantity: str) -> tuple[float, float]:
    try:
        return TOLERANCES[(dtype, quantity)]
    except KeyError:
        raise KeyError(f"no tolerance for dtype {dtype!r} and quantity {quantity!r}") from None
