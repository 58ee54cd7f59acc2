"""Wilder's Average True Range, bit-for-bit the TA-Lib convention."""

from __future__ import annotations

import numpy as np
from .jit import njit_cached

from ._checks import check_int


@njit_cached
def atr_nb(high, low, close, period):
    """Wilder ATR over float64 arrays; NaN before index `period`.

    TR[i] = max(h-l, |h-c[i-1]|, |l-c[i-1]|) for i >= 1 (TR[0] is undefined and unused);
    ATR[period] = mean(TR[1..period]); then ATR[i] = (ATR[i-1]*(period-1) + TR[i]) / period.
    """
    n = close.shape[0]
    out = np.full(n, np.nan)
    if n <= period:
        return out
    total = 0.0
    prev = 0.0
    for i in range(1, n):
        hl = high[i] - low[i]
        hc = abs(high[i] - close[i - 1])
        lc = abs(low[i] - close[i - 1])
        tr = hl
        if hc > tr:
            tr = hc
        if lc > tr:
            tr = lc
        if i < period:
            total += tr
        elif i == period:
            total += tr
            prev = total / period
            out[i] = prev
        else:
            # Same operation order as TA-Lib (multiply, add, divide) so results match to the last bits.
            prev = (prev * (period - 1) + tr) / period
            out[i] = prev
    return out


def _as_float_array(x, name: str) -> np.ndarray:
    """1-D float64 copy-free view of a numpy array or pandas Series; ValueError naming `name`."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: cannot convert to float64 ({exc}); "
                         "pass a numeric numpy array or pandas Series") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array or Series, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}: {int(bad.sum())} non-finite value(s), first at position {pos} ({arr[pos]!r}); "
            "drop or fill them before computing ATR"
        )
    return np.ascontiguousarray(arr)


def atr(high, low, close, period: int = 14) -> np.ndarray:
    """Wilder's ATR as TA-Lib computes it (float64, NaN before index `period`).

    Accepts numpy arrays or pandas Series of equal length with finite values.
    """
    p = check_int(period, "period", 1)
    h = _as_float_array(high, "high")
    lo = _as_float_array(low, "low")
    c = _as_float_array(close, "close")
    if not (h.shape[0] == lo.shape[0] == c.shape[0]):
        raise ValueError(f"high, low, close must have equal lengths, got {h.shape[0]}, {lo.shape[0]}, {c.shape[0]}")
    return atr_nb(h, lo, c, p)
