"""The masked-LM objective (BERT-style), spec storey: NumPy masking, the loss through :mod:`lm`.

    inputs, targets, loss_mask = mask_tokens(tokens, rng, mask_id=256, vocab_size=257)
    loss = mlm_loss(params, inputs, targets, loss_mask, config=config)  # block causal=False

Masking (on the host, from a seeded ``numpy.random.Generator``, so that every backend trains on
the same batches): in each row, ``round(rate * n)`` of its ``n`` real positions (at least one when
``n > 0``) are chosen uniformly without replacement; of the chosen, each independently becomes the
mask token with probability ``p_mask`` (0.8), a uniform random token other than the mask token with
probability ``p_random`` (0.1), and stays as it is otherwise (0.1). The loss is the cross-entropy
of the original tokens at the chosen positions only (:func:`flashcore.lm.lm_loss` with a loss
mask). Padding is never chosen and never counted.

The vocabulary grows by the mask token: byte models use ids 0..255 for bytes and
:data:`BYTE_MASK_ID` = 256, vocabulary :data:`BYTE_MLM_VOCAB` = 257. The block must be
bidirectional (``causal=False``): a causal block never sees the right-hand context.
"""

from __future__ import annotations

import numpy as np

from .config import LMConfig
from .lm import lm_loss

__all__ = [
    "BYTE_MASK_ID",
    "BYTE_MLM_VOCAB",
    "MLMError",
    "check_config",
    "mask_tokens",
    "mlm_loss",
]

BYTE_MASK_ID = 256
BYTE_MLM_VOCAB = 257


class MLMError(ValueError):
    """A masked-LM set-up that cannot work (a causal block, a mask id outside the vocabulary)."""


def _check_mask_id(mask_id: int, vocab_size: int) -> None:
    if not 0 <= int(mask_id) < int(vocab_size):
        raise MLMError(f"mask id {mask_id} is outside the vocabulary [0, {vocab_size})")


def check_config(config: LMConfig, mask_id: int = BYTE_MASK_ID) -> None:
    """MLMError unless ``config`` can train a masked LM with ``mask_id``: a bidirectional block
    (``causal=False``) and ``0 <= mask_id < config.vocab_size``."""
    if not isinstance(config, LMConfig):
        raise TypeError(f"config must be an LMConfig, got {type(config).__name__}")
    if config.block.causal:
        raise MLMError(
            "the masked-LM objective needs a bidirectional block (causal=False); "
            "this LM's block is causal"
        )
    _check_mask_id(mask_id, config.vocab_size)


def mask_tokens(
    tokens: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_id: int = BYTE_MASK_ID,
    vocab_size: int = BYTE_MLM_VOCAB,
    real: np.ndarray | None = None,
    rate: float = 0.15,
    p_mask: float = 0.8,
    p_random: float = 0.1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BERT-style masking of a batch. tokens: (b, t) ints in [0, vocab_size), never ``mask_id``;
    real: (b, t) bool, True at real positions (None: all real).

    Returns ``inputs`` (b, t) int64 (the corrupted tokens), ``targets`` (b, t) int64 (the
    original tokens) and ``loss_mask`` (b, t) bool (the chosen positions; a subset of ``real``).
    Consumes ``rng`` by a fixed amount per (b, t) shape: the same generator state gives the same
    masking.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must have shape (batch, time), got {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise TypeError(f"tokens must be integers, got {tokens.dtype}")
    _check_mask_id(mask_id, vocab_size)
    if vocab_size < 2:
        raise MLMError(f"vocab_size {vocab_size} leaves no token besides the mask token")
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    if p_mask < 0 or p_random < 0 or p_mask + p_random > 1:
        raise ValueError(f"p_mask {p_mask} and p_random {p_random} must be >= 0 with sum <= 1")
    b, t = tokens.shape
    real = np.ones((b, t), bool) if real is None else np.asarray(real)
    if real.shape != (b, t) or real.dtype != np.bool_:
        raise ValueError(f"real must be a (batch, time) = {(b, t)} bool array, got {real.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(
            f"token ids must be in [0, {vocab_size}), got {tokens.min()}..{tokens.max()}"
        )
    if np.any((tokens == mask_id) & real):
        raise MLMError(f"the tokens already hold the mask id {mask_id} at real positions")
    # choose: the k smallest random keys of each row's real positions
    keys = np.where(real, rng.random((b, t)), np.inf)  # (b, t)
    n_real = real.sum(axis=1)  # (b,)
    k = np.where(n_real > 0, np.maximum(1, np.rint(rate * n_real)), 0).astype(np.int64)  # (b,)
    rank = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")  # (b, t)
    chosen = (rank < k[:, None]) & real  # (b, t)
    # of the chosen: mask token, a random other token, or kept
    u = rng.random((b, t))  # (b, t)
    other = rng.integers(0, vocab_size - 1, size=(b, t))  # (b, t): skip mask_id below
    other = other + (other >= mask_id)
    targets = tokens.astype(np.int64)
    inputs = targets.copy()
    inputs = np.where(chosen & (u < p_mask), mask_id, inputs)
    inputs = np.where(chosen & (u >= p_mask) & (u < p_mask + p_random), other, inputs)
    return inputs.astype(np.int64), targets, chosen


def mlm_loss(
    params: dict,
    inputs,
    targets,
    loss_mask,
    *,
    config: LMConfig,
    mask=None,
    mask_id: int = BYTE_MASK_ID,
    xp=None,
    core=None,
    dropout=None,
):
    """Mean cross-entropy (nats) of ``targets`` at the chosen positions -> ().

    inputs, targets: (b, t) ints (from :func:`mask_tokens`); loss_mask: (b, t) bool (the chosen
    positions); mask: (b, t) bool real positions or None. :func:`flashcore.lm.lm_loss` with the
    loss mask, after :func:`check_config`.
    """
    check_config(config, mask_id)
    return lm_loss(
        params,
        inputs,
        targets,
        config=config,
        mask=mask,
        loss_mask=loss_mask,
        xp=xp,
        core=core,
        dropout=dropout,
    )
