"""How often bars come: the median spacing of a frame's timestamps, and its name for messages.

An agent's features and barriers are counted in bars, so one trained on daily bars means something
else on hourly ones; the card records the spacing it was trained on and ``run_backtest`` compares.
"""

from __future__ import annotations

import numpy as np

# Spacings within this factor of each other are the same frequency (daily bars with weekends and
# holidays still have a median spacing of one day; a 4-hour file is not hourly).
SAME_FREQUENCY = 1.5
_UNITS = (("week", 7 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def bar_seconds(index) -> float | None:
    """Median spacing of consecutive distinct timestamps in seconds (NaT and order ignored); None with
    fewer than 2 distinct ones."""
    t = np.asarray(index, dtype="datetime64[ns]")
    steps = np.diff(np.sort(t[~np.isnat(t)]).astype(np.int64))
    steps = steps[steps > 0]
    return float(np.median(steps)) / 1e9 if len(steps) else None


def describe_spacing(seconds: float) -> str:
    """'1 day', '4 hours', '5 minutes': the largest unit the spacing is a whole number of, else rounded."""
    for name, size in _UNITS:
        if seconds >= size:
            n = seconds / size
            n = round(n) if abs(n - round(n)) < 0.05 else round(n, 1)
            return f"{n:g} {name}{'' if n == 1 else 's'}"
    return f"{seconds:g} seconds"


def same_frequency(a: float, b: float) -> bool:
    """Whether two bar spacings (seconds) are the same frequency, up to ``SAME_FREQUENCY``."""
    return max(a, b) <= SAME_FREQUENCY * min(a, b)
