"""Numbers for people: a score with its interval, fixed decimals, a dash for nothing, and a sentence instead of an
empty table. The reports are read, not parsed; the full frames stay in the metrics JSON.
"""

from __future__ import annotations

import html
import math

import pandas as pd

DASH = "–"


def missing(value) -> bool:
    """None, NaN and non-numbers read as "not measured"."""
    if value is None:
        return True
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def number(value, digits: int = 2) -> str:
    """Fixed decimals, or a dash when there is nothing (never "nan", never 2.03e-14)."""
    return DASH if missing(value) else f"{float(value):.{digits}f}"


def score(accuracy, low=None, high=None, digits: int = 2) -> str:
    """'0.38 [0.14, 0.69]': a share with its 95 % interval; the interval is left out when unknown."""
    if missing(accuracy):
        return DASH
    text = number(accuracy, digits)
    if not (missing(low) or missing(high)):
        text += f" [{number(low, digits)}, {number(high, digits)}]"
    return text


def signed(value, low=None, high=None, digits: int = 2) -> str:
    """'+0.36 [+0.22, +0.48]': a difference with its 95 % interval."""
    if missing(value):
        return DASH
    text = f"{float(value):+.{digits}f}"
    if not (missing(low) or missing(high)):
        text += f" [{float(low):+.{digits}f}, {float(high):+.{digits}f}]"
    return text


def milliseconds(seconds) -> str:
    return DASH if missing(seconds) else f"{1000 * float(seconds):.1f}"


class Note:
    """One sentence shown where a table would be: why the section is empty and how to fill it."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text

    def __eq__(self, other) -> bool:
        return isinstance(other, Note) and other.text == self.text

    def _repr_markdown_(self) -> str:
        return f"*{html.escape(self.text)}*"


class Table:
    """A small frame shown without its 0, 1, 2 row numbers; `.frame` is the DataFrame for code and tests."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame

    def __repr__(self) -> str:
        return self.frame.to_string(index=False)

    def _repr_html_(self) -> str:
        return self.frame.to_html(index=False, border=0, classes="t2ilab-table")

    def __len__(self) -> int:
        return len(self.frame)


def table_or_note(rows: list[dict], note: str) -> Table | Note:
    """The rows as a Table (plain headers, no row numbers), or the note when there are none."""
    return Table(pd.DataFrame(rows)) if rows else Note(note)
