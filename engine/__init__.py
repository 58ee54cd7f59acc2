"""Backtest runner, performance statistics and plots."""

from engine.metrics import compute_stats, drawdown, infer_periods_per_year, periods_per_year_rule
from engine.plotting import plot_backtest
from engine.fastsim import simulate
from engine.runner import ENGINES, BacktestResult, run_backtest

__all__ = [
    "BacktestResult",
    "ENGINES",
    "compute_stats",
    "drawdown",
    "infer_periods_per_year",
    "periods_per_year_rule",
    "plot_backtest",
    "run_backtest",
    "simulate",
]
