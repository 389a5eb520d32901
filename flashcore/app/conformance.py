"""``flashcore conformance``: :func:`flashcore.conformance.report.main` with a progress bar over
the cases (the gate itself imports nothing from the application)."""

from __future__ import annotations

from ..conformance import report
from . import progress

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the conformance gate (see ``flashcore conformance --help``); the exit status."""
    return report.main(argv, each=progress.iterate)
