"""The pandas-facing wrappers of the one-instrument kernel: :func:`simulate` (what
``run_backtest(run=RunConfig(engine="fast"))`` runs) and buy-and-hold through the same kernel; input validation
and result assembly, no arithmetic of their own."""

from __future__ import annotations

import logging
import math
import time
from os import PathLike

import numba
import numpy as np
import pandas as pd

import datafeeds
from engine.backtest_common import agent_params, bet_inputs, day_numbers, prepare_inputs, run_facts, trades_frame
from engine.config import RunConfig
from engine.fastsim.inputs import REASON_NAMES, account, kernel_rules, on_period, period_bars
from engine.fastsim.kernels import Account, Bars, Rules, Signals, SimOut, simulate_nb
from engine.metrics import compute_stats
from engine.results import BacktestResult
from labeling.rules import BarrierRules, Costs
from strategies import TRADE_FIELDS

log = logging.getLogger(__name__)


def simulate(
    data: pd.DataFrame | str | PathLike,
    signal: pd.Series | np.ndarray,
    *,
    side: pd.Series | np.ndarray | int | None = None,
    atr: pd.Series | np.ndarray | None = None,
    rules: BarrierRules | None = None,
    costs: Costs | None = None,
    run: RunConfig | None = None,
) -> BacktestResult:
    """``run_backtest(data, "agent", ...)`` computed by the numba kernel: same result, no backtrader.

    Arguments mean what they mean for :func:`engine.run_backtest` (``run.engine`` and ``run.native_barriers``
    aside); the benchmark is buy-and-hold run through the same kernel (exact), unlevered.
    """
    t0 = time.perf_counter()
    rules, costs, run = rules or BarrierRules(), costs or Costs(), run or RunConfig()
    df = data if isinstance(data, pd.DataFrame) else datafeeds.load_ohlcv(data)
    if signal is None:
        raise ValueError("simulate needs signal= (probabilities aligned to the data)")
    sig, atr_full, period, ppy = prepare_inputs(df, signal, atr, rules.atr_period, run)
    sides, sizes = bet_inputs(df, sig, side, rules)

    bars = period_bars(period)
    sig_p, atr_p, side_p, size_p = (on_period(v, df, period) for v in (sig, atr_full, sides, sizes))
    signals = Signals(sig_p, atr_p, side_p, size_p, day_numbers(period.index))
    t_run = time.perf_counter()
    out = simulate_nb(bars, signals, kernel_rules(rules, 1.0), account(run, costs), 0, len(period))
    run_seconds = time.perf_counter() - t_run
    equity, position, trades = unpack(out, period.index)
    stats = compute_stats(equity, trades, periods_per_year=ppy,
                          exposure=float(np.count_nonzero(out.position) / len(period)), risk_free=run.risk_free)
    stats["rejected_entries"] = int(out.n_rejected)
    if out.n_rejected:
        log.warning("%d entry order(s) rejected: not enough cash", out.n_rejected)

    bench_stats = bench_equity = None
    if run.benchmark:
        bench_equity, bench_stats = _buy_and_hold(bars, period.index, run, costs, ppy)

    config = {
        "strategy": "TransformerAgentStrategy",
        "engine": "fast",
        "params": agent_params(rules, live=False),
        **run_facts(df, period, atr, rules, costs, run, ppy),
        "live": False,
        "benchmark": "buy-and-hold through the fast kernel, same bars, cash and costs" if run.benchmark else None,
        "rejected_entries": int(out.n_rejected),
        "numba": numba.__version__,
        "run_seconds": run_seconds,
        "total_seconds": time.perf_counter() - t0,
    }
    return BacktestResult(
        equity=equity, trades=trades,
        signal=pd.Series(sig_p, index=period.index, name="signal", dtype=np.float64),
        stats=stats, benchmark_stats=bench_stats, benchmark_equity=bench_equity, config=config,
        periods_per_year=ppy, data=period, position=position,
    )


def unpack(out: SimOut, index: pd.DatetimeIndex):
    """Equity and position (Series on ``index``) and the trades frame (TRADE_FIELDS) of a kernel run."""
    # the kernel's fresh arrays: wrapped without the copy pandas 3 makes by default
    equity = pd.Series(out.equity, index=index, name="equity", dtype=np.float64, copy=False)
    position = pd.Series(out.position, index=index, name="position", dtype=np.float64, copy=False)
    t = out.trades
    k = t.n
    if k == 0:
        return equity, position, trades_frame([], index)
    entry, exit_ = t.entry_bar[:k], t.exit_bar[:k]
    cols = {
        "entry_time": index[entry], "entry_price": t.entry_price[:k], "exit_time": index[exit_],
        "exit_price": t.exit_price[:k], "size": t.size[:k], "side": t.side[:k].astype(np.int64),
        "bet_size": t.bet_size[:k], "pnl": t.pnl[:k],
        "ret": t.ret[:k],
        "bars_held": exit_ - entry, "exit_reason": REASON_NAMES.take(t.reason[:k]),
        "signal_time": index[t.signal_bar[:k]], "atr": t.atr[:k], "entry_bar": entry, "exit_bar": exit_,
        "commission": t.commission[:k],
    }
    return equity, position, pd.DataFrame({f: cols[f] for f in TRADE_FIELDS}, copy=False)


def _buy_and_hold(bars: Bars, index, run: RunConfig, costs: Costs, ppy: float):
    """strategies.BuyAndHold through the kernel (see `_buy_and_hold_run`): its equity and stats."""
    out = _buy_and_hold_run(bars, run.cash, costs)
    equity, position, trades = unpack(out, index)
    stats = compute_stats(equity, trades, periods_per_year=ppy, exposure=float((position != 0).mean()),
                          risk_free=run.risk_free)
    stats["rejected_entries"] = int(out.n_rejected)
    return equity, stats


def _buy_and_hold_run(bars: Bars, cash: float, costs: Costs) -> SimOut:
    """One long entry decided at the first close, barriers at +-inf and a horizon past the end, so the position
    leaves by the end_of_data exit; fully cash-backed."""
    n = len(bars.close)
    sig = np.full(n, np.nan)
    sig[0] = 1.0
    atr = np.full(n, np.nan)
    atr[0] = 1.0
    signals = Signals(sig, atr, np.ones(n), np.ones(n), np.zeros(n, dtype=np.int64))
    return simulate_nb(bars, signals, Rules(0.5, math.inf, math.inf, n + 1, 1.0),
                       Account(float(cash), costs.commission, costs.slippage, 1.0, 0.0), 0, n)


def buy_and_hold_equity(period: pd.DataFrame, cash: float, costs: Costs) -> tuple[pd.Series, pd.DataFrame]:
    """Equity and trade of ``strategies.BuyAndHold`` with ``cash`` over ``period`` (the fast kernel; parity-tested)."""
    equity, _position, trades = unpack(_buy_and_hold_run(period_bars(period), cash, costs), period.index)
    return equity, trades
