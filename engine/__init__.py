"""Backtest runner, performance statistics, plots, the fast simulator and walk-forward tuning.

Names load their module on first use (PEP 562 ``__getattr__``), so ``python -m engine.walkforward
--help`` answers without importing backtrader, numba or matplotlib.
"""

from typing import TYPE_CHECKING

from datafeeds.lazy import lazy_exports

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from engine.backtest_common import BacktestResult
    from engine.fastsim import simulate
    from engine.metrics import compute_stats, drawdown, infer_periods_per_year, periods_per_year_rule, period_returns
    from engine.plotting import backtest_figure, plot_backtest
    from engine.runner import ENGINES, run_backtest

_EXPORTS = {  # public name -> its module
    "BacktestResult": "engine.backtest_common",
    "ENGINES": "engine.runner",
    "run_backtest": "engine.runner",
    "compute_stats": "engine.metrics",
    "drawdown": "engine.metrics",
    "infer_periods_per_year": "engine.metrics",
    "periods_per_year_rule": "engine.metrics",
    "period_returns": "engine.metrics",
    "backtest_figure": "engine.plotting",
    "plot_backtest": "engine.plotting",
    "simulate": "engine.fastsim",
    "PortfolioResult": "engine.portfolio",
    "run_portfolio": "engine.portfolio",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = list(_EXPORTS)
