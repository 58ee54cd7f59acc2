"""Run one backtrader backtest of a strategy on OHLCV data and collect equity, trades and statistics.

Causality: the ATR (and the caller's signal) are computed on the *full* data, then ``run.start``/``run.end``
slice the period traded, so indicator warm-up uses real history without seeing the future.
Costs and fills: :mod:`engine.cerebro` (cheat-on-open sizing at the fill price, ``COMM_PERC`` commission,
``set_slippage_perc`` slippage). Equity is the broker value at each bar's close; its last value is net of the
synthetic end_of_data exit's costs. Exposure = fraction of bars with a position at the close.
Broker: :class:`strategies.BarrierBroker`, backtrader's BackBroker plus one native order for the agent's
triple-barrier exit (``RunConfig(native_barriers=False)``: the stock BackBroker); equity and position are
recorded by the strategy (:class:`strategies.TradeLogStrategy`) at each close.
Benchmark: a :class:`~strategies.BuyAndHold` backtest over the same bars with the same cash and costs.
Engines: ``RunConfig(engine="backtrader")`` (default, the reference) or ``"fast"`` (:mod:`engine.fastsim`, the
agent strategy only, same result to rounding).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from os import PathLike

import backtrader as bt
import numpy as np
import pandas as pd

import datafeeds
from engine.backtest_common import agent_params, bet_inputs, prepare_inputs, run_facts, trades_frame
from engine.cerebro import build_cerebro, run_strategy
from engine.config import RunConfig
from engine.fastsim import simulate
from engine.jsonable import jsonable
from engine.metrics import compute_stats
from engine.portfolio import run_portfolio
from engine.results import BacktestResult, PortfolioResult
from labeling.rules import BarrierRules, Costs
from strategies import (BarrierBroker, BuyAndHold, CashBackBroker, TradeLogStrategy, TransformerAgentStrategy,
                        get_strategy)

log = logging.getLogger(__name__)

__all__ = ["run_backtest"]


def run_backtest(
    data: pd.DataFrame | str | PathLike,
    strategy: str | type[TradeLogStrategy],
    *,
    signal: pd.Series | np.ndarray | None = None,
    side: pd.Series | np.ndarray | int | None = None,
    atr: pd.Series | np.ndarray | None = None,
    rules: BarrierRules | None = None,
    costs: Costs | None = None,
    run: RunConfig | None = None,
    **params,
) -> BacktestResult | PortfolioResult:
    """Backtest ``strategy`` (a name in ``strategies.STRATEGIES`` or a class) on ``data``.

    ``data``: a ``datafeeds.load_ohlcv`` frame, a sample name or a path (a universe: the agent strategy as one
    portfolio, :func:`engine.run_portfolio`). ``signal``: probabilities aligned to ``data`` (for the agent
    strategy). ``side``: the agent's side per bet, as ``labeling.event_sides`` reads it (a Series of +1/-1 on the bets'
    timestamps, e.g. ``labeling.primary_side``; None: long on every bar). ``atr`` overrides
    ``labeling.atr(..., rules.atr_period)`` (tests use it to set barriers by hand).
    ``rules``: the agent's :class:`~labeling.BarrierRules` (baselines read only its ``size_frac``); ``costs``:
    :class:`~labeling.Costs`; ``run``: :class:`~engine.config.RunConfig` (cash, period, measurement, engine).
    ``params`` go to the strategy (e.g. ``live``/``agent`` for the agent, ``fast``/``slow`` for smacross).
    ``run.engine="fast"`` runs the agent strategy (batch signal only) through :func:`engine.fastsim.simulate`.
    ``run.native_barriers=False`` runs on the stock ``bt.brokers.BackBroker``, where the agent's exit is three
    orders (stop, OCO limit, market time exit) instead of one ``strategies.TripleBarrierOrder``: the same
    trades, at a higher cost (docs/DECISIONS.md); tests hold the two to parity.
    """
    t0 = time.perf_counter()
    rules, costs, run = rules or BarrierRules(), costs or Costs(), run or RunConfig()
    if isinstance(data, Mapping) or (not isinstance(data, pd.DataFrame) and datafeeds.is_universe(data)):
        return _run_universe(data, strategy, signal, side, atr, (rules, costs, run), params)
    df = data if isinstance(data, pd.DataFrame) else datafeeds.load_ohlcv(data)
    strat_cls = get_strategy(strategy) if isinstance(strategy, str) else strategy
    if not (isinstance(strat_cls, type) and issubclass(strat_cls, TradeLogStrategy)):
        raise TypeError(
            f"strategy must be a name or a strategies.TradeLogStrategy subclass (the engine reads its "
            f"trade log and equity), got {strategy!r}"
        )
    _check_params(strat_cls, params)
    if run.engine == "fast":
        if strat_cls is not TransformerAgentStrategy:
            raise ValueError(
                f"RunConfig(engine='fast') simulates only the agent strategy (TransformerAgentStrategy), not "
                f"{strat_cls.__name__}: use RunConfig(engine='backtrader') for it"
            )
        if params.get("live", False):
            raise ValueError(
                "RunConfig(engine='fast') needs a batch signal=, not live=True: use RunConfig(engine='backtrader') "
                "for live agents"
            )
        if signal is None:
            raise ValueError("RunConfig(engine='fast') needs signal= (probabilities aligned to the data)")
        return simulate(df, signal, side=side, atr=atr, rules=rules, costs=costs, run=run)

    live = bool(params.get("live", False))
    uses_signal = bool(getattr(strat_cls, "reads_signal", False))
    if uses_signal and signal is None and not live:
        raise ValueError(
            f"{strat_cls.__name__} reads probabilities: pass signal= (a Series aligned to the data, "
            "e.g. OnnxAgent.predict_proba(df)) or live=True with agent="
        )
    if not uses_signal and (side is not None or rules.sizing != "fixed"):
        raise ValueError(f"{strat_cls.__name__} trades long at a fixed size: side= and sizing are the agent "
                         "strategy's")
    sig, atr_full, period, ppy = prepare_inputs(df, signal, atr, rules.atr_period, run)
    if live and "agent_history" not in params:
        params["agent_history"] = df.loc[df.index < period.index[0], ["open", "high", "low", "close", "volume"]]

    lines = {"atr": atr_full.loc[period.index].to_numpy()}
    if uses_signal:
        lines["signal"] = (
            sig.loc[period.index].to_numpy() if sig is not None else np.full(len(period), np.nan)
        )
        sides, sizes = bet_inputs(df, sig, side, rules)
        lo = df.index.get_loc(period.index[0])
        if side is not None:  # a long-only run reads no side line: the same run as before sides existed
            lines["side"] = sides[lo : lo + len(period)]
        if rules.sizing != "fixed":
            lines["bet_size"] = sizes[lo : lo + len(period)]
    # The stock broker's pre-check of new orders (checksubmit) would pseudo-fill the OCO take-profit after the stop
    # had closed the position, i.e. as opening the opposite position, and refuse it for cash (shorts tie up
    # cash): off, so the stock orders fill as they would on a live broker; entries are still cash-checked at the fill.
    broker = BarrierBroker() if run.native_barriers else CashBackBroker(checksubmit=False)
    cerebro = build_cerebro({None: (period, lines)}, broker, run, costs)
    strat_params = {"rules": rules, **params} if "rules" in strat_cls.params._getkeys() else {
        "size_frac": rules.entry_fraction, **params}
    strat, run_seconds = run_strategy(cerebro, strat_cls, strat_params)

    if len(strat.equity_values) != len(period):
        raise RuntimeError(
            f"{strat_cls.__name__} recorded {len(strat.equity_values)} equity values for {len(period)} "
            "bars: put its decision in on_bar(), or call TradeLogStrategy.next/prenext from overrides"
        )
    equity = pd.Series(strat.equity_values, index=period.index, name="equity", dtype=np.float64)
    equity.iloc[-1] -= strat.eod_cost  # the synthetic end_of_data exit's slippage and commission
    position = pd.Series(strat.position_sizes, index=period.index, name="position", dtype=np.float64)
    trades = trades_frame(strat.trade_log, period.index)
    used_signal = (
        pd.Series(getattr(strat, "probs", lines.get("signal")), index=period.index, name="signal", dtype=np.float64)
        if uses_signal else None
    )

    stats = compute_stats(equity, trades, periods_per_year=ppy, exposure=float((position != 0).mean()),
                          risk_free=run.risk_free)
    stats["rejected_entries"] = int(strat.n_rejected)
    bench_stats = bench_equity = None
    if run.benchmark:
        bench = (
            None if strat_cls is BuyAndHold and not params and rules.size_frac is None else
            run_backtest(period, BuyAndHold, atr=atr_full.loc[period.index], costs=costs,
                         run=run.replace(start=None, end=None, periods_per_year=ppy, benchmark=False,
                                         native_barriers=True, margin=1.0))
        )
        bench_equity = equity if bench is None else bench.equity
        bench_stats = stats if bench is None else bench.stats

    config = {
        "strategy": strat_cls.__name__,
        "engine": "backtrader",
        "params": _strategy_params(strat, rules, live),  # every strategy parameter in effect, defaults included
        **run_facts(df, period, atr, rules, costs, run, ppy),
        "live": live,
        "broker": type(broker).__name__,
        "benchmark": "BuyAndHold backtest, same bars, cash and costs, unlevered" if run.benchmark else None,
        "rejected_entries": int(strat.n_rejected),
        "backtrader": bt.__version__,
        "run_seconds": run_seconds,
        "total_seconds": time.perf_counter() - t0,
    }
    log.info("%s on %s: %d bars %s..%s, %d trades, %.2fs", config["strategy"], config["data_source"],
             len(period), config["start"], config["end"], len(trades), config["total_seconds"])
    return BacktestResult(
        equity=equity, trades=trades, signal=used_signal, stats=stats, benchmark_stats=bench_stats,
        benchmark_equity=bench_equity, config=config, periods_per_year=ppy, data=period, position=position,
    )


def _strategy_params(strat, rules: BarrierRules, live: bool) -> dict:
    """The strategy's parameters in effect, JSON-safe: the agent's rules flattened as the fast engine records them."""
    kwargs = strat.p._getkwargs()
    if "rules" not in kwargs:
        return {k: jsonable(v) for k, v in kwargs.items()}
    own = ("rules", "size_frac", "agent", "agent_history", "live")  # in the rules, or not data
    return {**agent_params(rules, live), **{k: jsonable(v) for k, v in kwargs.items() if k not in own}}


def _run_universe(data, strategy, signal, side, atr, settings: tuple, params: dict) -> PortfolioResult:
    """``run_backtest`` on a universe (symbol -> frame, or a name ``datafeeds.load_universe`` reads): the agent
    strategy as one portfolio (:func:`engine.portfolio.run_portfolio`); ``signal`` maps symbol -> probabilities,
    ``side`` (if given) symbol -> sides."""
    rules, costs, run = settings
    strat_cls = get_strategy(strategy) if isinstance(strategy, str) else strategy
    if strat_cls is not TransformerAgentStrategy:
        name = getattr(strat_cls, "__name__", strategy)
        raise ValueError(f"a universe is traded by the agent strategy only, not {name}: backtest baselines per file")
    if params.get("live", False):
        raise ValueError("a universe needs batch signals (signal={symbol: probabilities}), not live=True")
    if not isinstance(signal, Mapping):
        raise ValueError("a universe needs signal= as a mapping symbol -> probabilities aligned to that instrument")
    extra = sorted(set(params) - {"max_positions", "live"})
    if extra:
        raise ValueError(f"a portfolio has no parameter(s) {extra}")
    frames = data if isinstance(data, Mapping) else datafeeds.load_universe(data)
    if side is not None and not isinstance(side, Mapping):
        raise ValueError("a universe needs side= as a mapping symbol -> sides (or None: long everywhere)")
    return run_portfolio(frames, signal, sides=side, atr=atr, rules=rules, costs=costs, run=run,
                         max_positions=params.get("max_positions", 1))


def _check_params(strat_cls, params: dict) -> None:
    known = set(strat_cls.params._getkeys()) - {"rules", "size_frac"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(
            f"{strat_cls.__name__} has no parameter(s) {unknown}; its parameters: {sorted(known)} (the agent's "
            "threshold, barriers and size are rules=BarrierRules(...))"
        )
