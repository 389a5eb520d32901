"""The one tolerance table of the conformance suite. No test loosens it locally.

A result passes when, elementwise, |got - expected| <= atol * scale + rtol * |expected|. The scale
is the size of the whole quantity: max |expected| over the output or the input gradient; over all
parameter gradients of the case together (a (1,) gradient such as norm.scale is a sum over every
position with heavy cancellation and is judged against its siblings, not against itself); and
sum |output * cotangent| for a layer's loss sum(output * cotangent) (|loss| for an LM). The
reported error is the worst ratio |got - expected| / (atol * scale + rtol * |expected|); <= 1
passes.

Why these numbers:
- float64: the spec in float64 reproduces itself to ~1e-15; backends reorder sums (blocked
  matmuls, fused kernels), which costs a few ulps times the reduction length (<= 64 here).
- float32: unit roundoff 6e-8; the layer chains ~6 reductions of length <= 64 and a relu^2 that
  doubles relative error, giving ~1e-6 relative to the tensor's scale; 1e-5 leaves 10x headroom.
  Gradients go through one more pass of each reduction and the cotangent: 1e-4.
- bfloat16: unit roundoff 3.9e-3 (8-bit mantissa) for inputs, weights and every intermediate
  stored in bf16 (the attention core accumulates in float32). The golden weights are deliberately
  large (Q K^T / C of order 1-10, so that every relu^2 entry matters), and relu^2 doubles relative
  error, so even exact arithmetic on bf16-rounded weights and inputs misses by ~3e-2 of scale on a
  two-layer LM. Measured worst over the golden grid (torch, bf16 weights and inputs): output 5.6e-2,
  gradients 1.1e-1 of scale; the table leaves ~1.4x headroom. At this level bf16 rows still catch
  what breaks a port (a flipped sign, a shifted mask, a missing term: errors of order 1).
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
    ("bfloat16", "output"): (8e-2, 8e-2),
    ("bfloat16", "loss"): (8e-2, 8e-2),
    ("bfloat16", "grad_input"): (1.5e-1, 1.5e-1),
    ("bfloat16", "grad_params"): (1.5e-1, 1.5e-1),
}


def tolerance(dtype: str, quantity: str) -> tuple[float, float]:
    try:
        return TOLERANCES[(dtype, quantity)]
    except KeyError:
        raise KeyError(f"no tolerance for dtype {dtype!r} and quantity {quantity!r}") from None
