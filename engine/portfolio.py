"""Portfolio backtests: one agent's signals on several instruments, one broker, shared cash.

``run_portfolio(frames, signals, ...)`` runs ``strategies.PortfolioAgentStrategy`` on backtrader (one
feed per instrument in one Cerebro; see that module for how the multi-feed clock is used) or the same
rules through the fast simulator (``engine.fastsim.simulate_portfolio``), trade for trade equal.
The benchmark is an equal-weight buy-and-hold of the same instruments with the same costs, not
rebalanced: each instrument's sleeve (cash / n) buys at its second bar's open after a decision at its
first close, like ``strategies.BuyAndHold``, holds cash before its first bar and after its last.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import numpy as np
import pandas as pd

import datafeeds
from engine.backtest_common import Instrument, bet_inputs, prepare_inputs
from engine.cerebro import build_cerebro, run_strategy
from engine.config import RunConfig
from engine.fastsim import SWEEP_PARAMS, buy_and_hold_equity, simulate_portfolio
from engine.fastsim.grid import grid_configs, size_groups, sweep_result
from engine.fastsim.inputs import account, clock, rule_grid
from engine.fastsim.portfolio import portfolio_arrays
from engine.fastsim.portfolio_kernel import portfolio_sweep_nb
from engine.jsonable import jsonable
from engine.metrics import compute_stats, infer_periods_per_year
from engine.results import PortfolioResult
from labeling.rules import BarrierRules, Costs, check_max_positions
from strategies import BarrierBroker
from strategies.portfolio import PORTFOLIO_TRADE_FIELDS, PortfolioAgentStrategy

log = logging.getLogger(__name__)


def inputs(frames: Mapping[str, pd.DataFrame], signals: Mapping[str, pd.Series], sides, atr, rules: BarrierRules,
           run: RunConfig):
    """Per symbol (sorted by name): its :class:`~engine.backtest_common.Instrument` (the period's bars, signal, ATR,
    sides and entry sizes); the union of the times; periods per year.

    Signals and ATR (``atr``: symbol -> series overriding ``labeling.atr``, e.g. for barriers set by hand) are
    aligned and checked as for one instrument (``prepare_inputs``) over ``run``'s period; an instrument with
    fewer than 2 bars in the period is refused, naming it.
    """
    if not frames:
        raise ValueError("a portfolio needs at least one instrument")
    missing = sorted(set(frames) - set(signals))
    if missing:
        raise ValueError(f"no signal for {', '.join(missing)}: pass one probability series per instrument")
    unknown = sorted(set(sides or {}) - set(frames))
    if unknown:
        raise ValueError(f"sides for {', '.join(unknown)}, which the portfolio does not hold")
    per = {}
    for sym in sorted(frames):
        df = frames[sym]
        try:
            sig, atr_full, period, _ = prepare_inputs(df, signals[sym], None if atr is None else atr[sym],
                                                      rules.atr_period, run.replace(periods_per_year=1.0))
            side, size = bet_inputs(df, sig, None if sides is None else sides.get(sym), rules)
        except ValueError as exc:
            raise ValueError(f"{sym}: {exc}") from None
        lo = df.index.get_loc(period.index[0])
        span = slice(lo, lo + len(period))
        per[sym] = Instrument(period, sig.to_numpy(np.float64)[span], atr_full.to_numpy(np.float64)[span],
                              side[span], size[span])
    indexes = [i.period.index for i in per.values()]
    times = indexes[0].append(indexes[1:]).unique().sort_values().rename("datetime")
    ppy = float(run.periods_per_year) if run.periods_per_year else infer_periods_per_year(times)
    return per, times, ppy


def run_portfolio(
    frames: Mapping[str, pd.DataFrame] | str,
    signals: Mapping[str, pd.Series],
    *,
    sides: Mapping[str, pd.Series] | None = None,
    atr: Mapping[str, pd.Series] | None = None,
    rules: BarrierRules | None = None,
    costs: Costs | None = None,
    run: RunConfig | None = None,
    max_positions: int = 1,
) -> PortfolioResult:
    """Backtest the agent strategy on every instrument of ``frames`` (symbol -> OHLCV frame, or a universe
    name/path/glob for ``datafeeds.load_universe``) with ``signals`` (symbol -> probabilities aligned to
    that frame), one broker and shared cash, at most ``max_positions`` positions at once; each entry commits
    ``rules.size_frac`` of equity (None: equity / max_positions). ``sides``: symbol -> sides as
    ``run_backtest``'s ``side`` (a symbol left out, or None: long). ``atr``, ``rules``, ``costs`` and ``run`` as
    for :func:`engine.run_backtest` (``run.native_barriers`` aside: portfolios run on BarrierBroker)."""
    t0 = time.perf_counter()
    rules, costs, run = rules or BarrierRules(), costs or Costs(), run or RunConfig()
    max_positions = check_max_positions(max_positions)
    frames = _as_frames(frames)
    per, times, ppy = inputs(frames, signals, sides, atr, rules, run)
    symbols = list(per)
    simulator = simulate_portfolio if run.engine == "fast" else _run_backtrader
    out = simulator(per, times, rules, costs, run, max_positions)
    equity = pd.Series(out["equity"], index=times, name="equity", dtype=np.float64)
    positions = pd.DataFrame(np.asarray(out["positions"], dtype=np.float64).reshape(len(times), len(symbols)),
                             index=times, columns=symbols)
    trades = pd.DataFrame(out["trades"], columns=list(PORTFOLIO_TRADE_FIELDS))
    if len(trades):
        trades = trades.sort_values(["exit_time", "symbol"], kind="stable").reset_index(drop=True)
    in_market = (positions != 0).any(axis=1)
    stats = compute_stats(equity, trades, periods_per_year=ppy, exposure=float(in_market.mean()),
                          risk_free=run.risk_free)
    stats["rejected_entries"] = int(sum(out["rejected"]))
    stats["skipped_signals"] = int(sum(out["skipped"]))
    contribution = _contribution(trades, positions, out["skipped"], out["rejected"], symbols, run.cash)

    bench_equity = bench_stats = None
    if run.benchmark:
        bench_equity, bench_stats = equal_weight_buy_and_hold(per, times, run, costs, ppy)
    size_frac = rules.size_frac
    config = {
        "strategy": "PortfolioAgentStrategy",
        "engine": run.engine,
        "symbols": symbols,
        "params": {k: jsonable(v) for k, v in (("threshold", rules.threshold), ("pt", rules.pt), ("sl", rules.sl),
                                                 ("horizon", rules.horizon), ("max_positions", max_positions),
                                                 ("size_frac", size_frac))},
        "sizing": (f"equity / {max_positions} per entry" if size_frac is None else f"{size_frac:g} x equity per entry"),
        "data": {s: {"source": str(frames[s].attrs.get("source", s)), "sha256": frames[s].attrs.get("sha256"),
                     "bars": int(len(p)), "start": str(p.index[0]), "end": str(p.index[-1])}
                 for s, p in ((s, i.period) for s, i in per.items())},
        "start": str(times[0]), "end": str(times[-1]), "times": int(len(times)),
        "cash": run.cash, "commission": costs.commission, "slippage": costs.slippage, "borrow": costs.borrow,
        "margin": run.margin, "sides": "given" if sides else "long",
        "atr_period": rules.atr_period, "periods_per_year": ppy, "risk_free": run.risk_free,
        "benchmark": ("equal-weight buy-and-hold of the same instruments, cash / n each, same costs, not rebalanced"
                      if run.benchmark else None),
        "run_seconds": out["run_seconds"],
        "total_seconds": time.perf_counter() - t0,
    }
    return PortfolioResult(equity=equity, trades=trades, stats=stats, contribution=contribution, positions=positions,
                           benchmark_equity=bench_equity, benchmark_stats=bench_stats, config=config,
                           periods_per_year=ppy, data={s: i.period for s, i in per.items()})


def sweep_portfolio(
    frames: Mapping[str, pd.DataFrame] | str,
    signals: Mapping[str, pd.Series],
    grid,
    *,
    sides: Mapping[str, pd.Series] | None = None,
    rules: BarrierRules | None = None,
    costs: Costs | None = None,
    run: RunConfig | None = None,
    equity: bool = False,
):
    """:func:`run_portfolio` on the fast engine for many configurations in one parallel numba call.

    ``grid`` as for :func:`engine.fastsim.sweep` (field -> values: their product, or a DataFrame of rows), whose
    fields may also include ``max_positions`` (default 1, as for ``run_portfolio``); the other arguments as for
    :func:`run_portfolio`. Returns one row per configuration: its parameters and the headline numbers
    ``run_portfolio(run=RunConfig(engine="fast"))`` reports for it (``SWEEP_STATS``; NaN where that gives None);
    with ``equity=True`` also the equity curves (a DataFrame on the portfolio's times, a column per
    configuration: 8 bytes x times x configurations).
    """
    base, costs, run = rules or BarrierRules(), costs or Costs(), run or RunConfig()
    frames = _as_frames(frames)
    rows, confs = grid_configs(grid, base, extra=("max_positions",))
    most = rows["max_positions"].tolist() if "max_positions" in rows else [1] * len(confs)
    try:
        most = np.array([check_max_positions(k) for k in most], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"sweep: {exc}") from None
    firsts, size_row = size_groups(confs)
    # the entry sizes of each group sizing alike, on the full data like a single run's (the rest is shared)
    per, times, ppy = inputs(frames, signals, sides, None, firsts[0], run)
    bars, sigs, calendar = portfolio_arrays(per, times)
    sizes = np.array([sigs.size] + [portfolio_arrays(inputs(frames, signals, sides, None, c, run)[0], times)[1].size
                                    for c in firsts[1:]])
    # size_frac None (-1 to the kernel): equity / max_positions per entry
    res = portfolio_sweep_nb(bars, sigs._replace(size=sizes), calendar, rule_grid(confs, -1.0, size_row), most,
                             account(run, costs), clock(times, ppy, run.risk_free), bool(equity))
    params = {k: [getattr(c, k) for c in confs] for k in SWEEP_PARAMS} | {"max_positions": most}
    return sweep_result(params, res, times, equity)


def _as_frames(frames) -> Mapping[str, pd.DataFrame]:
    """``frames`` as symbol -> OHLCV frame: a universe's name, path or glob loaded by ``datafeeds.load_universe``."""
    if isinstance(frames, (str, bytes)) or not isinstance(frames, Mapping):
        return datafeeds.load_universe(frames)
    return frames


def _run_backtrader(per, times, rules: BarrierRules, costs: Costs, run: RunConfig, max_positions: int) -> dict:
    feeds = {}
    for sym, i in per.items():
        lines = {"signal": i.signal, "atr": i.atr}
        if (i.side != 1.0).any():  # a long-only instrument reads no side line
            lines["side"] = i.side
        if rules.sizing != "fixed":
            lines["bet_size"] = i.size
        feeds[sym] = (i.period, lines)
    cerebro = build_cerebro(feeds, BarrierBroker(), run, costs)
    strat, run_seconds = run_strategy(cerebro, PortfolioAgentStrategy, {
        "rules": rules, "max_positions": max_positions, "n_bars": tuple(len(i.period) for i in per.values()),
        "n_times": len(times)})
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


def equal_weight_buy_and_hold(per, times, run: RunConfig, costs: Costs, ppy: float):
    """Equity and stats of cash / n in each instrument, bought as ``strategies.BuyAndHold`` does and held
    (not rebalanced); a sleeve holds its cash before its instrument's first bar and after its last."""
    n, cash = len(per), run.cash
    total = pd.Series(0.0, index=times)
    held = np.zeros(len(times), dtype=bool)
    trades = []
    for sym, period in ((s, i.period) for s, i in per.items()):
        sleeve, sleeve_trades = buy_and_hold_equity(period, cash / n, costs)
        total += sleeve.reindex(times).ffill().fillna(cash / n)
        for t in sleeve_trades.itertuples(index=False):
            held |= (times >= t.entry_time) & (times < t.exit_time)
        trades.append(sleeve_trades.assign(symbol=sym))
    total.name = "benchmark"
    trades = pd.concat(trades, ignore_index=True)
    stats = compute_stats(total, trades, periods_per_year=ppy, exposure=float(held.mean()), risk_free=run.risk_free)
    return total, stats
