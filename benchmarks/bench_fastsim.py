"""Benchmark: engine.fastsim vs the backtrader run of the agent strategy, same bars, same random signal.

Bars are bootstrapped from real sp500 daily bars (each drawn bar brings its close-to-close log return
and its open/high/low offsets from its close). Both engines run through ``engine.run_backtest``
(benchmark off); their trades and equity must be identical. Run:
python benchmarks/bench_fastsim.py --bars 100000 --seed 0

``--universe 50x20000``: the portfolio case instead: 50 instruments of 20,000 bootstrapped bars each, on
calendars with gaps (each instrument drops ~5% of the days at random), random signals, at most 10
positions; ``engine.run_portfolio`` on backtrader vs the fast simulator, trades and equity identical.
With ``--sweep N`` too: ``engine.sweep_portfolio`` over N configurations against N fast ``run_portfolio`` calls.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np
import pandas as pd

import datafeeds
from engine import BarrierRules, Costs, RunConfig, run_backtest
from engine.fastsim.kernels import simulate_nb
from _common import bootstrap_bars, machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

RULES = BarrierRules(threshold=0.6, pt=1.5, sl=1.5, horizon=20, size_frac=1.0)
COSTS = Costs(commission=0.0005, slippage=0.0002)
RUN = RunConfig(benchmark=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=100_000, help="synthetic bars to simulate")
    ap.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of the signal")
    ap.add_argument("--repeats", type=int, default=5, help="timed fast runs (the median is reported)")
    ap.add_argument("--universe", default=None, metavar="NxBARS",
                    help="the portfolio case instead, e.g. 50x20000 (N instruments of BARS bars each)")
    ap.add_argument("--max-positions", type=int, default=10, help="portfolio case: positions at once")
    ap.add_argument("--sweep", type=int, default=0, metavar="N",
                    help="also time engine.fastsim.sweep (with --universe: engine.sweep_portfolio) over N "
                         "configurations (e.g. 1000; 64 for a universe) against N single calls")
    args = ap.parse_args()
    if args.universe:
        universe_case(args)
        return

    df = bootstrap_bars(datafeeds.load_ohlcv("sp500"), args.bars, args.seed)
    signal = np.random.default_rng(args.seed + 1).random(len(df))
    kw = dict(signal=signal, rules=RULES, costs=COSTS)
    print(f"machine: {machine_info(np, pd, numba)}")
    print(f"data: {len(df):,} bootstrapped sp500 bars, random signal, rules {RULES.to_dict()}, "
          f"costs {COSTS.to_dict()}")

    fast, first_call, fast_s, kernel_s, ratio = timed_fast_calls(
        lambda: run_backtest(df, "agent", run=RUN.replace(engine="fast"), **kw), args.repeats)

    t0 = time.perf_counter()
    ref = run_backtest(df, "agent", run=RUN.replace(engine="backtrader"), **kw)
    bt_s = time.perf_counter() - t0

    pd.testing.assert_frame_equal(fast.trades, ref.trades, check_exact=False, rtol=1e-9)
    np.testing.assert_allclose(fast.equity.to_numpy(), ref.equity.to_numpy(), rtol=1e-9, atol=0)
    bit_equal = fast.trades.equals(ref.trades) and fast.equity.equals(ref.equity)

    print(f"trades: {len(ref.trades):,} identical in both engines (bit-equal: {bit_equal}); "
          f"exit reasons {ref.trades['exit_reason'].value_counts().to_dict()}")
    print(f"first fast call (numba compile or cache load + run): {first_call:8.3f} s "
          f"(numba on-disk cache {'hit' if sum(simulate_nb.stats.cache_hits.values()) else 'miss: compiled'})")
    print(f"backtrader run_backtest:                  {bt_s:8.3f} s  ({len(df) / bt_s:,.0f} bars/s)")
    print(f"fast run_backtest (median of {args.repeats}):         {fast_s:8.4f} s  "
          f"({len(df) / fast_s:,.0f} bars/s), of which kernel {kernel_s * 1e3:.2f} ms")
    print(f"speed-up, whole run_backtest: {bt_s / fast_s:,.0f}x; backtrader run vs kernel alone: "
          f"{ref.config['run_seconds'] / kernel_s:,.0f}x; whole fast call / kernel: {ratio:.1f}x "
          f"(median over the calls of each call's ratio)")
    if args.sweep:
        sweep_case(df, signal, args.sweep)


def timed_fast_calls(call, repeats: int):
    """A first (compile or cache load) call, then ``repeats`` timed ones: the last result, the first call's
    seconds, the median whole call and kernel seconds, and the median of each call's whole / kernel ratio
    (a burst of load on the machine slows both parts of that call)."""
    t0 = time.perf_counter()
    result = call()
    first = time.perf_counter() - t0
    times, kernel = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - t0)
        kernel.append(result.config["run_seconds"])
    ratio = statistics.median(w / k for w, k in zip(times, kernel))
    return result, first, statistics.median(times), statistics.median(kernel), ratio


def sweep_case(df, signal, n_conf: int) -> None:
    """``fastsim.sweep`` over ``n_conf`` configurations vs one ``run_backtest(engine="fast")`` call each."""
    from engine.fastsim import SWEEP_STATS, sweep

    rng = np.random.default_rng(123)
    grid = pd.DataFrame({"threshold": rng.uniform(0.5, 0.95, n_conf), "pt": rng.uniform(0.5, 4.0, n_conf),
                         "sl": rng.uniform(0.5, 4.0, n_conf), "horizon": rng.integers(5, 100, n_conf)})
    sweep(df, signal, grid.head(2), costs=COSTS)  # compile or load the parallel kernel
    t0 = time.perf_counter()
    res = sweep(df, signal, grid, costs=COSTS)
    sweep_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    worst = 0.0
    for i, row in grid.iterrows():
        one = run_backtest(df, "agent", signal=signal, run=RUN.replace(engine="fast"), costs=COSTS,
                           rules=BarrierRules(threshold=row.threshold, pt=row.pt, sl=row.sl, horizon=int(row.horizon)))
        for name in ("total_return", "sharpe", "max_drawdown", "n_trades"):
            want, got = one.stats[name], res.at[i, name]
            if want is not None:
                worst = max(worst, abs(got - want) / max(abs(want), 1e-300))
    loop_s = time.perf_counter() - t0
    print(f"sweep of {n_conf:,} configurations in one call ({numba.get_num_threads()} threads): {sweep_s:.3f} s; "
          f"{n_conf:,} single run_backtest(engine='fast') calls: {loop_s:.2f} s: **{loop_s / sweep_s:.1f}x**; "
          f"trades {int(res['n_trades'].sum()):,} in all; max relative difference of the headline stats "
          f"{worst:.1e} ({', '.join(SWEEP_STATS[:3])}, ...)")


def universe_case(args) -> None:
    from engine import run_portfolio

    try:
        n, bars = (int(v) for v in args.universe.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--universe {args.universe!r}: use NxBARS, e.g. 50x20000") from None
    src = datafeeds.load_ohlcv("sp500")
    rng = np.random.default_rng(args.seed)
    frames, signals = {}, {}
    for k in range(n):
        df = bootstrap_bars(src, bars, args.seed * 1000 + k)
        df = df[rng.random(len(df)) >= 0.05]  # holidays: each instrument misses ~5% of the minutes, its own
        frames[f"S{k:02d}"] = df
        signals[f"S{k:02d}"] = pd.Series(rng.random(len(df)), index=df.index)
    rules = BarrierRules(threshold=0.6, pt=1.5, sl=1.5, horizon=20)
    kw = dict(max_positions=args.max_positions, rules=rules, costs=COSTS)
    print(f"machine: {machine_info(np, pd, numba)}")
    print(f"data: {n} instruments x {bars:,} bootstrapped sp500 bars (~5% missing each, own calendars), "
          f"random signals, max_positions {args.max_positions}, rules {rules.to_dict()}, costs {COSTS.to_dict()}")
    fast, first_call, fast_s, kernel_s, ratio = timed_fast_calls(
        lambda: run_portfolio(frames, signals, run=RUN.replace(engine="fast"), **kw), args.repeats)
    t0 = time.perf_counter()
    ref = run_portfolio(frames, signals, run=RUN.replace(engine="backtrader"), **kw)
    bt_s = time.perf_counter() - t0
    pd.testing.assert_frame_equal(fast.trades, ref.trades, check_exact=False, rtol=1e-9)
    np.testing.assert_allclose(fast.equity.to_numpy(), ref.equity.to_numpy(), rtol=1e-9, atol=0)
    bit_equal = fast.trades.equals(ref.trades) and fast.equity.equals(ref.equity)
    print(f"times: {len(ref.equity):,} (union of the calendars); trades: {len(ref.trades):,} identical in both "
          f"engines (bit-equal: {bit_equal}); skipped signals {ref.stats['skipped_signals']:,}")
    print(f"first fast call (compile or cache load + run): {first_call:8.3f} s")
    print(f"backtrader run_portfolio:                      {bt_s:8.3f} s")
    print(f"fast run_portfolio (median of {args.repeats}):              {fast_s:8.4f} s, of which kernel "
          f"{kernel_s * 1e3:.1f} ms")
    print(f"speed-up, whole run_portfolio: {bt_s / fast_s:,.0f}x; backtrader run vs kernel alone: "
          f"{ref.config['run_seconds'] / kernel_s:,.0f}x; whole fast call / kernel: {ratio:.1f}x (median over the "
          "calls of each call's ratio)")
    if args.sweep:
        portfolio_sweep_case(frames, signals, kw, args.sweep)


def portfolio_sweep_case(frames, signals, kw, n_conf: int) -> None:
    """``engine.sweep_portfolio`` over ``n_conf`` configurations vs one fast ``run_portfolio`` call each."""
    from engine import run_portfolio, sweep_portfolio

    rng = np.random.default_rng(123)
    grid = pd.DataFrame({"threshold": rng.uniform(0.5, 0.95, n_conf), "pt": rng.uniform(0.5, 4.0, n_conf),
                         "sl": rng.uniform(0.5, 4.0, n_conf), "horizon": rng.integers(5, 100, n_conf)})
    base = dict(kw, run=RUN.replace(engine="fast"))
    most = base.pop("max_positions")
    grid["max_positions"] = most
    sweep_portfolio(frames, signals, grid.head(2), **base)  # compile or load the parallel kernel
    t0 = time.perf_counter()
    res = sweep_portfolio(frames, signals, grid, **base)
    sweep_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    worst = 0.0
    for i, row in grid.iterrows():
        rules = kw["rules"].replace(threshold=row.threshold, pt=row.pt, sl=row.sl, horizon=int(row.horizon))
        one = run_portfolio(frames, signals, **dict(base, rules=rules), max_positions=most)
        for name in ("total_return", "sharpe", "max_drawdown", "n_trades"):
            want, got = one.stats[name], res.at[i, name]
            if want is not None:
                worst = max(worst, abs(got - want) / max(abs(want), 1e-300))
    loop_s = time.perf_counter() - t0
    print(f"portfolio sweep of {n_conf:,} configurations in one call ({numba.get_num_threads()} threads): "
          f"{sweep_s:.3f} s; {n_conf:,} fast run_portfolio calls: {loop_s:.2f} s: **{loop_s / sweep_s:.1f}x**; "
          f"trades {int(res['n_trades'].sum()):,} in all; max relative difference of the headline stats {worst:.1e}")


if __name__ == "__main__":
    main()
