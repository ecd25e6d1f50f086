"""argparse value types shared by the stage parsers (bad values give argparse's usage error)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not >= 1")
    return value


def _number_in(text: str, low: float, high: float, *, include_low: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not ((low <= value) if include_low else (low < value)) or value > high:
        interval = f"{'[' if include_low else '('}{low:g}, {high:g}]"
        raise argparse.ArgumentTypeError(f"{text} is not in {interval}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    return _number_in(text, 0.0, 1.0, include_low=True)


def probability(text: str) -> float:
    """A number in (0, 1]."""
    return _number_in(text, 0.0, 1.0, include_low=False)
