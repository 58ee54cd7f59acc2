"""Benchmark: numba Triple Barrier labels vs a naive per-event pandas loop, on bootstrapped S&P 500 bars.

Bars are built by resampling real sp500 daily bars with replacement: each drawn bar brings its
close-to-close log return and its open/high/low offsets from its own close, so every bar keeps a
realistic shape and gap. Run: python benchmarks/bench_labeling.py --bars 200000 --seed 0
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numba
import numpy as np
import pandas as pd
import talib

from labeling import TBMConfig, atr, triple_barrier_labels
from labeling.tbm import _triple_barrier_nb
from _common import bootstrap_bars, machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1]


def load_sp500() -> pd.DataFrame:
    try:
        from datafeeds import load_ohlcv

        return load_ohlcv("sp500")
    except ImportError:
        return pd.read_csv(ROOT / "datafeeds" / "samples" / "sp500.csv.gz", index_col="datetime",
                           parse_dates=["datetime"])


def pandas_loop_labels(df: pd.DataFrame, cfg: TBMConfig, n_events: int | None = None) -> pd.DataFrame:
    """The naive way: TA-Lib ATR, then one .iloc slice of the next `horizon` bars per event."""
    a = talib.ATR(df["high"].to_numpy(float), df["low"].to_numpy(float), df["close"].to_numpy(float), cfg.atr_period)
    rows = []
    stop = len(df) - cfg.horizon
    for t in range(stop):
        if np.isnan(a[t]):
            continue
        if n_events is not None and len(rows) >= n_events:
            break
        c0 = df["close"].iloc[t]
        upper, lower = c0 + cfg.pt * a[t], c0 - cfg.sl * a[t]
        path = df.iloc[t + 1 : t + 1 + cfg.horizon]
        hit_lo = path["low"] <= lower
        hit_up = path["high"] >= upper
        hit = hit_lo | hit_up
        if hit.any():
            when = hit.idxmax()
            if hit_lo[when]:  # both in one bar -> lower (pessimistic)
                rows.append((df.index[t], 0, when, lower / c0 - 1, -1))
            else:
                rows.append((df.index[t], 1, when, upper / c0 - 1, 1))
        else:
            rows.append((df.index[t], 0, path.index[-1], path["close"].iloc[-1] / c0 - 1, 0))
    return pd.DataFrame(rows, columns=["datetime", "label", "t1", "ret", "barrier"]).set_index("datetime")


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pandas-events", type=int, default=20_000, help="events timed in the pandas loop (prefix)")
    args = ap.parse_args()
    cfg = TBMConfig()

    print(machine_info(np, pd, numba))
    df = bootstrap_bars(load_sp500(), args.bars, args.seed)
    print(f"bars: {len(df):,} bootstrapped from sp500 daily (seed {args.seed}); config {cfg.to_dict()}")

    h, lo, c = (df[col].to_numpy() for col in ("high", "low", "close"))
    a = atr(h, lo, c, cfg.atr_period)
    kernel_args = (h, lo, c, a, np.ones(len(c), np.int8), cfg.pt, cfg.sl, cfg.horizon)

    # JIT cost, reported apart from the run time: a fresh uncached copy of the kernel compiles from scratch.
    fresh = numba.njit(cache=False)(_triple_barrier_nb.py_func)
    t0 = time.perf_counter()
    fresh(*kernel_args)
    print(f"numba compile + first run, fresh (uncached) kernel: {time.perf_counter() - t0:.3f} s")
    t0 = time.perf_counter()
    _triple_barrier_nb(*kernel_args)  # warm-up: loads the on-disk cache or compiles
    triple_barrier_labels(df, config=cfg)
    print(f"library warm-up (cache load or compile, plus one run): {time.perf_counter() - t0:.3f} s")

    t_kernel = best_of(lambda: _triple_barrier_nb(*kernel_args), 5)
    t_numba = best_of(lambda: triple_barrier_labels(df, config=cfg), 3)
    labels = triple_barrier_labels(df, config=cfg)
    n_events = len(labels)
    print(f"numba kernel alone: {t_kernel * 1e3:.1f} ms; triple_barrier_labels (validate + ATR + kernel + frame): "
          f"{t_numba * 1e3:.1f} ms for {n_events:,} events ({n_events / t_numba:,.0f} events/s)")

    k = min(args.pandas_events, n_events)
    t0 = time.perf_counter()
    ref = pandas_loop_labels(df, cfg, n_events=k)
    t_pandas = time.perf_counter() - t0
    extrapolated = t_pandas * n_events / k
    note = "measured" if k == n_events else f"measured on the first {k:,} events, extrapolated linearly to {n_events:,}"
    print(f"pandas .iloc loop: {t_pandas:.2f} s for {k:,} events ({k / t_pandas:,.0f} events/s); "
          f"full run ~{extrapolated:.1f} s ({note})")

    head = labels.iloc[:k]
    same = (
        head.index.equals(ref.index)
        and np.array_equal(head["label"].to_numpy(), ref["label"].to_numpy())
        and np.array_equal(head["barrier"].to_numpy(), ref["barrier"].to_numpy())
        and bool((head["t1"].to_numpy() == ref["t1"].to_numpy()).all())
        and np.allclose(head["ret"].to_numpy(), ref["ret"].to_numpy(), rtol=1e-12, atol=1e-15)
    )
    print(f"labels identical on the {k:,} overlapping events: {same}")
    counts = labels["barrier"].value_counts().sort_index()
    print("barrier counts: " + ", ".join(f"{name} {counts.get(i, 0):,}"
                                         for i, name in ((-1, "lower"), (0, "vertical"), (1, "upper"))))
    print(f"speed ratio (pandas loop / numba, same events, this run): "
          f"{extrapolated / t_numba:,.0f}x end to end, {extrapolated / t_kernel:,.0f}x vs the kernel alone")
    if not same:
        raise SystemExit("label mismatch between numba and pandas implementations")


if __name__ == "__main__":
    main()
