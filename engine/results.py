"""What a backtest returns: :class:`BacktestResult` for one instrument, :class:`PortfolioResult` for several.

Both engines (backtrader and the fast simulator) build the same types, so reports, plots and tests read them
the same way.
"""

from __future__ import annotations

import dataclasses

import pandas as pd


@dataclasses.dataclass
class BacktestResult:
    """Everything one backtest produced; ``data`` is the OHLCV of the bars traded."""

    equity: pd.Series  # broker value at each bar's close (DatetimeIndex)
    trades: pd.DataFrame  # one row per closed trade, columns strategies.TRADE_FIELDS
    signal: pd.Series | None  # probability used per bar (batch line or live agent), None for baselines
    stats: dict  # engine.metrics.compute_stats of equity and trades
    benchmark_stats: dict | None  # same for buy-and-hold over the same bars and costs
    benchmark_equity: pd.Series | None
    config: dict  # what was run, JSON-safe
    periods_per_year: float
    data: pd.DataFrame  # OHLCV of the backtest period
    position: pd.Series  # units held at each bar's close


@dataclasses.dataclass
class PortfolioResult:
    """What a portfolio backtest produced; every series is on the union of the instruments' times."""

    equity: pd.Series  # broker value at each time
    trades: pd.DataFrame  # one row per closed trade: PORTFOLIO_TRADE_FIELDS (symbol first)
    stats: dict  # engine.metrics.compute_stats of equity and trades
    contribution: pd.DataFrame  # per symbol: pnl, trades, win rate, exposure, skipped and rejected signals
    positions: pd.DataFrame  # units held per symbol at each time
    benchmark_equity: pd.Series | None
    benchmark_stats: dict | None
    config: dict  # what was run, JSON-safe
    periods_per_year: float
    data: dict  # symbol -> OHLCV of the bars traded
