"""Progress bars for the commands (tqdm), on stderr, shown only on a terminal and without --quiet.

with bar(total, desc="train", quiet=args.quiet) as pb:
    pb.update(1); pb.set_postfix_str("loss 2.31")
note("a line printed above the bar")
"""

from __future__ import annotations

import sys

from tqdm import tqdm

__all__ = ["bar", "iterate", "note", "shown"]


def shown(quiet: bool = False) -> bool:
    """Whether a bar would be drawn: not ``quiet`` and stderr is a terminal."""
    return not quiet and sys.stderr.isatty()


def bar(total: int, *, desc: str, quiet: bool = False, initial: int = 0, unit: str = "it") -> tqdm:
    """A tqdm bar over ``total`` items (``initial`` already done); a silent one when not shown."""
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not shown(quiet),
        dynamic_ncols=True,
        leave=True,
    )


def iterate(items, *, desc: str, quiet: bool = False, unit: str = "it"):
    """``items`` with a bar over them (a plain iteration when not shown)."""
    items = list(items)
    with bar(len(items), desc=desc, quiet=quiet, unit=unit) as pb:
        for item in items:
            yield item
            pb.update(1)


def note(text: str, *, file=None) -> None:
    """Print ``text`` (on stderr, or ``file``) without breaking a bar being drawn."""
    out = file or sys.stderr
    tqdm.write(text, file=out)
    out.flush()
