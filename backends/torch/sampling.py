"""Next-token choice from logits: greedy, or temperature and top-k sampling."""

from __future__ import annotations

import torch

__all__ = ["next_token"]


def next_token(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits: (b, v) -> token ids (b,) int64.

    greedy: argmax. Otherwise sample from softmax(logits / temperature), restricted to the
    ``top_k`` largest logits when given; ``generator`` makes the draw reproducible.
    """
    if greedy:
        return torch.argmax(logits, dim=-1)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (or greedy=True), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    scaled = logits.float() / temperature  # (b, v)
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]  # (b, 1)
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
