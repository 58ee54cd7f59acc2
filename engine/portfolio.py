"""Portfolio backtests: one agent's signals on several instruments, one broker, shared cash.

``run_portfolio(frames, signals, ...)`` runs ``strategies.PortfolioAgentStrategy`` on backtrader (one
feed per instrument in one Cerebro; see that module for how the multi-feed clock is used) or the same
rules through the fast simulator (``engine.fastsim.simulate_portfolio``), trade for trade equal.
The benchmark is an equal-weight buy-and-hold of the same instruments with the same costs, not
rebalanced: each instrument's sleeve (cash / n) buys at its second bar's open after a decision at its
first close, like ``strategies.BuyAndHold``, holds cash before its first bar and after its last.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping

import backtrader as bt
import numpy as np
import pandas as pd

import datafeeds
from engine.backtest_common import prepare_inputs
from engine.fastsim import buy_and_hold_equity, simulate_portfolio
from engine.jsonable import jsonable
from engine.metrics import compute_stats, infer_periods_per_year
from strategies import BarrierBroker
from strategies.portfolio import PORTFOLIO_TRADE_FIELDS, PortfolioAgentStrategy

log = logging.getLogger(__name__)

ENGINES = ("backtrader", "fast")


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


def inputs(frames: Mapping[str, pd.DataFrame], signals: Mapping[str, pd.Series], *, atr=None, start=None, end=None,
           atr_period: int = 14, periods_per_year: float | None = None):
    """Per symbol (sorted by name): the period's bars, signal and ATR; the union of the times; periods per year.

    Signals and ATR (``atr``: symbol -> series overriding ``labeling.atr``, e.g. for barriers set by hand) are
    aligned and checked as for one instrument (``prepare_inputs``); an instrument with fewer than 2 bars in
    the period is refused, naming it.
    """
    if not frames:
        raise ValueError("a portfolio needs at least one instrument")
    missing = sorted(set(frames) - set(signals))
    if missing:
        raise ValueError(f"no signal for {', '.join(missing)}: pass one probability series per instrument")
    per = {}
    for sym in sorted(frames):
        df = frames[sym]
        try:
            sig, atr_full, period, _ = prepare_inputs(df, signals[sym], None if atr is None else atr[sym],
                                                      atr_period, start, end, 1.0)
        except ValueError as exc:
            raise ValueError(f"{sym}: {exc}") from None
        per[sym] = (period, sig.loc[period.index].to_numpy(np.float64), atr_full.loc[period.index].to_numpy(np.float64))
    indexes = [p.index for p, _, _ in per.values()]
    times = indexes[0].append(indexes[1:]).unique().sort_values().rename("datetime")
    ppy = float(periods_per_year) if periods_per_year else infer_periods_per_year(times)
    return per, times, ppy


def run_portfolio(
    frames: Mapping[str, pd.DataFrame] | str,
    signals: Mapping[str, pd.Series],
    *,
    atr: Mapping[str, pd.Series] | None = None,
    threshold: float = 0.5,
    pt: float = 1.5,
    sl: float = 1.5,
    horizon: int = 20,
    max_positions: int = 1,
    size_frac: float | None = None,
    cash: float = 100_000,
    commission: float = 0.0005,
    slippage: float = 0.0,
    start=None,
    end=None,
    atr_period: int = 14,
    periods_per_year: float | None = None,
    risk_free: float = 0.0,
    benchmark: bool = True,
    engine: str = "backtrader",
) -> PortfolioResult:
    """Backtest the agent strategy on every instrument of ``frames`` (symbol -> OHLCV frame, or a universe
    name/path/glob for ``datafeeds.load_universe``) with ``signals`` (symbol -> probabilities aligned to
    that frame), one broker and shared cash, at most ``max_positions`` positions at once."""
    t0 = time.perf_counter()
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if isinstance(frames, (str, bytes)) or not isinstance(frames, Mapping):
        frames = datafeeds.load_universe(frames)
    _check(threshold, pt, sl, horizon, max_positions, size_frac, cash, commission, slippage)
    per, times, ppy = inputs(frames, signals, atr=atr, start=start, end=end, atr_period=atr_period,
                             periods_per_year=periods_per_year)
    symbols = list(per)
    if engine == "fast":
        out = simulate_portfolio(per, times, threshold=threshold, pt=pt, sl=sl, horizon=horizon,
                                 max_positions=max_positions, size_frac=size_frac, cash=cash, commission=commission,
                                 slippage=slippage)
    else:
        out = _run_backtrader(per, times, threshold=threshold, pt=pt, sl=sl, horizon=horizon,
                              max_positions=max_positions, size_frac=size_frac, cash=cash, commission=commission,
                              slippage=slippage)
    equity = pd.Series(out["equity"], index=times, name="equity", dtype=np.float64)
    positions = pd.DataFrame(np.asarray(out["positions"], dtype=np.float64).reshape(len(times), len(symbols)),
                             index=times, columns=symbols)
    trades = pd.DataFrame(out["trades"], columns=list(PORTFOLIO_TRADE_FIELDS))
    if len(trades):
        trades = trades.sort_values(["exit_time", "symbol"], kind="stable").reset_index(drop=True)
    in_market = (positions != 0).any(axis=1)
    stats = compute_stats(equity, trades, periods_per_year=ppy, exposure=float(in_market.mean()), risk_free=risk_free)
    stats["rejected_entries"] = int(sum(out["rejected"]))
    stats["skipped_signals"] = int(sum(out["skipped"]))
    contribution = _contribution(trades, positions, out["skipped"], out["rejected"], symbols, float(cash))

    bench_equity = bench_stats = None
    if benchmark:
        bench_equity, bench_stats = equal_weight_buy_and_hold(per, times, cash, commission, slippage, ppy, risk_free)
    config = {
        "strategy": "PortfolioAgentStrategy",
        "engine": engine,
        "symbols": symbols,
        "params": {k: jsonable(v) for k, v in (("threshold", threshold), ("pt", pt), ("sl", sl), ("horizon", horizon),
                                                 ("max_positions", max_positions), ("size_frac", size_frac))},
        "sizing": (f"equity / {max_positions} per entry" if size_frac is None else f"{size_frac:g} x equity per entry"),
        "data": {s: {"source": str(frames[s].attrs.get("source", s)), "sha256": frames[s].attrs.get("sha256"),
                     "bars": int(len(p)), "start": str(p.index[0]), "end": str(p.index[-1])}
                 for s, (p, _, _) in per.items()},
        "start": str(times[0]), "end": str(times[-1]), "times": int(len(times)),
        "cash": float(cash), "commission": float(commission), "slippage": float(slippage),
        "atr_period": int(atr_period), "periods_per_year": ppy, "risk_free": float(risk_free),
        "benchmark": ("equal-weight buy-and-hold of the same instruments, cash / n each, same costs, not rebalanced"
                      if benchmark else None),
        "run_seconds": out["run_seconds"],
        "total_seconds": time.perf_counter() - t0,
    }
    return PortfolioResult(equity=equity, trades=trades, stats=stats, contribution=contribution, positions=positions,
                           benchmark_equity=bench_equity, benchmark_stats=bench_stats, config=config,
                           periods_per_year=ppy, data={s: p for s, (p, _, _) in per.items()})


def _check(threshold, pt, sl, horizon, max_positions, size_frac, cash, commission, slippage) -> None:
    if isinstance(max_positions, bool) or int(max_positions) != max_positions or max_positions < 1:
        raise ValueError(f"max_positions must be an integer >= 1, got {max_positions}")
    if size_frac is not None and not 0.0 < size_frac <= 1.0:
        raise ValueError(f"size_frac must be in (0, 1] (no leverage), got {size_frac}")
    if not (pt > 0 and sl > 0):
        raise ValueError(f"pt and sl must be > 0 ATR multiples, got pt={pt}, sl={sl}")
    if isinstance(horizon, bool) or not float(horizon).is_integer() or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1 bars, got {horizon}")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite probability, got {threshold}")
    if cash <= 0 or commission < 0 or not 0 <= slippage < 1:
        raise ValueError(f"need cash > 0, commission >= 0, 0 <= slippage < 1; got {cash}, {commission}, {slippage}")


def _run_backtrader(per, times, *, threshold, pt, sl, horizon, max_positions, size_frac, cash, commission, slippage):
    cerebro = bt.Cerebro(stdstats=False, preload=True, runonce=True, optreturn=False, cheat_on_open=True)
    cerebro.broker = BarrierBroker()
    for sym, (period, sig, atr) in per.items():
        cerebro.adddata(datafeeds.to_backtrader(period, name=sym, signal=sig, atr=atr), name=sym)
    cerebro.broker.set_coo(True)
    cerebro.broker.setcash(float(cash))
    cerebro.broker.setcommission(commission=float(commission), commtype=bt.CommInfoBase.COMM_PERC,
                                 percabs=True, stocklike=True)
    if slippage:
        cerebro.broker.set_slippage_perc(float(slippage), slip_open=True, slip_limit=True, slip_match=True,
                                         slip_out=False)
    cerebro.addstrategy(PortfolioAgentStrategy, threshold=threshold, pt=pt, sl=sl, horizon=int(horizon),
                        max_positions=int(max_positions), size_frac=size_frac,
                        n_bars=tuple(len(p) for p, _, _ in per.values()), n_times=len(times))
    t0 = time.perf_counter()
    strat = cerebro.run()[0]
    run_seconds = time.perf_counter() - t0
    if len(strat.equity_values) != len(times):
        raise RuntimeError(f"the portfolio strategy recorded {len(strat.equity_values)} values for {len(times)} times")
    equity = np.array(strat.equity_values, dtype=np.float64)
    equity[-1] -= strat.eod_cost
    return {"equity": equity, "positions": strat.position_sizes, "trades": strat.trade_log,
            "skipped": list(strat.skipped), "rejected": list(strat.rejected), "run_seconds": run_seconds}


def _contribution(trades, positions, skipped, rejected, symbols, cash) -> pd.DataFrame:
    rows = []
    for k, sym in enumerate(symbols):
        t = trades[trades["symbol"] == sym] if len(trades) else trades
        pnl = float(t["pnl"].sum()) if len(t) else 0.0
        rows.append({"symbol": sym, "pnl": pnl, "return_contribution": pnl / cash, "trades": int(len(t)),
                     "win_rate": float((t["pnl"] > 0).mean()) if len(t) else None,
                     "exposure": float((positions[sym] != 0).mean()), "skipped_signals": int(skipped[k]),
                     "rejected_entries": int(rejected[k])})
    return pd.DataFrame(rows).set_index("symbol")


def equal_weight_buy_and_hold(per, times, cash, commission, slippage, ppy, risk_free=0.0):
    """Equity and stats of cash / n in each instrument, bought as ``strategies.BuyAndHold`` does and held
    (not rebalanced); a sleeve holds its cash before its instrument's first bar and after its last."""
    n = len(per)
    total = pd.Series(0.0, index=times)
    held = np.zeros(len(times), dtype=bool)
    trades = []
    for sym, (period, _, _) in per.items():
        sleeve, sleeve_trades = buy_and_hold_equity(period, cash / n, commission, slippage)
        total += sleeve.reindex(times).ffill().fillna(cash / n)
        for t in sleeve_trades.itertuples(index=False):
            held |= (times >= t.entry_time) & (times < t.exit_time)
        trades.append(sleeve_trades.assign(symbol=sym))
    total.name = "benchmark"
    trades = pd.concat(trades, ignore_index=True)
    stats = compute_stats(total, trades, periods_per_year=ppy, exposure=float(held.mean()), risk_free=risk_free)
    return total, stats
