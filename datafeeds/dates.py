"""Dates given as text (options, start/end arguments): ISO 8601 only, so day and month are never guessed."""

from __future__ import annotations

import re

import pandas as pd

# 2016, 2016-01, 2016-01-02, 2016-01-02 09:30, 2016-01-02T09:30:00.5, optionally with a UTC offset or Z
_ISO = re.compile(r"\d{4}(-\d{2}(-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?)?)?")


def parse_date(text: str) -> pd.Timestamp:
    """``text`` as a Timestamp if it is an ISO date or date-time (``2016-01-02``, ``2016-01-02 09:30``,
    also ``2016-01`` and ``2016``: the period's first instant); otherwise ValueError.

    ``01/02/2016`` is refused: it reads as 1 February or 2 January depending on who wrote it, and
    pandas would guess month-first or day-first from the numbers.
    """
    s = str(text).strip()
    if not _ISO.fullmatch(s):
        raise ValueError(f"{text!r} is not an ISO date: write it as YYYY-MM-DD (e.g. 2016-01-02), "
                         "optionally with a time (2016-01-02 09:30)")
    try:
        return pd.Timestamp(s)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid date (no such day?)") from None
