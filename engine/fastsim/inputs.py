"""What the kernels read, made from pandas: prices, the period's slice of a series, the rules and the account as
kernel NamedTuples, and the exit-reason names their codes stand for (shared by the fast simulator's wrappers)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from engine.config import RunConfig
from engine.fastsim.kernels import Account, Bars, Clock, RuleGrid, Rules
from labeling.rules import BarrierRules, Costs
from strategies import EXIT_REASONS

REASON_NAMES = pd.Index(EXIT_REASONS, dtype="str")  # code -> name by `take`, faster than a list (docs/DECISIONS.md)


def kernel_rules(rules: BarrierRules, default_size: float) -> Rules:
    """``rules`` as the kernels read them; ``default_size`` stands for ``size_frac=None``."""
    size = default_size if rules.size_frac is None else rules.size_frac
    return Rules(rules.threshold, rules.pt, rules.sl, rules.horizon, float(size))


def rule_grid(confs: list[BarrierRules], default_size: float, size_row: np.ndarray) -> RuleGrid:
    """``confs`` as one :class:`RuleGrid` (``kernel_rules`` of each, ``default_size`` standing for None); row ``c``
    reads row ``size_row[c]`` of the sweep's entry sizes."""
    rows = [kernel_rules(c, default_size) for c in confs]
    return RuleGrid(*(np.array([r[j] for r in rows], dtype=np.int64 if name == "horizon" else np.float64)
                      for j, name in enumerate(Rules._fields)), np.asarray(size_row, dtype=np.int64))


def clock(index: pd.DatetimeIndex, ppy: float, risk_free: float) -> Clock:
    """What annualises a run over ``index``: its calendar years, ``ppy`` bars per year, the per-bar risk-free rate."""
    years = (index[-1] - index[0]).total_seconds() / (365.25 * 86_400.0)
    rf_bar = (1.0 + risk_free) ** (1.0 / ppy) - 1.0 if risk_free else 0.0
    return Clock(float(years), float(ppy), float(rf_bar))


def account(run: RunConfig, costs: Costs) -> Account:
    """The account as the kernels read it; leverage and the daily borrow rate computed as backtrader does."""
    return Account(run.cash, costs.commission, costs.slippage, run.leverage, costs.borrow / 365.0)


def period_bars(period: pd.DataFrame) -> Bars:
    """The period's prices as the kernels read them (finite, contiguous float64)."""
    return Bars(*(prices(period, col) for col in ("open", "high", "low", "close")))


def on_period(values: pd.Series | np.ndarray, df: pd.DataFrame, period: pd.DataFrame) -> np.ndarray:
    """``values`` (on ``df.index``) over the period's bars as float64: a slice by position, not a reindex."""
    lo = 0 if len(period) == len(df) else int(df.index.get_loc(period.index[0]))
    arr = values.to_numpy(dtype=np.float64) if isinstance(values, pd.Series) else np.asarray(values, np.float64)
    return np.ascontiguousarray(arr[lo : lo + len(period)])


def prices(period: pd.DataFrame, col: str) -> np.ndarray:
    values = np.ascontiguousarray(period[col].to_numpy(dtype=np.float64))
    if not np.isfinite(values).all():
        bad = period.index[~np.isfinite(values)][0]
        raise ValueError(f"column {col!r} is not finite at {bad}: load the data with datafeeds.load_ohlcv")
    return values
