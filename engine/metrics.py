"""Performance statistics of an equity curve and its trade list.

Conventions (all returns are per-bar simple returns of the equity curve):
- ``cagr``: ``(end / start) ** (1 / years) - 1`` with ``years`` the calendar time between the first
  and last timestamp in days / 365.25 (not bars / periods_per_year).
- ``risk_free``: an annual rate (0.02 = 2%), compounded to a per-bar rate ``rf = (1 + risk_free) **
  (1 / ppy) - 1``; Sharpe and Sortino use the excess returns ``x = r - rf`` (default 0: ``x = r``).
- ``ann_volatility``: ``std(r, ddof=1) * sqrt(ppy)``; ``sharpe``: ``mean(x) / std(x, ddof=1) * sqrt(ppy)``.
- ``sortino``: ``mean(x) / dd * sqrt(ppy)`` with downside deviation ``dd = sqrt(mean(min(x, 0) ** 2))``
  over *all* bars (target rf), not only the losing ones.
- ``max_drawdown``: most negative ``equity / running_max - 1`` (a fraction <= 0).
- ``max_drawdown_duration_*``: longest stretch from a running peak to the first bar back at or above
  it (or to the last bar if never recovered), in bars and in calendar days.
- Undefined ratios (zero volatility, no losing trade, no trades, ...) are ``None`` so that the
  dict is JSON-safe: every value is a Python ``int``, ``float``, ``str`` or ``None``, never NaN/inf.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from numba import njit

from engine.jsonable import jsonable

# Trading days per year assumed when a sample is too short to count bars per calendar year.
TRADING_DAYS_PER_YEAR = 252
_DAYS_PER_YEAR = 365.25
_SECONDS_PER_YEAR = _DAYS_PER_YEAR * 86_400.0


def infer_periods_per_year(index: pd.DatetimeIndex) -> float:
    """Bars per year of a bar index, by the rule of :func:`periods_per_year_rule`."""
    return _infer_periods_per_year(index)[0]


def periods_per_year_rule(index: pd.DatetimeIndex) -> str:
    """One line saying which rule :func:`infer_periods_per_year` used for ``index`` (for configs)."""
    return _infer_periods_per_year(index)[1]


def _infer_periods_per_year(index: pd.DatetimeIndex) -> tuple[float, str]:
    # Spans of at least a year: count the bar intervals actually observed per calendar year
    # (~252 for equity dailies, ~260 for FX dailies, bars/day * days/year for intraday).
    # Shorter spans: median bars per calendar date * 252 trading days (1 bar/day -> 252).
    if not isinstance(index, pd.DatetimeIndex):
        raise TypeError(f"infer_periods_per_year needs a DatetimeIndex, got {type(index).__name__}")
    if len(index) < 2:
        raise ValueError(f"infer_periods_per_year needs at least 2 timestamps, got {len(index)}")
    years = (index[-1] - index[0]).total_seconds() / _SECONDS_PER_YEAR
    if years >= 1.0:
        ppy = (len(index) - 1) / years
        return float(ppy), f"observed bars per calendar year: (n_bars - 1) / years = {ppy:.2f}"
    if index.tz is None:  # bars per calendar date from the integer ticks: a groupby costs 100x more
        ticks_per_day = 86_400 * {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[index.unit]
        day = index.asi8 // ticks_per_day
        if index.is_monotonic_increasing:  # runs of one date: no sort needed
            cuts = np.flatnonzero(day[1:] != day[:-1]) + 1
            counts = np.diff(np.concatenate(([0], cuts, [len(day)])))
        else:
            counts = np.unique(day, return_counts=True)[1]
        per_day = float(np.median(counts))
    else:  # calendar dates in the index's own time zone
        per_day = float(pd.Series(1, index=index).groupby(index.normalize()).size().median())
    ppy = per_day * TRADING_DAYS_PER_YEAR
    return ppy, (
        f"span < 1 year: median bars per date ({per_day:g}) * {TRADING_DAYS_PER_YEAR} = {ppy:.2f}"
    )


def compute_stats(
    equity: pd.Series,
    trades: pd.DataFrame | None = None,
    *,
    periods_per_year: float | None = None,
    exposure: float | None = None,
    risk_free: float = 0.0,
) -> dict:
    """Return/risk/trade statistics of an equity curve (see the module docstring for conventions).

    ``periods_per_year`` defaults to :func:`infer_periods_per_year` of the equity index;
    ``exposure`` (fraction of bars in the market) defaults to one computed from the trades'
    entry/exit times (bars with ``entry_time <= t < exit_time``). ``risk_free`` is an annual rate.
    """
    eq = _check_equity(equity)
    ppy = float(periods_per_year) if periods_per_year is not None else infer_periods_per_year(eq.index)
    if not ppy > 0:
        raise ValueError(f"periods_per_year must be > 0, got {periods_per_year}")
    if not (math.isfinite(risk_free) and -1.0 < risk_free < 1.0):
        raise ValueError(f"risk_free must be an annual rate in (-1, 1), e.g. 0.02 for 2%, got {risk_free}")
    values = eq.to_numpy(dtype=np.float64)
    r = values[1:] / values[:-1] - 1.0
    x = r - ((1.0 + risk_free) ** (1.0 / ppy) - 1.0) if risk_free else r  # excess returns

    years = (eq.index[-1] - eq.index[0]).total_seconds() / _SECONDS_PER_YEAR
    total_return = values[-1] / values[0] - 1.0
    cagr = (values[-1] / values[0]) ** (1.0 / years) - 1.0 if years > 0 and values[-1] > 0 else None

    std = float(np.std(r, ddof=1)) if len(r) >= 2 else math.nan
    x_std = std if x is r else (float(np.std(x, ddof=1)) if len(x) >= 2 else math.nan)
    mean = float(np.mean(x)) if len(x) else math.nan
    downside = float(np.sqrt(np.mean(np.minimum(x, 0.0) ** 2))) if len(x) else math.nan
    sqrt_ppy = math.sqrt(ppy)

    mdd, dd_bars, dd_days = _max_drawdown(values, eq.index)

    if trades is not None and len(trades):
        pnl = trades["pnl"].to_numpy(dtype=np.float64)
        gross_profit = float(pnl[pnl > 0].sum())
        gross_loss = float(-pnl[pnl < 0].sum())
        n_trades = int(len(pnl))
        win_rate = float((pnl > 0).mean())
        profit_factor = gross_profit / gross_loss if gross_loss > 0 else None
        avg_trade_return = float(trades["ret"].mean())
    else:
        n_trades, win_rate, profit_factor, avg_trade_return = 0, None, None, None
    if exposure is None:
        exposure = _exposure_from_trades(eq.index, trades)

    return jsonable(
        {
            "start": str(eq.index[0]),
            "end": str(eq.index[-1]),
            "n_bars": int(len(eq)),
            "start_value": values[0],
            "end_value": values[-1],
            "total_return": total_return,
            "cagr": cagr,
            "ann_volatility": std * sqrt_ppy,
            "sharpe": mean / x_std * sqrt_ppy if x_std > 0 else None,
            "sortino": mean / downside * sqrt_ppy if downside > 0 else None,
            "max_drawdown": mdd,
            "max_drawdown_duration_bars": dd_bars,
            "max_drawdown_duration_days": dd_days,
            "calmar": cagr / abs(mdd) if cagr is not None and mdd < 0 else None,
            "n_trades": n_trades,
            "win_rate": win_rate,
            "profit_factor": profit_factor,
            "avg_trade_return": avg_trade_return,
            "exposure": exposure,
            "periods_per_year": ppy,
            "risk_free": float(risk_free),
        }
    )


def period_returns(equity: pd.Series, freq: str = "Y") -> pd.Series:
    """Compounded return of each calendar period (``"Y"`` years, ``"M"`` months) of an equity curve.

    A period's return runs from the last bar of the previous period (for the first, from the first
    bar) to its own last bar, so the periods chain to the total return; a partial first or last
    period is its part only. Indexed by ``pd.Period``.
    """
    eq = _check_equity(equity)
    if freq not in ("Y", "M"):
        raise ValueError(f"freq must be 'Y' (years) or 'M' (months), got {freq!r}")
    ends = eq.groupby(eq.index.to_period(freq)).last()
    starts = ends.shift(1)
    starts.iloc[0] = eq.iloc[0]
    return (ends / starts - 1.0).rename("return")


def drawdown(equity: pd.Series) -> pd.Series:
    """Drawdown fraction (<= 0) of an equity curve relative to its running maximum."""
    eq = _check_equity(equity)
    return eq / eq.cummax() - 1.0


def _check_equity(equity: pd.Series) -> pd.Series:
    if not isinstance(equity, pd.Series) or not isinstance(equity.index, pd.DatetimeIndex):
        raise TypeError("equity must be a pd.Series with a DatetimeIndex (BacktestResult.equity)")
    if len(equity) < 2:
        raise ValueError(f"equity needs at least 2 bars to compute statistics, got {len(equity)}")
    values = equity.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError("equity must be finite and > 0 on every bar (the account was wiped out?)")
    return equity if equity.dtype == np.float64 else equity.astype(np.float64)


def _max_drawdown(values: np.ndarray, index: pd.DatetimeIndex) -> tuple[float, int, float]:
    mdd, start, end = _drawdown_nb(values)
    if end == start:
        return float(mdd), 0, 0.0
    return float(mdd), int(end - start), float((index[end] - index[start]).total_seconds() / 86_400.0)


@njit(cache=True)
def _drawdown_nb(values):
    """The most negative ``value / running max - 1``, and (peak bar, recovery bar) of the longest spell from a
    running peak to the first bar at or above it (the last bar if never recovered; (0, 0) if the curve never
    dips; the first longest spell wins)."""
    peak = values[0]
    mdd = values[0] / peak - 1.0
    for i in range(1, len(values)):
        if values[i] > peak:
            peak = values[i]
        d = values[i] / peak - 1.0
        if d < mdd:
            mdd = d
    best_start, best_end, best_bars = 0, 0, 0
    peak_i = 0
    for i in range(1, len(values)):
        if values[i] >= values[peak_i]:
            if i - peak_i > max(best_bars, 1):  # i - peak_i == 1: never under water
                best_bars = i - peak_i
                best_start, best_end = peak_i, i
            peak_i = i
    last = len(values) - 1
    if last > peak_i and last - peak_i > best_bars:  # still under water at the end
        best_start, best_end = peak_i, last
    return mdd, best_start, best_end


def _exposure_from_trades(index: pd.DatetimeIndex, trades: pd.DataFrame | None) -> float:
    if trades is None or not len(trades):
        return 0.0
    held = np.zeros(len(index), dtype=bool)
    reasons = trades["exit_reason"] if "exit_reason" in trades else [None] * len(trades)
    for entry, exit_, reason in zip(trades["entry_time"], trades["exit_time"], reasons):
        held |= (index >= entry) & (index < exit_)
        if reason == "end_of_data":
            held |= index == exit_  # a synthetic exit at the last close: that bar was held
    return float(held.mean())
