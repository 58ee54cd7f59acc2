"""Benchmark: the agent strategy on backtrader against backtrader's own floor, plus signal generation.

Bars: real sp500 daily bars resampled with replacement (each drawn bar brings its close-to-close log
return, its open/high/low offsets from its close and its volume, jointly), on a minute index so that
100k bars stay inside pandas' timestamp range. Runs, all over feeds built by ``datafeeds.to_backtrader``
with the same ``atr`` and ``signal`` lines (but (a0)), preload + runonce, stdstats=False:
(a)  a bare strategy (``next()`` does nothing) in a plain Cerebro: backtrader's floor;
(a0) the same over a stock ``bt.feeds.PandasData`` of the OHLCV alone (what backtrader's docs measure);
(a') a bare strategy through ``engine.run_backtest`` (cheat-on-open, equity recording, ATR, stats);
(m)  the agent run's round trips as two market orders each (bought at the same opens, sold at the open
     of the exit bars), through ``run_backtest``: the least backtrader's broker costs for that many trades;
(s)  the agent strategy on the stock ``BackBroker`` (``RunConfig(native_barriers=False)``): stop + OCO limit +
     market time exit per trade, checked trade for trade against (b);
(b)  ``run_backtest(df, "agent", signal=AR(1) probabilities)`` (one ``TripleBarrierOrder`` per exit),
     split into cerebro.run and the rest;
(f)  the same through ``run_backtest(..., run=RunConfig(engine="fast"))`` (engine.fastsim), checked trade for trade;
(c)  ``OnnxAgent.predict_proba`` of the shipped agent on a prefix of the same bars (warm-up excluded),
     extrapolated linearly to all bars (batch inference is linear in the number of windows).
Wall and CPU seconds are both shown: the machine may be shared, and CPU time of these single-threaded
backtests is the steadier number. Acceptance target: (b) cerebro.run <= 1.5x (a).

    python benchmarks/bench_backtest.py [--bars 100000 --seed 0 --repeat 1 --signal-rate 0.3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import backtrader as bt
import numpy as np
import pandas as pd

import datafeeds
import labeling
from engine import BarrierRules, RunConfig, run_backtest
from strategies import TradeLogStrategy
from _common import bootstrap_bars, load_avg, machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.5  # acceptance: agent strategy on precomputed signals <= 1.5x the bare pass
AGENT_WARMUP = 162  # NaN bars at the start of the synthetic signal, like agent1's warm-up


def ar1_probs(n: int, seed: int, phi: float = 0.95, scale: float = 0.35) -> np.ndarray:
    """Persistent probabilities: the logistic of an AR(1) logit; NaN for the first AGENT_WARMUP bars."""
    eps = np.random.default_rng(seed + 1).normal(0.0, scale, size=n)
    z = np.empty(n)
    z[0] = eps[0] / np.sqrt(1 - phi**2)
    for i in range(1, n):
        z[i] = phi * z[i - 1] + eps[i]
    p = 1.0 / (1.0 + np.exp(-z))
    p[:AGENT_WARMUP] = np.nan
    return p


class _Floor(bt.Strategy):
    """backtrader's floor: a strategy that does nothing."""

    def next(self):
        pass


class _Bare(TradeLogStrategy):
    """Does nothing, through ``run_backtest`` (which records equity and position per bar)."""


class _MarketRoundTrips(TradeLogStrategy):
    """The agent run's round trips as two market orders each, bought at its entry opens and sold at the
    open of its exit bars: the cheapest way backtrader's broker can make that many trades."""

    params = (("entries", None), ("exits", None))  # decision bars -> units to buy; decision bars to sell

    def notify_order(self, order):
        pass  # raw orders, no trade log: the base class would flag each fill as reason-less

    def on_bar(self):
        bar = len(self) - 1
        size = self.p.entries.get(bar)
        if size is not None:
            self.buy(size=size)
        elif bar in self.p.exits and self.position.size:
            self.close()


def round_trips(trades: pd.DataFrame) -> dict:
    """_MarketRoundTrips parameters: half the agent's units (so cash never runs short), same bars."""
    done = trades[trades.exit_reason != "end_of_data"]
    return {"entries": {int(t.entry_bar) - 1: 0.5 * t.size for t in trades.itertuples()},
            "exits": {int(b) - 1 for b in done.exit_bar}}


def plain_cerebro_run(df: pd.DataFrame, lines: dict) -> tuple[float, float]:
    """(wall, cpu) seconds of cerebro.run with the bare strategy and no engine around it.

    No lines: ``to_backtrader`` returns a stock ``bt.feeds.PandasData`` (one ``.iloc`` per value loaded).
    """
    cerebro = bt.Cerebro(stdstats=False, preload=True, runonce=True, optreturn=False)
    cerebro.adddata(datafeeds.to_backtrader(df, **lines))
    cerebro.addstrategy(_Floor)
    w, c = time.perf_counter(), time.process_time()
    cerebro.run()
    return time.perf_counter() - w, time.process_time() - c


def engine_run(df: pd.DataFrame, strategy, *, native_barriers: bool = True, **kwargs):
    """(wall, cpu, cerebro.run wall, result) of one run_backtest call."""
    w, c = time.perf_counter(), time.process_time()
    res = run_backtest(df, strategy, run=RunConfig(benchmark=False, native_barriers=native_barriers), **kwargs)
    return time.perf_counter() - w, time.process_time() - c, res.config["run_seconds"], res


def fast_run(df: pd.DataFrame, probs: np.ndarray, atr: np.ndarray, rules: BarrierRules):
    """(wall, cpu, result) of run_backtest with engine="fast" (engine.fastsim)."""
    w, c = time.perf_counter(), time.process_time()
    res = run_backtest(df, "agent", signal=probs, atr=atr, rules=rules, run=RunConfig(engine="fast", benchmark=False))
    return time.perf_counter() - w, time.process_time() - c, res


def best_of(fn, repeat: int):
    """Run fn() `repeat` times; elementwise minimum of the numeric leading fields, last extra field kept."""
    runs = [fn() for _ in range(repeat)]
    k = sum(isinstance(v, float) for v in runs[0])
    return [min(r[i] for r in runs) for i in range(k)] + list(runs[-1][k:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement; the minimum is reported")
    ap.add_argument("--signal-rate", type=float, default=0.3,
                    help="fraction of bars whose probability reaches the threshold (agent1: 0.29 on validation)")
    ap.add_argument("--sweep", default="0.1,0.03,0.01",
                    help="more signal rates (comma-separated) for a table of cost vs trades per bar; '' = none")
    ap.add_argument("--agent", default=str(ROOT / "models" / "agent1.onnx"))
    ap.add_argument("--signal-bars", type=int, default=20_000,
                    help="bars of the prefix timed for (c), extrapolated to --bars; 0 = all bars")
    args = ap.parse_args()
    if not 0 < args.signal_rate < 1 or args.bars <= AGENT_WARMUP + 100:
        ap.error(f"need 0 < --signal-rate < 1 and --bars > {AGENT_WARMUP + 100}")

    print(machine_info(bt, np, pd))
    print(f"at start: {load_avg()}")
    df = bootstrap_bars(datafeeds.load_ohlcv("sp500"), args.bars, args.seed)
    n = len(df)
    probs = ar1_probs(n, args.seed)
    threshold = float(np.nanquantile(probs, 1 - args.signal_rate))
    rules = BarrierRules(threshold=threshold, pt=1.5, sl=1.5, horizon=20)

    labeling.atr(df["high"].iloc[:100], df["low"].iloc[:100], df["close"].iloc[:100], 14)  # warm-up
    t0 = time.perf_counter()
    atr = labeling.atr(df["high"], df["low"], df["close"], 14)
    t_atr = time.perf_counter() - t0
    lines = {"atr": atr, "signal": probs}
    t0 = time.perf_counter()
    datafeeds.to_backtrader(df, **lines)
    t_feed = time.perf_counter() - t0

    w_a0, c_a0 = best_of(lambda: plain_cerebro_run(df, {}), args.repeat)
    w_a, c_a = best_of(lambda: plain_cerebro_run(df, lines), args.repeat)
    w_ea, c_ea, r_ea, _ = best_of(lambda: engine_run(df, _Bare, atr=atr), args.repeat)
    w_b, c_b, r_b, res = best_of(lambda: engine_run(df, "agent", signal=probs, atr=atr, rules=rules), args.repeat)
    trades = res.trades
    w_s, c_s, r_s, stock = best_of(
        lambda: engine_run(df, "agent", signal=probs, atr=atr, native_barriers=False, rules=rules), args.repeat)
    stock_same = stock.trades.equals(trades) and stock.equity.equals(res.equity)
    w_m, c_m, r_m, mkt = best_of(lambda: engine_run(df, _MarketRoundTrips, atr=atr, **round_trips(trades)),
                                 args.repeat)
    held = mkt.position.to_numpy() != 0
    n_trips = int(held[0] + (held[1:] & ~held[:-1]).sum())

    fast_run(df.iloc[:2000], probs[:2000], atr[:2000], rules)  # warm-up: numba cache load or compile
    w_f, c_f, fast = best_of(lambda: fast_run(df, probs, atr, rules), args.repeat)
    fast_same = len(fast.trades) == len(trades) and np.allclose(
        fast.equity.to_numpy(), res.equity.to_numpy(), rtol=1e-9, atol=1e-6)

    t_load = t_warm = t_pred = float("nan")
    m = n if args.signal_bars <= 0 else min(n, args.signal_bars)
    if Path(args.agent).is_file():
        from agents import OnnxAgent

        t0 = time.perf_counter()
        agent = OnnxAgent.load(args.agent)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        agent.predict_proba(df.iloc[: agent.warmup + 1024])  # numba cache load, ORT allocations
        t_warm = time.perf_counter() - t0
        prefix = df.iloc[:m]

        def predict():
            t0 = time.perf_counter()
            agent.predict_proba(prefix)
            return (time.perf_counter() - t0,)
        (t_pred,) = best_of(predict, args.repeat)
        t_pred *= n / m
    else:
        print(f"agent file {args.agent} not found: skipping (c)")

    print(f"bars: {n:,} bootstrapped from sp500 daily (seed {args.seed}), minute index; AR(1) probabilities, "
          f"threshold {threshold:.4f} reached on {np.nanmean(probs >= threshold):.1%} of bars")
    print(f"agent run: {len(trades):,} trades (one per {n / max(1, len(trades)):.1f} bars), "
          f"exposure {res.stats.get('exposure', float('nan')):.1%}; stock-broker path: same trades and "
          f"equity: {stock_same}; (m) made {n_trips:,} round trips; "
          f"fast engine: {len(fast.trades):,} trades, same equity: {fast_same}")
    print(f"\n{'measurement':56s} {'wall s':>8s} {'cpu s':>8s} {'bars/s':>9s} {'wall/(a)':>9s} {'cpu/(a)':>8s}")

    def row(name, w, c=float("nan")):
        cpu = f"{c:8.2f}" if c == c else f"{'':8s}"
        rc = f"{c / c_a:8.2f}" if c == c else ""
        print(f"{name:56s} {w:8.2f} {cpu} {n / w:9,.0f} {w / w_a:9.2f} {rc}")

    row("(a0) as (a), stock PandasData of OHLCV only: cerebro.run", w_a0, c_a0)
    row("(a)  bare next(), plain Cerebro: cerebro.run", w_a, c_a)
    row("(a') bare strategy via run_backtest: total", w_ea, c_ea)
    row("       of which cerebro.run", r_ea)
    row("(m)  the agent's round trips as market orders via run_backtest", w_m, c_m)
    row("       of which cerebro.run", r_m)
    row("(s)  agent strategy, stock BackBroker (3 exit orders/trade)", w_s, c_s)
    row("       of which cerebro.run", r_s)
    row("(b)  agent strategy via run_backtest: total", w_b, c_b)
    row("       of which cerebro.run", r_b)
    row("       of which ATR, checks, feed build, frames, stats", w_b - r_b)
    row("(f)  agent strategy via run_backtest(engine='fast'): total", w_f, c_f)
    row("(c)  OnnxAgent.predict_proba" + (f" ({m:,}-bar prefix, scaled)" if m < n else ""), t_pred)
    print(f"pieces of (b)'s rest timed alone: labeling.atr {t_atr * 1e3:.1f} ms, to_backtrader {t_feed * 1e3:.1f} ms; "
          f"(c) excludes agent load {t_load:.2f} s and a warm-up call {t_warm:.2f} s")
    print(f"repeat: {args.repeat} (minimum reported); at end: {load_avg()}")
    sweep = [float(x) for x in args.sweep.split(",") if x.strip()]
    if sweep:
        print("\ncost vs trade rate (cpu of cerebro.run + Python around it, over (a)):")
        print(f"{'signal rate':>11s} {'trades':>7s} {'bars/trade':>10s} {'(b) agent':>10s} {'(m) market floor':>17s}")
        print(f"{args.signal_rate:11.2f} {len(trades):7,d} {n / max(1, len(trades)):10.1f} {c_b / c_a:10.2f} "
              f"{c_m / c_a:17.2f}")
    for rate in sweep:
        thr = float(np.nanquantile(probs, 1 - rate))
        r2 = rules.replace(threshold=thr)
        _, c2, _, res2 = best_of(lambda: engine_run(df, "agent", signal=probs, atr=atr, rules=r2), args.repeat)
        _, c2m, _, _ = best_of(lambda: engine_run(df, _MarketRoundTrips, atr=atr, **round_trips(res2.trades)),
                               args.repeat)
        k = len(res2.trades)
        print(f"{rate:11.2f} {k:7,d} {n / max(1, k):10.1f} {c2 / c_a:10.2f} {c2m / c_a:17.2f}")

    verdict = "meets" if max(r_b / w_a, c_b / c_a) <= TARGET_RATIO else "misses"
    print(f"\nacceptance ({verdict} the <= {TARGET_RATIO}x target): agent strategy / bare pass (a) = "
          f"{r_b / w_a:.2f}x wall (cerebro.run), {c_b / c_a:.2f}x cpu (run_backtest total); same harness "
          f"(b)/(a') = {c_b / c_ea:.2f}x cpu; floor for this many trades (m)/(a) = {c_m / c_a:.2f}x cpu; "
          f"native barrier order vs stock broker (b)/(s) = {c_b / c_s:.2f}x cpu; "
          f"fast engine: {c_f / c_a:.3f}x cpu of (a)")

if __name__ == "__main__":
    main()
