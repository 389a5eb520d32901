"""Argument types shared by the commands' parsers."""

from __future__ import annotations

import argparse

__all__ = ["positive", "nonneg_int", "probability", "parse_length", "parse_lengths"]


def positive(kind):
    """An argparse type: ``kind(text)`` that must be > 0."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def nonneg_int(text: str) -> int:
    """An argparse type: an int >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def probability(text: str) -> float:
    """An argparse type: a float in (0, 1] (a top-p nucleus mass)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def parse_length(text: str) -> int:
    """'4K' -> 4096, '1M' -> 1048576, '1000' -> 1000."""
    text = text.strip().upper()
    scale = {"K": 1024, "M": 1024**2}.get(text[-1:], 1)
    return int(text[:-1] if scale > 1 else text) * scale


def parse_lengths(ap: argparse.ArgumentParser, text: str) -> list[int]:
    """'1K,4K,1000' -> [1024, 4096, 1000]; anything else is ``ap``'s usage error."""
    try:
        return [parse_length(s) for s in text.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--lengths must be integers or nK, got {text!r}")
