"""Sample weights of overlapping labels by their average uniqueness (Lopez de Prado, AFML ch. 4).

A Triple Barrier event at bar t0 spans the bars [t0, t1] up to its barrier touch. Where c[t] events
span bar t, each of them owns 1 / c[t] of it; an event's average uniqueness is the mean of 1 / c[t]
over its span. Labels that share most of their future are worth less than one independent label
each; weighting the loss by uniqueness stops a cluster of overlapping events from counting many
times, and the sum of the weights estimates how many independent labels the data really holds.
"""

from __future__ import annotations

import numpy as np
from .jit import njit_cached

__all__ = ["average_uniqueness"]


@njit_cached
def _average_uniqueness_nb(starts, ends, n_bars):
    """Mean over [starts[i], ends[i]] of 1 / (events spanning each bar), per event (spans inclusive)."""
    diff = np.zeros(n_bars + 1, dtype=np.int64)
    for i in range(len(starts)):
        diff[starts[i]] += 1
        diff[ends[i] + 1] -= 1
    # prefix sums of 1 / concurrency, so each event's mean is one subtraction
    inv = np.zeros(n_bars + 1)
    count = 0
    for t in range(n_bars):
        count += diff[t]
        inv[t + 1] = inv[t] + (1.0 / count if count > 0 else 0.0)
    out = np.empty(len(starts))
    for i in range(len(starts)):
        out[i] = (inv[ends[i] + 1] - inv[starts[i]]) / (ends[i] - starts[i] + 1)
    return out


def average_uniqueness(starts, ends, n_bars: int) -> np.ndarray:
    """Average uniqueness in (0, 1] of each event spanning bars ``starts[i]..ends[i]`` (inclusive) of
    ``n_bars`` bars; concurrency counts all the events given."""
    s = np.asarray(starts, dtype=np.int64)
    e = np.asarray(ends, dtype=np.int64)
    if s.shape != e.shape or s.ndim != 1:
        raise ValueError(f"starts and ends must be 1-D arrays of one length, got shapes {s.shape} and {e.shape}")
    if len(s) and (s.min() < 0 or e.max() >= n_bars or np.any(e < s)):
        bad = int(np.flatnonzero((s < 0) | (e >= n_bars) | (e < s))[0])
        raise ValueError(f"event {bad} spans bars {s[bad]}..{e[bad]}: spans must satisfy 0 <= start <= end < {n_bars}")
    return _average_uniqueness_nb(s, e, int(n_bars))
