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
import weakref

import numpy as np
import pandas as pd
from labeling.jit import njit_cached

from engine.config import check_risk_free
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


# (weak reference to the last index, its answer): a backtest asks for one index's rule and value
# several times (inputs, stats, config). An index is immutable, so identity is enough.
_last_inferred: tuple = (lambda: None, None)


def _infer_periods_per_year(index: pd.DatetimeIndex) -> tuple[float, str]:
    global _last_inferred
    ref, answer = _last_inferred
    if ref() is index:
        return answer
    answer = _infer_periods_per_year_uncached(index)
    _last_inferred = (weakref.ref(index), answer)
    return answer


def _infer_periods_per_year_uncached(index: pd.DatetimeIndex) -> tuple[float, str]:
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
    if index.tz is None:  # bars per calendar date from the integer ticks: a groupby costs far more (docs/DECISIONS.md)
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
    eq = _check_equity(equity, check_values=False)  # checked in the stats kernel's pass
    ppy = float(periods_per_year) if periods_per_year is not None else infer_periods_per_year(eq.index)
    if not ppy > 0:
        raise ValueError(f"periods_per_year must be > 0, got {periods_per_year}")
    risk_free = check_risk_free(risk_free)
    values = eq.to_numpy(dtype=np.float64)
    rf_bar = (1.0 + risk_free) ** (1.0 / ppy) - 1.0 if risk_free else 0.0
    ok, mean, std, downside, mdd, dd_start, dd_end = curve_stats_nb(values, rf_bar)
    if not ok:
        raise ValueError(_BAD_EQUITY)  # (the std of the excess returns r - rf is that of r)

    years = (eq.index[-1] - eq.index[0]).total_seconds() / _SECONDS_PER_YEAR
    total_return = values[-1] / values[0] - 1.0
    cagr = (values[-1] / values[0]) ** (1.0 / years) - 1.0 if years > 0 and values[-1] > 0 else None
    sqrt_ppy = math.sqrt(ppy)
    dd_bars, dd_days = _spell(eq.index, dd_start, dd_end)

    if trades is not None and len(trades):
        n_trades = int(len(trades))
        wins, gross_profit, gross_loss, ret_sum = trade_stats_nb(trades["pnl"].to_numpy(dtype=np.float64),
                                                                 trades["ret"].to_numpy(dtype=np.float64))
        win_rate = wins / n_trades
        profit_factor = gross_profit / gross_loss if gross_loss > 0 else None
        avg_trade_return = ret_sum / n_trades
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
            "sharpe": mean / std * sqrt_ppy if std > 0 else None,
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


_BAD_EQUITY = "equity must be finite and > 0 on every bar (the account was wiped out?)"


def _check_equity(equity: pd.Series, check_values: bool = True) -> pd.Series:
    if not isinstance(equity, pd.Series) or not isinstance(equity.index, pd.DatetimeIndex):
        raise TypeError("equity must be a pd.Series with a DatetimeIndex (BacktestResult.equity)")
    if len(equity) < 2:
        raise ValueError(f"equity needs at least 2 bars to compute statistics, got {len(equity)}")
    if check_values:
        values = equity.to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise ValueError(_BAD_EQUITY)
    return equity if equity.dtype == np.float64 else equity.astype(np.float64)


@njit_cached
def trade_stats_nb(pnl, ret):
    """(winning trades, gross profit, gross loss (>= 0), sum of trade returns) of closed trades."""
    wins, profit, loss, ret_sum = 0, 0.0, 0.0, 0.0
    for i in range(len(pnl)):
        if pnl[i] > 0:
            wins += 1
            profit += pnl[i]
        elif pnl[i] < 0:
            loss -= pnl[i]
        ret_sum += ret[i]
    return wins, profit, loss, ret_sum


def _spell(index: pd.DatetimeIndex, start: int, end: int) -> tuple[int, float]:
    """Bars and days of the longest drawdown spell (0, 0.0 if the curve never dips)."""
    if end == start:
        return 0, 0.0
    return int(end - start), float((index[end] - index[start]).total_seconds() / 86_400.0)


@njit_cached(fastmath={"reassoc"})  # sums may be reordered (vectorised): ~1e-16 relative
def curve_stats_nb(values, rf_bar):
    """(ok, mean excess return, std of returns (ddof=1), downside deviation, max drawdown, longest
    spell's first and last bar) of an equity curve of >= 2 bars, without temporary arrays; ok is
    False (the rest meaningless) if a value is not finite or not > 0. Excess return x = r - rf_bar."""
    m = len(values) - 1
    for i in range(m + 1):
        if not (values[i] > 0.0 and values[i] < np.inf):  # also False for NaN
            return False, np.nan, np.nan, np.nan, np.nan, 0, 0
    r = values[1:] / values[:-1] - 1.0
    mean_r = r.sum() / m
    sq, down = 0.0, 0.0
    for i in range(m):
        sq += (r[i] - mean_r) ** 2
        x = min(r[i] - rf_bar, 0.0)
        down += x * x
    std = math.sqrt(sq / (m - 1)) if m >= 2 else np.nan
    mdd, start, end = _drawdown_nb(values)
    return True, mean_r - rf_bar, std, math.sqrt(down / m), mdd, start, end


@njit_cached
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


def side_stats(trades: pd.DataFrame, start_value: float) -> list[dict]:
    """Per side with trades (long, short): how many, the win rate, the net pnl, its share of ``start_value`` (the
    return contribution) and the exits by reason. A trades frame without a ``side`` column is all long."""
    side = trades["side"] if "side" in trades else pd.Series(1, index=trades.index)
    rows = []
    for name, value in (("long", 1), ("short", -1)):
        t = trades[side.to_numpy() == value]
        if not len(t):
            continue
        pnl = float(t["pnl"].sum())
        rows.append({"side": name, "trades": int(len(t)), "win_rate": float((t["pnl"] > 0).mean()), "pnl": pnl,
                     "return_contribution": pnl / start_value,
                     "exits": ({str(k): int(v) for k, v in t["exit_reason"].value_counts().sort_index().items()}
                               if "exit_reason" in t else {})})
    return rows

