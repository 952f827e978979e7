"""The type of every number flag: NaN and ±inf are refused at parse time."""

from __future__ import annotations

import argparse
import math


def finite_float(text: str) -> float:
    """A float flag's type: NaN and ±inf are refused (they would run, then write `NaN`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value
