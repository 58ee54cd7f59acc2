"""Backtest runner, performance statistics, plots, the fast simulator and walk-forward tuning.

Names load their module on first use (PEP 562 ``__getattr__``), so ``python -m engine.walkforward
--help`` answers without importing backtrader, numba or matplotlib.
"""

import importlib
from typing import TYPE_CHECKING

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


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = list(_EXPORTS)
