"""TensorBoard event files of ``flashcore train``: ``RUN/tb/``, beside ``log.jsonl``.

Every run writes the scalars of its ``log.jsonl`` as TensorBoard events, whatever the backend,
through one writer (tensorboardX's ``SummaryWriter``; it needs neither TensorFlow nor torch):

    train/loss  train/lr  train/grad_norm  train/tokens_per_s     every --log-every steps
    eval/loss   eval/bits_per_byte                                 at every evaluation

    tensorboard --logdir RUN              # one run
    tensorboard --logdir runs/quality     # every run of a `flashcore quality` study, side by side

Only the main data-parallel process writes (:class:`EventLog` of ``None`` writes nothing). A
resumed run starts a new event file with ``purge_step`` at the checkpoint's step + 1, so that
TensorBoard drops the events the stopped run wrote after its checkpoint, as ``log.jsonl`` is cut
back. Without tensorboardX installed, training goes on with one notice and no events.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

from .runstate import EVENTS_DIR

__all__ = ["EVENTS_DIR", "EventLog"]

_MISSING = "no TensorBoard events: tensorboardX is not installed (pip install tensorboardX)"


class EventLog:
    """Scalars of one run, written as TensorBoard events under ``folder`` (None: nothing).

    ``start``: the step the run continues from (0: a new run); events after it that an earlier
    process wrote are dropped by TensorBoard. ``say``: where the one-line notice goes when
    tensorboardX is missing."""

    def __init__(self, folder: Path | None, *, start: int = 0, say: Callable[[str], None] = print):
        self._writer = None
        if folder is None:
            return
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            say(_MISSING)
            return
        folder.mkdir(parents=True, exist_ok=True)
        purge = {"purge_step": start + 1} if start else {}
        # tensorboardX names the file by the second and the host: two runs within one second
        # (a quick resume) would share it; the nanoseconds keep them apart and in order (the
        # order TensorBoard reads them in, which its purge_step relies on)
        suffix = f".{time.time_ns():020d}"
        self._writer = SummaryWriter(
            logdir=str(folder), flush_secs=30, filename_suffix=suffix, **purge
        )

    @property
    def active(self) -> bool:
        """Whether events are being written."""
        return self._writer is not None

    def scalars(self, step: int, prefix: str, values: dict[str, float | None]) -> None:
        """``prefix/name`` = value at ``step`` for every finite value (None and NaN are left
        out: an unknown bits per byte, a gradient norm before the first step)."""
        if self._writer is None:
            return
        for name, value in values.items():
            if value is not None and math.isfinite(float(value)):
                self._writer.add_scalar(f"{prefix}/{name}", float(value), global_step=step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
