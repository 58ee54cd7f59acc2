"""Backtest runner, performance statistics, plots, the fast simulator and walk-forward tuning.

Names load their module on first use (PEP 562 ``__getattr__``), so ``python -m engine.walkforward
--help`` answers without importing backtrader, numba or matplotlib.
"""

from typing import TYPE_CHECKING

from datafeeds.lazy import lazy_exports

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from engine.config import ENGINES, RunConfig
    from engine.fastsim import simulate, sweep
    from engine.metrics import compute_stats, drawdown, infer_periods_per_year, periods_per_year_rule, period_returns
    from engine.plotting import backtest_figure, plot_backtest
    from engine.portfolio import run_portfolio, sweep_portfolio
    from engine.results import BacktestResult, PortfolioResult
    from engine.runner import run_backtest
    from labeling.rules import BarrierRules, Costs

_EXPORTS = {  # public name -> its module
    "BarrierRules": "labeling.rules",  # the trading rules and costs, defined with the labels they share
    "Costs": "labeling.rules",
    "RunConfig": "engine.config",
    "ENGINES": "engine.config",
    "BacktestResult": "engine.results",
    "PortfolioResult": "engine.results",
    "run_backtest": "engine.runner",
    "compute_stats": "engine.metrics",
    "drawdown": "engine.metrics",
    "infer_periods_per_year": "engine.metrics",
    "periods_per_year_rule": "engine.metrics",
    "period_returns": "engine.metrics",
    "backtest_figure": "engine.plotting",
    "plot_backtest": "engine.plotting",
    "simulate": "engine.fastsim",
    "sweep": "engine.fastsim",
    "run_portfolio": "engine.portfolio",
    "sweep_portfolio": "engine.portfolio",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = list(_EXPORTS)
