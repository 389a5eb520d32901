"""What a backend provides to ``flashcore train / eval / generate``: an :class:`Engine`.

An engine owns one language model and its AdamW state in its framework, and talks to the driver
in NumPy and canonical names only, so that checkpoints (and optimizer moments) move between
backends unchanged. Engines live in ``flashcore.<backend>.engine`` and are found by
:func:`load_engine`.

AdamW, the same in every engine: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
p -= lr (m / (1 - b1^k) / (sqrt(v / (1 - b2^k)) + eps) + wd p) with k the step count, decoupled
weight decay on every tensor of rank >= 2 only (kernels and embeddings; not norms, biases,
scale-offsets or biases tables), and global-norm gradient clipping before the update.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .config import LMConfig

__all__ = ["OptimConfig", "Engine", "load_engine", "BACKENDS", "decays"]

BACKENDS = ("torch", "jax", "tf")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW hyper-parameters (the learning rate comes with each step)."""

    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # global norm; 0 disables


def decays(name: str, shape: tuple[int, ...]) -> bool:
    """Whether AdamW's weight decay applies to a canonical tensor: kernels and embeddings."""
    return len(shape) >= 2 and not name.endswith(("qk.gamma", "qk.beta"))


class Engine(Protocol):
    """One LM in one framework. All arrays in and out are NumPy; names are canonical."""

    config: LMConfig

    def __init__(
        self,
        config: LMConfig,
        params: dict[str, np.ndarray],
        *,
        dtype: str = "float32",
        optim: OptimConfig | None = None,
        seed: int = 0,
    ) -> None: ...

    def train_step(self, inputs: np.ndarray, targets: np.ndarray, lr: float) -> float:
        """One AdamW step on (b, t) int64 batches; returns the loss before the update (nats)."""

    def eval_loss(self, inputs: np.ndarray, targets: np.ndarray) -> tuple[float, int]:
        """(sum of per-token losses in nats, number of tokens) without updating anything."""

    def params(self) -> dict[str, np.ndarray]:
        """Canonical float32 weights."""

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """AdamW moments ``m.<name>``, ``v.<name>`` (canonical layout) and ``step`` (())."""

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`optimizer_state` returned (from any engine)."""

    def generate(
        self,
        prompt: np.ndarray,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 0,
    ) -> np.ndarray:
        """Sample a continuation of ``prompt`` (b, t0) -> (b, t0 + max_new_tokens) int64."""


def load_engine(backend: str):
    """The Engine class of ``backend`` (ImportError naming what is missing)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    try:
        module = importlib.import_module(f"flashcore.{backend}.engine")
    except ImportError as err:
        raise ImportError(f"the {backend} backend is not available here: {err}") from err
    return module.Engine
