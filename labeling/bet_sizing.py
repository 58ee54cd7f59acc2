"""Bet sizing from predicted probabilities (AFML ch. 10): the size of a bet, discretised, and the average of
the bets active at each bar.

Snippet 10.1 for two outcomes: ``z = (p - 1/2) / sqrt(p (1 - p))`` and ``size = side * (2 Phi(z) - 1)``,
where ``2 Phi(z) - 1 = erf(z / sqrt(2))``: 0 at p = 1/2, +-1 as p reaches 0 or 1. Snippet 10.3 rounds a size
to a multiple of ``step`` (fewer, larger trades; ``step`` 0 keeps it continuous). Snippet 10.2 averages the
sizes of every bet still open at a bar, so overlapping bets share the position instead of each taking it all.
``entry_sizes`` puts the three together for the backtests: the fraction of the full size an entry takes.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np
import pandas as pd

from .jit import njit_cached


class ActiveBets(NamedTuple):
    """``average_active_nb``'s result, per bar: the mean size of the bets open there and how many are."""

    size: np.ndarray
    count: np.ndarray


@njit_cached
def long_size_nb(p):
    """AFML 10.1 for one bet of probability ``p`` (not NaN) of paying: ``2 Phi(z) - 1`` in [-1, 1]."""
    if p <= 0.0 or p >= 1.0:  # z is +-infinite there
        return -1.0 if p <= 0.0 else 1.0
    return math.erf((p - 0.5) / math.sqrt(p * (1.0 - p)) / math.sqrt(2.0))


@njit_cached
def bet_size_nb(prob, side, step):
    """The size in [-1, 1] of a bet on ``side`` (+1/-1) with probability ``prob`` of paying, rounded to a multiple
    of ``step`` (0: not rounded); NaN probability -> NaN size."""
    out = np.empty(prob.shape[0])
    for i in range(prob.shape[0]):
        p = prob[i]
        if np.isnan(p):
            out[i] = np.nan
            continue
        m = long_size_nb(p) * side[i]
        if step > 0.0:
            m = min(1.0, max(-1.0, np.round(m / step) * step))
        out[i] = m
    return out


@njit_cached
def average_active_nb(start, end, size, n):
    """Per bar 0..n-1, the mean ``size`` of the bets open there (``start[k] <= bar < end[k]``; a bet is open from
    its event bar to the bar before its exit; a NaN size is no bet) and their count; 0 where none is open."""
    total = np.zeros(n + 1)
    count = np.zeros(n + 1, dtype=np.int64)
    for k in range(start.shape[0]):  # difference arrays: + at the start, - at the end
        if np.isnan(size[k]):  # no bet
            continue
        total[start[k]] += size[k]
        total[end[k]] -= size[k]
        count[start[k]] += 1
        count[end[k]] -= 1
    mean = np.zeros(n)
    open_ = np.zeros(n, dtype=np.int64)
    running, active = 0.0, 0
    for i in range(n):
        running += total[i]
        active += count[i]
        open_[i] = active
        mean[i] = running / active if active > 0 else 0.0
    return ActiveBets(mean, open_)


@njit_cached
def entry_sizes_nb(prob, side, horizon, step):
    """Per bar, the fraction of the full size an entry there takes under AFML sizing: every bar with a probability
    (that its bet pays) and a side (+1/-1; 0 = no bet) is a bet open for ``horizon`` bars, sized by 10.1 on its
    side (0 below p = 1/2: a passed bet); the sizes of the bets open at the bar are averaged (10.2), rounded to
    ``step`` (10.3) and read on the bar's own side: 0 where that average leans the other way, or the bar has no
    bet. Reads bars <= t only."""
    n = prob.shape[0]
    size = np.empty(n)
    for i in range(n):
        if side[i] == 0 or np.isnan(prob[i]):
            size[i] = np.nan
        else:  # a bet the model expects to lose (p < 1/2) is passed, size 0, not turned around (AFML 10.1's pred 0)
            size[i] = side[i] * max(0.0, long_size_nb(prob[i]))
    out = np.zeros(n)
    total, count = 0.0, 0
    for i in range(n):
        if not np.isnan(size[i]):
            total += size[i]
            count += 1
        j = i - horizon  # the bet of bar j closed before bar i
        if j >= 0 and not np.isnan(size[j]):
            total -= size[j]
            count -= 1
        if side[i] == 0 or np.isnan(size[i]) or count == 0:
            continue
        m = total / count
        if step > 0.0:
            m = min(1.0, max(-1.0, np.round(m / step) * step))
        m *= side[i]
        out[i] = m if m > 0.0 else 0.0
    return out


def entry_sizes(prob: np.ndarray, side: np.ndarray, rules) -> np.ndarray:
    """The size multiplier of an entry at each bar under ``rules`` (a ``labeling.BarrierRules``): 1 for
    ``sizing="fixed"``, else :func:`entry_sizes_nb` over ``rules.horizon`` and ``rules.size_step``. ``prob`` and
    ``side`` (int, +1/-1/0) are aligned float/int arrays, as both backtest engines read them."""
    prob = np.ascontiguousarray(prob, dtype=np.float64)
    if rules.sizing == "fixed":
        return np.ones(len(prob))
    return entry_sizes_nb(prob, np.ascontiguousarray(side, dtype=np.float64), int(rules.horizon),
                          float(rules.size_step))


def bet_size(prob, side=1, *, step: float = 0.0) -> pd.Series:
    """AFML 10.1 sizes of ``prob`` (a Series of probabilities that the bet pays) on ``side`` (+1/-1, or a Series
    of them on the same index), rounded to multiples of ``step`` in [0, 1) (0: continuous)."""
    if not isinstance(prob, pd.Series):
        raise ValueError(f"prob must be a pandas Series of probabilities, got {type(prob).__name__}")
    if isinstance(step, bool) or not isinstance(step, numbers.Real) or not 0.0 <= step < 1.0:
        raise ValueError(f"step must be in [0, 1) (a fraction of the full size; 0 = not rounded), got {step!r}")
    p = prob.to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = (p < 0.0) | (p > 1.0)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"prob at {prob.index[k]} is {p[k]}: probabilities are in [0, 1] (NaN = no bet)")
    sides = np.full(len(p), side, dtype=np.float64) if np.ndim(side) == 0 else pd.Series(side).reindex(
        prob.index).to_numpy(dtype=np.float64)
    ok = np.isin(sides, (1.0, -1.0))
    if not ok.all():
        k = int(np.flatnonzero(~ok)[0])
        raise ValueError(f"side at {prob.index[k]} is {sides[k]:g}; a side is +1 (long) or -1 (short)")
    return pd.Series(bet_size_nb(p, sides, float(step)), index=prob.index, name="size")


def average_active(sizes: pd.Series, t1: pd.Series, index: pd.DatetimeIndex) -> pd.Series:
    """AFML 10.2: at each bar of ``index``, the mean of ``sizes`` (indexed by event time) over the bets open there,
    a bet being open from its event bar up to the bar before ``t1`` (its exit, e.g. a label's ``t1``)."""
    index = pd.DatetimeIndex(index)
    exits = pd.DatetimeIndex(t1.reindex(sizes.index))
    start, end = index.get_indexer(sizes.index), index.get_indexer(exits)
    for name, pos, stamps in (("sizes", start, sizes.index), ("t1", end, exits)):
        if (pos < 0).any():
            k = int(np.flatnonzero(pos < 0)[0])
            raise ValueError(f"{name} holds {stamps[k]}, which is not a bar of the index: use the same bars")
    if (end < start).any():
        k = int(np.flatnonzero(end < start)[0])
        raise ValueError(f"the bet at {sizes.index[k]} ends at {exits[k]}, before it starts")
    out = average_active_nb(start.astype(np.int64), end.astype(np.int64), sizes.to_numpy(np.float64), len(index))
    return pd.Series(out.size, index=index, name="size")
