"""Run one backtrader backtest of a strategy on OHLCV data and collect equity, trades and statistics.

Causality: the ATR (and the caller's signal) are computed on the *full* data, then ``start``/``end``
slice the period traded, so indicator warm-up uses real history without seeing the future.
Costs: ``commission`` is a fraction of traded value per side (backtrader ``COMM_PERC``, percabs);
``slippage`` is ``broker.set_slippage_perc``: buys fill ``slippage`` higher and sells lower, capped at
the bar's high/low, also on fills at the open (market orders, gaps through barriers).
Fills: Cerebro runs with cheat-on-open so strategies size an entry decided at close[t] at the open of
t+1, its fill price (notional sizing, see ``strategies.agent``); market orders still fill at that open.
Equity is the broker value at each bar's close; its last value is net of the synthetic end_of_data
exit's costs. Exposure = fraction of bars with a position at the close.
Broker: :class:`strategies.BarrierBroker`, backtrader's BackBroker plus one native order for the agent's
triple-barrier exit (``native_barriers=False``: the stock BackBroker); equity and position are recorded
by the strategy (:class:`strategies.TradeLogStrategy`) at each close.
Benchmark: a :class:`~strategies.BuyAndHold` backtest over the same bars with the same cash and costs.
Engines: ``engine="backtrader"`` (default, the reference) or ``"fast"`` (:mod:`engine.fastsim`, the agent
strategy only, same result to rounding).
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
from engine.backtest_common import BacktestResult, prepare_inputs, run_facts, trades_frame
from engine.fastsim import simulate
from engine.portfolio import PortfolioResult, run_portfolio
from engine.jsonable import jsonable
from engine.metrics import compute_stats
from strategies import BarrierBroker, BuyAndHold, TradeLogStrategy, TransformerAgentStrategy, get_strategy

log = logging.getLogger(__name__)

ENGINES = ("backtrader", "fast")  # run_backtest(engine=...): the reference, and engine.fastsim

__all__ = ["ENGINES", "run_backtest"]


def run_backtest(
    data: pd.DataFrame | str | PathLike,
    strategy: str | type[TradeLogStrategy],
    *,
    cash: float = 100_000,
    commission: float = 0.0005,
    slippage: float = 0.0,
    start=None,
    end=None,
    signal: pd.Series | np.ndarray | None = None,
    atr: pd.Series | np.ndarray | None = None,
    atr_period: int = 14,
    periods_per_year: float | None = None,
    risk_free: float = 0.0,
    benchmark: bool = True,
    engine: str = "backtrader",
    native_barriers: bool = True,
    **params,
) -> BacktestResult:
    """Backtest ``strategy`` (a name in ``strategies.STRATEGIES`` or a class) on ``data``.

    ``data``: a ``datafeeds.load_ohlcv`` frame, a sample name or a path. ``signal``: probabilities
    aligned to ``data`` (for the agent strategy). ``atr`` overrides ``labeling.atr(..., atr_period)``
    (tests use it to set barriers by hand). ``periods_per_year`` defaults to
    ``infer_periods_per_year`` of the full data. ``risk_free`` is the annual rate Sharpe and Sortino
    are measured against (``engine.metrics``). ``params`` go to the strategy. ``engine="fast"``
    runs the agent strategy (batch signal only) through :func:`engine.fastsim.simulate` instead.
    ``native_barriers=False`` runs on the stock ``bt.brokers.BackBroker``, where the agent's exit is
    three orders (stop, OCO limit, market time exit) instead of one ``strategies.TripleBarrierOrder``:
    the same trades, at a higher cost (docs/DECISIONS.md); tests hold the two to parity. ``engine="fast"`` has no
    broker and ignores it.
    """
    t0 = time.perf_counter()
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if isinstance(data, Mapping) or (not isinstance(data, pd.DataFrame) and datafeeds.is_universe(data)):
        return _run_universe(data, strategy, signal, atr, cash=cash, commission=commission, slippage=slippage,
                             start=start, end=end, atr_period=atr_period, periods_per_year=periods_per_year,
                             risk_free=risk_free, benchmark=benchmark, engine=engine, params=params)
    df = data if isinstance(data, pd.DataFrame) else datafeeds.load_ohlcv(data)
    strat_cls = get_strategy(strategy) if isinstance(strategy, str) else strategy
    if not (isinstance(strat_cls, type) and issubclass(strat_cls, TradeLogStrategy)):
        raise TypeError(
            f"strategy must be a name or a strategies.TradeLogStrategy subclass (the engine reads its "
            f"trade log and equity), got {strategy!r}"
        )
    _check_params(strat_cls, params)
    if engine == "fast":
        if strat_cls is not TransformerAgentStrategy:
            raise ValueError(
                f"engine='fast' simulates only the agent strategy (TransformerAgentStrategy), not "
                f"{strat_cls.__name__}: use engine='backtrader' for it"
            )
        if params.get("live", False):
            raise ValueError(
                "engine='fast' needs a batch signal=, not live=True: use engine='backtrader' for live agents"
            )
        if signal is None:
            raise ValueError("engine='fast' needs signal= (probabilities aligned to the data)")
        fast_params = {k: v for k, v in params.items() if k not in ("live", "agent", "agent_history")}
        return simulate(df, signal, atr=atr, cash=cash, commission=commission, slippage=slippage,
                        start=start, end=end, atr_period=atr_period, periods_per_year=periods_per_year,
                        risk_free=risk_free, benchmark=benchmark, **fast_params)
    if cash <= 0 or commission < 0 or not 0 <= slippage < 1:
        raise ValueError(f"need cash > 0, commission >= 0, 0 <= slippage < 1; got {cash}, {commission}, {slippage}")

    live = bool(params.get("live", False))
    uses_signal = bool(getattr(strat_cls, "reads_signal", False))
    if uses_signal and signal is None and not live:
        raise ValueError(
            f"{strat_cls.__name__} reads probabilities: pass signal= (a Series aligned to the data, "
            "e.g. OnnxAgent.predict_proba(df)) or live=True with agent="
        )
    sig, atr_full, period, ppy = prepare_inputs(df, signal, atr, atr_period, start, end, periods_per_year)
    if live and "agent_history" not in params:
        params["agent_history"] = df.loc[df.index < period.index[0], ["open", "high", "low", "close", "volume"]]

    lines = {"atr": atr_full.loc[period.index].to_numpy()}
    if uses_signal:
        lines["signal"] = (
            sig.loc[period.index].to_numpy() if sig is not None else np.full(len(period), np.nan)
        )
    broker = BarrierBroker() if native_barriers else bt.brokers.BackBroker()
    strat, run_seconds = _run_cerebro(period, strat_cls, lines, broker, cash, commission, slippage, params)

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
                          risk_free=risk_free)
    stats["rejected_entries"] = int(strat.n_rejected)
    bench_stats = bench_equity = None
    if benchmark:
        bench = (
            None if strat_cls is BuyAndHold and not params else
            run_backtest(period, BuyAndHold, cash=cash, commission=commission, slippage=slippage,
                         atr=atr_full.loc[period.index], periods_per_year=ppy, risk_free=risk_free,
                         benchmark=False)
        )
        bench_equity = equity if bench is None else bench.equity
        bench_stats = stats if bench is None else bench.stats

    config = {
        "strategy": strat_cls.__name__,
        "engine": "backtrader",
        "params": {  # every strategy parameter in effect, defaults included
            k: jsonable(v) for k, v in strat.p._getkwargs().items() if k not in ("agent", "agent_history")
        },
        **run_facts(df, period, cash, commission, slippage, atr, atr_period, ppy, periods_per_year, risk_free),
        "live": live,
        "broker": type(broker).__name__,
        "benchmark": "BuyAndHold backtest, same bars, cash and costs" if benchmark else None,
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


def _run_universe(data, strategy, signal, atr, *, params, **kw) -> PortfolioResult:
    """``run_backtest`` on a universe (symbol -> frame, or a name ``datafeeds.load_universe`` reads): the agent
    strategy as one portfolio (:func:`engine.portfolio.run_portfolio`); ``signal`` maps symbol -> probabilities."""
    strat_cls = get_strategy(strategy) if isinstance(strategy, str) else strategy
    if strat_cls is not TransformerAgentStrategy:
        name = getattr(strat_cls, "__name__", strategy)
        raise ValueError(f"a universe is traded by the agent strategy only, not {name}: backtest baselines per file")
    if params.get("live", False):
        raise ValueError("a universe needs batch signals (signal={symbol: probabilities}), not live=True")
    if not isinstance(signal, Mapping):
        raise ValueError("a universe needs signal= as a mapping symbol -> probabilities aligned to that instrument")
    extra = sorted(set(params) - {"threshold", "pt", "sl", "horizon", "max_positions", "size_frac", "live"})
    if extra:
        raise ValueError(f"a portfolio has no parameter(s) {extra}")
    params = {k: v for k, v in params.items() if k != "live"}
    frames = data if isinstance(data, Mapping) else datafeeds.load_universe(data)
    return run_portfolio(frames, signal, atr=atr, **kw, **params)


def _run_cerebro(period, strat_cls, lines, broker, cash, commission, slippage, params):
    # cheat-on-open: strategies size an entry decided at close[t] in next_open of t+1 (open known);
    # the market order still fills at that open, exactly as without it.
    cerebro = bt.Cerebro(stdstats=False, preload=True, runonce=True, optreturn=False, cheat_on_open=True)
    cerebro.broker = broker
    cerebro.adddata(datafeeds.to_backtrader(period, **lines))
    cerebro.broker.set_coo(True)
    cerebro.broker.setcash(float(cash))
    cerebro.broker.setcommission(commission=float(commission), commtype=bt.CommInfoBase.COMM_PERC,
                                 percabs=True, stocklike=True)
    if slippage:
        cerebro.broker.set_slippage_perc(float(slippage), slip_open=True, slip_limit=True,
                                         slip_match=True, slip_out=False)
    cerebro.addstrategy(strat_cls, **params)
    t0 = time.perf_counter()
    strat = cerebro.run()[0]
    return strat, time.perf_counter() - t0


def _check_params(strat_cls, params: dict) -> None:
    known = set(strat_cls.params._getkeys())
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(
            f"{strat_cls.__name__} has no parameter(s) {unknown}; its parameters: {sorted(known)}"
        )
