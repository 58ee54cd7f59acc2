"""Benchmark: engine.fastsim vs the backtrader run of the agent strategy, same bars, same random signal.

Bars are bootstrapped from real sp500 daily bars (each drawn bar brings its close-to-close log return
and its open/high/low offsets from its close). Both engines run through ``engine.run_backtest``
(benchmark off); their trades and equity must be identical. Run:
python benchmarks/bench_fastsim.py --bars 100000 --seed 0
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np
import pandas as pd

import datafeeds
from engine import run_backtest
from engine.fastsim import _simulate_nb
from _common import bootstrap_bars, machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

PARAMS = dict(threshold=0.6, pt=1.5, sl=1.5, horizon=20, size_frac=1.0, commission=0.0005, slippage=0.0002)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=100_000, help="synthetic bars to simulate")
    ap.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of the signal")
    ap.add_argument("--repeats", type=int, default=5, help="timed fast runs (the median is reported)")
    args = ap.parse_args()

    df = bootstrap_bars(datafeeds.load_ohlcv("sp500"), args.bars, args.seed)
    signal = np.random.default_rng(args.seed + 1).random(len(df))
    kw = dict(signal=signal, benchmark=False, **PARAMS)
    print(f"machine: {machine_info(np, pd, numba)}")
    print(f"data: {len(df):,} bootstrapped sp500 bars, random signal, params {PARAMS}")

    t0 = time.perf_counter()
    fast = run_backtest(df, "agent", engine="fast", **kw)
    first_call = time.perf_counter() - t0
    times, kernel = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fast = run_backtest(df, "agent", engine="fast", **kw)
        times.append(time.perf_counter() - t0)
        kernel.append(fast.config["run_seconds"])
    fast_s, kernel_s = statistics.median(times), statistics.median(kernel)

    t0 = time.perf_counter()
    ref = run_backtest(df, "agent", engine="backtrader", **kw)
    bt_s = time.perf_counter() - t0

    pd.testing.assert_frame_equal(fast.trades, ref.trades, check_exact=False, rtol=1e-9)
    np.testing.assert_allclose(fast.equity.to_numpy(), ref.equity.to_numpy(), rtol=1e-9, atol=0)
    bit_equal = fast.trades.equals(ref.trades) and fast.equity.equals(ref.equity)

    print(f"trades: {len(ref.trades):,} identical in both engines (bit-equal: {bit_equal}); "
          f"exit reasons {ref.trades['exit_reason'].value_counts().to_dict()}")
    print(f"first fast call (numba compile or cache load + run): {first_call:8.3f} s "
          f"(numba on-disk cache {'hit' if sum(_simulate_nb.stats.cache_hits.values()) else 'miss: compiled'})")
    print(f"backtrader run_backtest:                  {bt_s:8.3f} s  ({len(df) / bt_s:,.0f} bars/s)")
    print(f"fast run_backtest (median of {args.repeats}):         {fast_s:8.4f} s  "
          f"({len(df) / fast_s:,.0f} bars/s), of which kernel {kernel_s * 1e3:.2f} ms")
    print(f"speed-up, whole run_backtest: {bt_s / fast_s:,.0f}x; backtrader run vs kernel alone: "
          f"{ref.config['run_seconds'] / kernel_s:,.0f}x")


if __name__ == "__main__":
    main()
