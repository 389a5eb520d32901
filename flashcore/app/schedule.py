"""The learning-rate schedule of ``flashcore train`` (and ``flashcore quality``)."""

from __future__ import annotations

import math

__all__ = ["lr_at"]


def lr_at(
    step: int, *, lr: float, warmup: int, steps: int, schedule: str, min_ratio: float
) -> float:
    """Learning rate at ``step`` (1-based): linear warmup, then cosine / linear decay or constant."""
    if warmup and step <= warmup:
        return lr * step / warmup
    if schedule == "constant" or steps <= warmup:
        return lr
    frac = min(1.0, (step - warmup) / max(1, steps - warmup))
    if schedule == "linear":
        return lr * (1.0 - (1.0 - min_ratio) * frac)
    return lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac)))
