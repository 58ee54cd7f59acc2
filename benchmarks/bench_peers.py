"""Benchmark: our fast agent backtest vs vectorbt and backtesting.py on the same bars, signal and trades.

Bars are bootstrapped from real sp500 daily bars (``_common.bootstrap_bars``); the signal is uniform random;
the barriers use the ATR our engine uses (``labeling.atr(high, low, close, 14)``). Each peer is configured
to reproduce our trades exactly (engine/fastsim/__init__.py's docstring has the conventions):

- decision at close t when ``signal[t] >= threshold`` and ``atr[t] > 0`` while flat; market entry at
  ``open[t+1]``; take-profit ``entry + pt * atr[t]`` and stop ``entry - sl * atr[t]`` from the executed entry
  price, worked from the bar after the fill, the stop first when one bar spans both, gaps filled at the
  open; time exit at the open of bar ``entry_bar + horizon`` (barriers not worked on that bar); a trade
  still open after the last bar leaves at the last close.
- vectorbt: ``Portfolio.from_signals(price=open, size=1.0, size_type="percent", fees=commission)`` with
  ``sl_stop``/``tp_stop`` = ``sl|pt * atr[t] / open[t+1]`` set on the fill bar, ``stop_entry_price=
  "fillprice"``, stop-limit exits (gaps fill at the open), a ``signal_func_nb`` for the flat-only entries
  and the time exit, and ``adjust_sl_func_nb``/``adjust_tp_func_nb`` that drop the barriers on the
  time-exit bar. ``min_size=0``: vectorbt's default 1e-8 rejects the entries once the random trades have
  shrunk the 100,000 of cash to cents (sizes ~1e-8 units at the bootstrapped prices). A position still open
  at the end is an open trade that vectorbt marks at the last close.
- backtesting.py: a ``Strategy`` whose ``next()`` mirrors ours (``trade_on_close=False``,
  ``exclusive_orders=False``); the OCO pair is set on the fill bar's close from ``trade.entry_price``
  (tp first, then sl, so the stop is worked first), the time exit is ``trade.close()`` after cancelling
  both. Its sizes are whole units, so it gets a huge starting cash (sizes differ from ours, trades do
  not). Its ``finalize_trades=True`` would close a trade still open at the end at the *last bar's open*
  (not the close), so it runs with ``finalize_trades=False`` and the open trade is compared by its entry,
  its exit counted as the last close it is marked at.

Every trade must be identical: same entry and exit bars, entry/exit prices within 1e-12 relative, else
exit status 1. Slippage is 0 (the peers' slippage models differ from ours).

Mixed sides (longs and shorts; ``--skip-mixed`` leaves it out): the same bars and signal, a side drawn +1/-1
uniformly at random per bar (seed + 3) passed to ours as ``side=``, and asymmetric barriers (pt 2, sl 1: with
pt == sl a short's barriers sit at a long's two levels, so a short with its barriers swapped would make the same
trades). A short sells at ``open[t+1]``; its stop is ``entry + sl * atr[t]`` and its take-profit ``entry - pt *
atr[t]``, the stop first when one bar spans both, gaps filled at the open; the time exit and the end of the data
as for a long. Every trade must be identical again, the side included.
- vectorbt: the same ``from_signals`` call (``direction="both"``; the long-only run uses it too, with no short
  entries: one compilation); the signal function returns a short entry where the side is -1 and the time exit
  as a short exit. vectorbt's short stop ``entry * (1 + sl_stop)`` and take-profit ``entry * (1 - tp_stop)``
  take the same fractions as a long's. Its cash is the grid's 1e12 x (below): the random shorts in a rising
  market take the equity down to ~1e-12 of the start.
- backtesting.py: ``self.sell(size=...)`` where the side is -1; on the fill bar's close ``trade.tp = entry -
  pt * atr`` then ``trade.sl = entry + sl * atr`` (its buy-stop fills at ``max(open, stop)``, its buy-limit at
  ``min(open, limit)``: our gap rule); 1e24 x the cash for whole units at the smallest equity.

``--grid N`` (default 1000; 0 skips) then times a parameter grid on the same bars and signal: thresholds x
pt x sl x horizon (1000 = 10 x 5 x 4 x 5) through (a) ``engine.fastsim.sweep`` (one parallel numba call;
best of ``--grid-repeats`` after a warm-up call), (b) a loop of N ``run_backtest(engine="fast")`` calls
(timed once), (c) vectorbt broadcasting the grid as the columns of one ``from_signals`` call (best of
``--vbt-repeats`` after two warm-up calls): the same signal/adjust functions with per-column parameters,
the thresholds changing the entries (a (bars, N) array), pt/sl the stop fractions ((bars, N) arrays), the
horizon read per column. Its memory grows linearly with the columns (close broadcast to (bars, N), the
call sequence, the stop arrays, the order records: ~6.6 MiB a column at 100k bars), so when the estimate
for all N would take this process over 6 GiB (or over half the available memory) it runs 200 randomly
sampled columns and extrapolates linearly (``--vbt-cols`` forces a count); the output says so. vectorbt's
grid gets 1e12 x the cash: in the busiest configurations the random trades shrink the equity to ~1e-14 of
the start while prices rise, and vectorbt treats a position under 1e-12 units (its absolute tolerance) as
none, so with 100,000 of cash it stops trading in those columns, holding dust it cannot sell; the trades
do not depend on the cash (percent sizing). Every configuration's trade count must equal sweep's, in
vectorbt and in the loop, else exit status 1.

Run (``pip install -e ".[bench]"``):
python benchmarks/bench_peers.py --bars 100000 --seed 0
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bar from Backtest.run (read when tqdm is imported)

import numba  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import datafeeds  # noqa: E402
import labeling  # noqa: E402
from engine import BarrierRules, Costs, RunConfig, run_backtest  # noqa: E402
from _common import bootstrap_bars, load_avg, machine_info, reset_peak_rss  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

PARAMS = dict(threshold=0.6, pt=1.5, sl=1.5, horizon=20, size_frac=1.0, commission=0.0005, slippage=0.0)
CASH = 100_000.0
# PARAMS as our engine takes them (the peers read the dict)
RULES = BarrierRules(**{k: PARAMS[k] for k in ("threshold", "pt", "sl", "horizon", "size_frac")})
COSTS = Costs(commission=PARAMS["commission"], slippage=PARAMS["slippage"])
RUN = RunConfig(engine="fast", cash=CASH, benchmark=False)
RTOL = 1e-12
# the mixed-sides run (longs and shorts): the same bars and signal, a random side per bar, and asymmetric barriers.
# With pt == sl a short's take-profit and stop sit at a long's stop and take-profit, so a short whose barriers were
# swapped would make the same trades (but on bars that span both); pt != sl makes the mirror visible.
PARAMS_MIXED = {**PARAMS, "pt": 2.0, "sl": 1.0}
RULES_MIXED = RULES.replace(pt=PARAMS_MIXED["pt"], sl=PARAMS_MIXED["sl"])


def best_of(fn, repeats):
    """(best seconds, last result) of ``repeats`` calls."""
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def compare(name, ours: pd.DataFrame, peer: pd.DataFrame) -> bool:
    """Print how ``peer`` (entry_bar, exit_bar, entry_price, exit_price) matches ``ours``; True if identical."""
    key = ["entry_bar", "exit_bar"] + (["side"] if "side" in ours and "side" in peer else [])
    m = ours.merge(peer, on=key, how="outer", suffixes=("", "_peer"), indicator=True)
    both = m[m["_merge"] == "both"]
    rel = 0.0
    if len(both):
        rel = max(float(np.max(np.abs(both[f"{c}_peer"] - both[c]) / np.abs(both[c])))
                  for c in ("entry_price", "exit_price"))
    only_ours, only_peer = int((m["_merge"] == "left_only").sum()), int((m["_merge"] == "right_only").sum())
    same = only_ours == 0 and only_peer == 0 and rel <= RTOL
    sides = (f" ({int((peer['side'] > 0).sum()):,} long, {int((peer['side'] < 0).sum()):,} short)"
             if "side" in key else "")
    bars = "entry and exit bars" + (" and side" if "side" in key else "")
    print(f"  {name}: {len(peer):,} trades{sides}, {len(both):,} with our {bars} "
          f"({len(both) / max(len(ours), 1):.2%} of ours); only ours {only_ours}, only theirs {only_peer}; "
          f"max relative entry/exit price difference {rel:.2e} -> {'IDENTICAL' if same else 'DIFFERENT'}")
    if not same and (only_ours or only_peer):
        first = m[m["_merge"] != "both"].sort_values("entry_bar").head(4)
        print(first[key + ["entry_price", "exit_price", "entry_price_peer", "exit_price_peer", "_merge"]]
              .to_string(index=False))
    return same


# ----------------------------------------------------------------------------------------------- vectorbt
def make_vectorbt():
    import vectorbt as vbt
    from numba import njit

    # per-column parameters (``horizon[col]``, ``state[col]``, ``enter[:, col]``): the single run is one column
    @njit
    def adjust_sl_nb(c, horizon, state):
        state[c.col] = c.init_i  # the fill bar of the column's open position (-1 when flat)
        if c.init_i >= 0 and c.i - c.init_i >= horizon[c.col]:
            return np.nan, False  # time-exit bar: the barriers are not worked
        return c.curr_stop, c.curr_trail

    @njit
    def adjust_tp_nb(c, horizon):
        if c.init_i >= 0 and c.i - c.init_i >= horizon[c.col]:
            return np.nan
        return c.curr_stop

    @njit
    def signal_nb(c, enter, short, horizon, state):
        # called only when no stop fired on this bar; returns (long entry, long exit, short entry, short exit).
        # ``short``: (bars, 1) or (bars, columns), True where the entry on this bar sells short
        if c.position_now == 0:
            if not enter[c.i, c.col]:
                return False, False, False, False
            s = short[c.i, min(c.col, short.shape[1] - 1)]
            return not s, False, s, False
        timed = c.i - state[c.col] >= horizon[c.col]
        if c.position_now > 0:
            return False, timed, False, False
        return False, False, False, timed

    def simulate(df, enter, sl_frac, tp_frac, horizon, p, cash=CASH, short=None):
        """``from_signals`` over ``enter.shape[1]`` columns: ``enter``, ``sl_frac``, ``tp_frac`` are (bars, columns)
        (broadcast as vectorbt does), ``horizon`` one value per column; ``short`` (bars, 1 or columns): the entries
        that sell short (None: all long). The same compiled functions serve both: vectorbt's direction
        ``"both"`` lets the signal function choose the side, and with no short entry the orders are long-only's."""
        horizon = np.array(horizon, np.int64)  # a writable contiguous copy: one numba specialization for all calls
        state = np.full(len(horizon), -1, np.int64)
        if short is None:
            short = np.zeros((len(df), 1), np.bool_)
        return vbt.Portfolio.from_signals(
            df["close"], signal_func_nb=signal_nb, signal_args=(enter, np.ascontiguousarray(short), horizon, state),
            price=df["open"], open=df["open"], high=df["high"], low=df["low"],
            size=p["size_frac"], size_type="percent", direction="both", fees=p["commission"],
            slippage=0.0, min_size=0.0, init_cash=cash, sl_stop=sl_frac, tp_stop=tp_frac,
            stop_entry_price="fillprice", stop_exit_price="stoplimit", upon_stop_exit="close",
            adjust_sl_func_nb=adjust_sl_nb, adjust_sl_args=(horizon, state),
            adjust_tp_func_nb=adjust_tp_nb, adjust_tp_args=(horizon,),
            freq="1min",
        )

    def run(df, enter_next, sl_frac, tp_frac, p, short_next=None, cash=CASH):
        short = None if short_next is None else short_next[:, None]
        pf = simulate(df, enter_next[:, None], sl_frac[:, None], tp_frac[:, None], [p["horizon"]], p, cash, short)
        r = pf.trades.records
        trades = pd.DataFrame({"entry_bar": r["entry_idx"], "exit_bar": r["exit_idx"],
                               "side": np.where(r["direction"] == 0, 1, -1),  # TradeDirection: 0 long, 1 short
                               "entry_price": r["entry_price"], "exit_price": r["exit_price"],
                               "size": r["size"], "open_at_end": r["status"] == 0})
        return pf, trades

    def run_grid(df, sig_prev, atr_prev, conf, p, cash):
        """One broadcast call over the rows of ``conf`` (columns); the number of trades per column (an open one
        included). ``sig_prev[t]``, ``atr_prev[t]``: the signal and ATR of the decision bar t-1 (NaN at t=0)."""
        o = df["open"].to_numpy(np.float64)[:, None]
        thr = conf["threshold"].to_numpy(np.float64)[None, :]
        enter = (sig_prev[:, None] >= thr) & (atr_prev > 0)[:, None]  # thresholds change the entries
        a = atr_prev[:, None]
        sl_frac = conf["sl"].to_numpy(np.float64)[None, :] * a / o  # pt/sl change the stop fractions
        tp_frac = conf["pt"].to_numpy(np.float64)[None, :] * a / o  # (read on the fill bar only)
        pf = simulate(df, enter, sl_frac, tp_frac, conf["horizon"].to_numpy(np.int64), p, cash)
        return np.bincount(pf.trades.records["col"], minlength=len(conf))

    return vbt, run, run_grid


# ------------------------------------------------------------------------------------------ backtesting.py
def make_backtesting():
    import backtesting
    from backtesting import Backtest, Strategy

    class AgentMirror(Strategy):
        enter = None  # bool per bar: signal >= threshold and atr > 0 (decision at that bar's close)
        short = None  # bool per bar: the entry decided there sells short (None: every entry buys)
        atr = None
        pt = sl = horizon = size = None

        def init(self):
            self.sig_atr = np.nan

        def next(self):
            i = len(self.data) - 1
            trades = self.trades
            if trades:
                tr = trades[0]
                if tr.entry_bar == i:  # fill bar's close: the OCO pair from the executed entry price
                    d = 1.0 if tr.is_long else -1.0  # a short's take-profit below the entry, its stop above
                    tr.tp = tr.entry_price + d * self.pt * self.sig_atr  # set first ...
                    tr.sl = tr.entry_price - d * self.sl * self.sig_atr  # ... so the stop is worked first
                if i - tr.entry_bar + 1 >= self.horizon:
                    tr.sl = None  # the barriers are cancelled with the time exit
                    tr.tp = None
                    tr.close()  # market: the next open
            elif self.enter[i]:
                self.sig_atr = self.atr[i]
                if self.short is not None and self.short[i]:
                    self.sell(size=self.size)
                else:
                    self.buy(size=self.size)

    def run(df, enter, atr, p, cash, short=None):
        data = df.rename(columns=str.capitalize)[["Open", "High", "Low", "Close", "Volume"]]
        bt = Backtest(data, AgentMirror, cash=cash, commission=p["commission"], trade_on_close=False,
                      exclusive_orders=False, hedging=False, finalize_trades=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "trades remain open at the end": handled below
            stats = bt.run(enter=enter, short=short, atr=atr, pt=p["pt"], sl=p["sl"], horizon=p["horizon"],
                           size=1 - 1e-9)
        t = stats["_trades"]
        trades = pd.DataFrame({"entry_bar": t["EntryBar"].to_numpy(np.int64),
                               "exit_bar": t["ExitBar"].to_numpy(np.int64),
                               "side": np.sign(t["Size"].to_numpy(np.float64)).astype(np.int64),
                               "entry_price": t["EntryPrice"].to_numpy(np.float64),
                               "exit_price": t["ExitPrice"].to_numpy(np.float64),
                               "size": t["Size"].to_numpy(np.float64), "open_at_end": False})
        still_open = stats["_strategy"].trades
        if still_open:  # marked at the last close, as our end-of-data exit
            tr = still_open[0]
            last = pd.DataFrame({"entry_bar": [tr.entry_bar], "exit_bar": [len(df) - 1],
                                 "side": [1 if tr.is_long else -1],
                                 "entry_price": [tr.entry_price], "exit_price": [df["close"].iloc[-1]],
                                 "size": [float(tr.size)], "open_at_end": [True]})
            trades = pd.concat([trades, last], ignore_index=True)
        return stats, trades

    return backtesting, run


# ------------------------------------------------------------------------------------------- grid (--grid)
GRID_AXES = dict(pt=[1.0, 1.5, 2.0, 2.5, 3.0], sl=[1.0, 1.5, 2.0, 3.0], horizon=[5, 10, 20, 40, 80])  # 100 combos
GiB = 1024 ** 3
VBT_PEAK_LIMIT = 6 * GiB  # the most this process may hold during the vectorbt broadcast
VBT_GRID_CASH = CASH * 1e12  # keeps vectorbt's positions above its 1e-12 tolerance (module docstring)


def grid_rows(n: int) -> pd.DataFrame:
    """The first ``n`` rows of thresholds x pt x sl x horizon, ceil(n / 100) thresholds spaced over [0.5, 0.95]
    (n=1000: 10 x 5 x 4 x 5)."""
    import itertools

    n_thr = -(-n // 100)
    thresholds = np.round(np.linspace(0.5, 0.95, n_thr), 6) if n_thr > 1 else np.array([PARAMS["threshold"]])
    rows = pd.DataFrame(list(itertools.product(thresholds, *GRID_AXES.values())),
                        columns=["threshold", *GRID_AXES]).head(n)
    rows["horizon"] = rows["horizon"].astype(np.int64)
    return rows


def _proc_kib(path: str, key: str) -> float:
    try:
        for line in open(path):
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def mem_available() -> float:
    """Bytes the kernel reports available (``free -m``'s "available")."""
    return _proc_kib("/proc/meminfo", "MemAvailable") * 1024


def rss() -> float:
    return _proc_kib("/proc/self/status", "VmRSS") * 1024


def peak_rss() -> float:
    return _proc_kib("/proc/self/status", "VmHWM") * 1024


def vbt_bytes_per_column(n_bars: int) -> int:
    """Upper estimate of what vectorbt's broadcast holds per column: close broadcast to (bars, columns) and the
    call sequence (8 + 8 bytes a bar), our sl/tp fractions (8 + 8) and entries (1), order records allocated
    for one order a bar (56: touched only as orders are written, counted in full to stay safe)."""
    return n_bars * (8 + 8 + 16 + 1 + 56)


def grid_bench(args, df, signal, atr, run_grid, p) -> bool:
    """(a) ``sweep`` over the grid, (b) a loop of ``run_backtest`` calls, (c) vectorbt broadcasting the grid
    (all of it, or a sample of columns extrapolated linearly when the whole would not fit in memory)."""
    from engine.fastsim import sweep

    conf = grid_rows(args.grid)
    n_conf = len(conf)
    costs = dict(costs=COSTS, run=RUN, rules=RULES)  # the grid's columns replace RULES' threshold, pt, sl, horizon
    print(f"\ngrid: {n_conf:,} configurations ({conf['threshold'].nunique()} thresholds "
          f"{conf['threshold'].min():g}..{conf['threshold'].max():g} x pt {GRID_AXES['pt']} x sl {GRID_AXES['sl']}"
          f" x horizon {GRID_AXES['horizon']}; first {n_conf} rows), size_frac {p['size_frac']}, same bars and signal")

    # (a) sweep: one parallel numba call
    t0 = time.perf_counter()
    sweep(df, signal, conf.head(2), **costs)
    sweep_first = time.perf_counter() - t0
    sweep_s, sw = best_of(lambda: sweep(df, signal, conf, **costs), args.grid_repeats)
    threads = numba.get_num_threads()
    sweep1_s = None
    if threads > 1:  # what the parallelism brings (vectorbt and the loop run on one core)
        numba.set_num_threads(1)
        try:
            sweep1_s, _ = best_of(lambda: sweep(df, signal, conf, **costs), 1)
        finally:
            numba.set_num_threads(threads)

    # (b) a loop of single runs, timed once
    loop_trades = np.empty(n_conf, np.int64)
    loop_ret = np.empty(n_conf)
    t0 = time.perf_counter()
    for k, row in enumerate(conf.itertuples(index=False)):
        r = run_backtest(df, "agent", signal=signal, costs=COSTS, run=RUN,
                         rules=RULES.replace(threshold=row.threshold, pt=row.pt, sl=row.sl, horizon=int(row.horizon)))
        loop_trades[k] = r.stats["n_trades"]
        loop_ret[k] = r.stats["total_return"]
    loop_s = time.perf_counter() - t0
    sw_trades = sw["n_trades"].to_numpy()
    ret_rel = float(np.max(np.abs(sw["total_return"].to_numpy() - loop_ret) / np.maximum(np.abs(loop_ret), 1e-300)))
    loop_same = int(np.sum(sw_trades == loop_trades))

    # (c) vectorbt: one broadcast call over the columns that fit
    avail = mem_available()
    per_col = vbt_bytes_per_column(len(df))
    budget = min(VBT_PEAK_LIMIT - rss(), 0.5 * avail)
    fits = int(max(budget, 0) // per_col)
    if args.vbt_cols:
        n_vbt = min(args.vbt_cols, n_conf)
    else:
        n_vbt = n_conf if n_conf <= fits else min(200, fits, n_conf)
    print(f"memory: {avail / GiB:.1f} GiB available, this process {rss() / GiB:.2f} GiB; vectorbt estimate "
          f"<= {per_col / 2**20:.1f} MiB a column ({n_conf * per_col / GiB:.1f} GiB for all {n_conf:,}); "
          f"budget {budget / GiB:.1f} GiB (peak <= {VBT_PEAK_LIMIT / GiB:.0f} GiB, <= half the available) "
          f"-> vectorbt runs {n_vbt:,} of the {n_conf:,} columns")
    vbt_ok = True
    if n_vbt <= 0:
        print("vectorbt grid: skipped (no memory budget)")
        vbt_s = None
    else:
        pick = (np.arange(n_conf) if n_vbt == n_conf
                else np.sort(np.random.default_rng(args.seed + 2).choice(n_conf, n_vbt, replace=False)))
        sub = conf.iloc[pick].reset_index(drop=True)
        sig_prev = np.full(len(df), np.nan)
        sig_prev[1:] = signal[:-1]
        atr_prev = np.full(len(df), np.nan)
        atr_prev[1:] = atr[:-1]
        t0 = time.perf_counter()
        run_grid(df.iloc[:2000], sig_prev[:2000], atr_prev[:2000], sub.head(2), p, VBT_GRID_CASH)  # compile
        run_grid(df, sig_prev, atr_prev, sub.head(4), p, VBT_GRID_CASH)  # and a first call on all the bars
        vbt_first = time.perf_counter() - t0
        base_rss = rss()
        hwm_ok = reset_peak_rss()
        t0 = time.perf_counter()
        vbt_counts = run_grid(df, sig_prev, atr_prev, sub, p, VBT_GRID_CASH)
        vbt_s = time.perf_counter() - t0
        peak = peak_rss() if hwm_ok else float("nan")
        if args.vbt_repeats > 1:
            more_s, _ = best_of(lambda: run_grid(df, sig_prev, atr_prev, sub, p, VBT_GRID_CASH), args.vbt_repeats - 1)
            vbt_s = min(vbt_s, more_s)
        half_s = None
        if n_vbt >= 20:  # linearity check of the extrapolation: every other sampled column
            t0 = time.perf_counter()
            run_grid(df, sig_prev, atr_prev, sub.iloc[::2].reset_index(drop=True), p, VBT_GRID_CASH)
            half_s, n_half = time.perf_counter() - t0, len(sub.iloc[::2])
        sweep_sub_s, sw_sub = best_of(lambda: sweep(df, signal, sub, **costs), args.grid_repeats)
        same = vbt_counts == sw_trades[pick]
        vbt_ok = bool(same.all())
        print(f"trades per configuration: sweep vs the loop of run_backtest: {loop_same:,} of {n_conf:,} equal "
              f"(total_return max relative difference {ret_rel:.1e}); sweep vs vectorbt: {int(same.sum()):,} of "
              f"{n_vbt:,} columns equal ({'all' if vbt_ok else 'NOT all'}; trades per configuration "
              f"{int(sw_trades[pick].min()):,}..{int(sw_trades[pick].max()):,}, total {int(vbt_counts.sum()):,} "
              f"vectorbt / {int(sw_trades[pick].sum()):,} sweep)")
        if not vbt_ok:
            bad = np.flatnonzero(~same)[:5]
            print(sub.iloc[bad].assign(sweep=sw_trades[pick][bad], vectorbt=vbt_counts[bad]).to_string())
        if n_vbt < n_conf:
            print(f"  the {n_vbt} sampled columns average {sw_trades[pick].mean():,.0f} trades, the whole grid "
                  f"{sw_trades.mean():,.0f}")
        print(f"vectorbt broadcast memory: RSS {base_rss / GiB:.2f} GiB before, peak "
              + (f"{peak / GiB:.2f} GiB (+{(peak - base_rss) / 2**20:,.0f} MiB, "
                 f"{(peak - base_rss) / n_vbt / 2**20:.1f} MiB a column -> "
                 f"~{(peak - base_rss) / n_vbt * n_conf / GiB:.1f} GiB for {n_conf:,} columns)"
                 if hwm_ok else "n/a (cannot reset the peak RSS here)"))
    print(f"first calls: sweep (compile or cache load + 2 configurations) {sweep_first:.2f} s"
          + (f"; vectorbt grid (compile on 2,000 bars x 2 columns + all bars x 4 columns) {vbt_first:.2f} s"
             if vbt_s is not None else ""))
    print(f"(a) sweep, {n_conf:,} configurations in one call, best of {args.grid_repeats}: {sweep_s:.3f} s "
          f"({sweep_s / n_conf * 1e3:.2f} ms a configuration, {threads} numba threads)"
          + (f"; on 1 thread, once: {sweep1_s:.3f} s" if sweep1_s is not None else ""))
    print(f"(b) loop of {n_conf:,} run_backtest(engine='fast') calls, once: {loop_s:.2f} s "
          f"({loop_s / n_conf * 1e3:.2f} ms a call)")
    if vbt_s is not None:
        vbt_full = vbt_s * n_conf / n_vbt
        how = ("all columns" if n_vbt == n_conf else
               f"EXTRAPOLATED linearly from {n_vbt} randomly sampled columns measured in {vbt_s:.2f} s")
        print(f"(c) vectorbt from_signals broadcast over the grid + trade records, best of {args.vbt_repeats}: "
              f"{vbt_full:.2f} s ({how}; "
              f"{vbt_full / n_conf * 1e3:.2f} ms a configuration, single-threaded); sweep on the same {n_vbt} "
              f"configurations: {sweep_sub_s:.3f} s -> vectorbt {vbt_s / sweep_sub_s:.1f}x on those")
        if half_s is not None:
            print(f"    vectorbt per column: {vbt_s / n_vbt * 1e3:.2f} ms over {n_vbt} columns, "
                  f"{half_s / n_half * 1e3:.2f} ms over {n_half} of them (linearity of the extrapolation); "
                  f"cash {VBT_GRID_CASH:.0e}")
    print(f"grid ratios: loop / sweep {loop_s / sweep_s:.1f}x"
          + (f"; vectorbt / sweep {vbt_full / sweep_s:.1f}x" + (" (vectorbt extrapolated)" if n_vbt < n_conf else "")
             if vbt_s is not None else "")
          + (f"; against sweep on 1 thread: loop {loop_s / sweep1_s:.1f}x"
             + (f", vectorbt {vbt_full / sweep1_s:.1f}x" if vbt_s is not None else "") if sweep1_s else ""))
    return vbt_ok and loop_same == n_conf


def time_ours(df, kw: dict, repeats: int):
    """Our fast ``run_backtest`` with ``kw``: (first call's seconds, best of ``repeats``, that result, best kernel
    seconds)."""
    t0 = time.perf_counter()
    run_backtest(df, "agent", **kw)
    first = time.perf_counter() - t0
    kernels = []

    def call():
        r = run_backtest(df, "agent", **kw)
        kernels.append(r.config["run_seconds"])
        return r

    best, result = best_of(call, repeats)
    return first, best, result, min(kernels)


def mixed_bench(args, df, signal, atr, run_vbt, run_btpy, vbt, btpy) -> bool:
    """Longs and shorts on the same bars and signal: ours with ``side=`` (a random +1/-1 per bar), vectorbt with the
    short entries chosen in its signal function, backtesting.py with ``sell()``; every trade must be identical
    (entry and exit bars, side, prices within RTOL). Prints the trades and the timings; True when identical."""
    p = PARAMS_MIXED
    sides = np.where(np.random.default_rng(args.seed + 3).random(len(df)) < 0.5, -1, 1)
    print(f"\nmixed sides: the same bars and signal, side +1/-1 uniformly at random per bar (seed {args.seed + 3}), "
          f"pt {p['pt']}, sl {p['sl']} (a short's stop entry + sl * atr, its take-profit entry - pt * atr)")
    kw = dict(signal=signal, side=sides, rules=RULES_MIXED, costs=COSTS, run=RUN)
    ours_first, ours_s, ours, kernel_s = time_ours(df, kw, args.repeats)
    ot = ours.trades[["entry_bar", "exit_bar", "side", "entry_price", "exit_price", "size", "exit_reason"]].copy()
    n_long, n_short = int((ot["side"] > 0).sum()), int((ot["side"] < 0).sum())
    reasons = {name: ot.loc[ot["side"] == v, "exit_reason"].value_counts().to_dict()
               for name, v in (("long", 1), ("short", -1))}
    print(f"ours: {len(ot):,} trades ({n_long:,} long, {n_short:,} short); exit reasons {reasons}; "
          f"rejected entries {ours.stats['rejected_entries']}")

    o = df["open"].to_numpy(np.float64)
    enter = (signal >= p["threshold"]) & (atr > 0)
    short = sides < 0
    enter_next = np.zeros_like(enter)
    enter_next[1:] = enter[:-1]
    short_next = np.zeros_like(short)
    short_next[1:] = short[:-1]
    sl_frac = np.full(len(df), np.nan)
    tp_frac = np.full(len(df), np.nan)
    sl_frac[1:] = np.where(enter[:-1], p["sl"] * atr[:-1] / o[1:], np.nan)
    tp_frac[1:] = np.where(enter[:-1], p["pt"] * atr[:-1] / o[1:], np.nan)
    # the random shorts in a market that rises ~40,000x take the equity down to ~1e-12 of the start: vectorbt gets
    # the grid's cash so its positions stay above its 1e-12-unit tolerance (percent sizing: trades do not depend on it)
    vbt_cash = VBT_GRID_CASH
    run_vbt(df, enter_next, sl_frac, tp_frac, p, short_next, vbt_cash)  # the same compiled functions as the long run
    vbt_s, (_, vt) = best_of(lambda: run_vbt(df, enter_next, sl_frac, tp_frac, p, short_next, vbt_cash), args.repeats)

    print("trade match against ours (entry and exit bars and side; prices within "
          f"{RTOL:g} relative):")
    ok = compare(f"vectorbt {vbt.__version__}", ot, vt)
    if len(vt) == len(ot) and ok:
        size_rel = float(np.max(np.abs(vt["size"].to_numpy() / (vbt_cash / CASH) / ot["size"].to_numpy() - 1)))
        print(f"    sizes, scaled by the cash ratio {vbt_cash / CASH:.0e}: max relative difference {size_rel:.1e} "
              "(a short is sized on the equity like a long)")
    bt_s = None
    if not args.skip_backtesting:
        n_bt = min(args.bt_bars or len(df), len(df))
        df_bt = df.iloc[:n_bt]
        bt_cash = CASH * 1e24  # whole units: the smallest equity (~1e-12 of the start) still buys >= 1 unit
        bt_s, (_, bpt) = best_of(lambda: run_btpy(df_bt, enter[:n_bt], atr[:n_bt], p, bt_cash, short[:n_bt]),
                                 args.bt_repeats)
        if n_bt < len(df):
            kw_bt = {**kw, "signal": signal[:n_bt], "side": sides[:n_bt]}
            ours_bt_s, ours_bt = best_of(lambda: run_backtest(df_bt, "agent", **kw_bt), args.repeats)
            ot_bt = ours_bt.trades[["entry_bar", "exit_bar", "side", "entry_price", "exit_price"]]
        else:
            ours_bt_s, ot_bt = ours_s, ot
        ok &= compare(f"backtesting.py {btpy.__version__} ({n_bt:,} bars)", ot_bt, bpt)
        print(f"    backtesting.py sizes are whole units on a {bt_cash:.0e} starting cash; "
              f"{int(bpt['open_at_end'].sum())} trade open at the end compared by entry, marked at the last close")
    print(f"first call: ours {ours_first:.3f} s (vectorbt reuses the long run's compiled functions)")
    print(f"ours run_backtest(engine='fast', side=...) whole call, best of {args.repeats}: {ours_s * 1e3:9.2f} ms "
          f"(kernel {kernel_s * 1e3:.2f} ms)")
    print(f"vectorbt from_signals (long and short entries) + trades records, best of {args.repeats}: "
          f"{vbt_s * 1e3:9.2f} ms")
    if bt_s is not None:
        print(f"backtesting.py Backtest.run (buy and sell) on {n_bt:,} bars, best of {args.bt_repeats}: "
              f"{bt_s * 1e3:9.1f} ms"
              + (f" (ours on the same bars: {ours_bt_s * 1e3:.2f} ms)" if n_bt < len(df) else ""))
    print(f"ratios, mixed sides (same run): ours whole call / vectorbt {ours_s / vbt_s:.3f} (vectorbt "
          f"{vbt_s / ours_s:.2f}x ours); our kernel / vectorbt {kernel_s / vbt_s:.4f} ({vbt_s / kernel_s:.1f}x)"
          + (f"; ours / backtesting.py {ours_bt_s / bt_s:.5f} (backtesting.py {bt_s / ours_bt_s:,.0f}x ours)"
             if bt_s is not None else ""))
    return ok


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=100_000, help="synthetic bars to simulate")
    ap.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of the signal")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of ours and vectorbt (best reported)")
    ap.add_argument("--bt-repeats", type=int, default=1, help="timed backtesting.py runs (slow; best reported)")
    ap.add_argument("--bt-bars", type=int, default=None,
                    help="run backtesting.py on the first N bars only (default: all)")
    ap.add_argument("--skip-backtesting", action="store_true", help="leave backtesting.py out")
    ap.add_argument("--skip-mixed", action="store_true",
                    help="leave out the mixed-sides run (longs and shorts, random sides)")
    ap.add_argument("--grid", type=int, default=1000,
                    help="configurations of the parameter-grid comparison (sweep, a loop, vectorbt); 0 skips")
    ap.add_argument("--grid-repeats", type=int, default=3, help="timed sweep calls (best reported)")
    ap.add_argument("--vbt-repeats", type=int, default=2, help="timed vectorbt grid calls (best reported)")
    ap.add_argument("--vbt-cols", type=int, default=0,
                    help="columns of the vectorbt grid broadcast (default: all if they fit in memory, else 200 "
                         "sampled, extrapolated linearly)")
    args = ap.parse_args(argv)

    try:
        vbt, run_vbt, run_vbt_grid = make_vectorbt()
        btpy, run_btpy = make_backtesting()
    except ImportError as e:
        raise SystemExit(f"{e}: the peer libraries are an optional extra: pip install -e \".[bench]\"") from None

    df = bootstrap_bars(datafeeds.load_ohlcv("sp500"), args.bars, args.seed)
    signal = np.random.default_rng(args.seed + 1).random(len(df))
    p = PARAMS
    print(f"machine: {machine_info(np, pd, numba, vbt, btpy)}; {load_avg()}")
    print(f"data: {len(df):,} bootstrapped sp500 bars, random signal, params {p}, cash {CASH:,.0f}")

    # ours
    kw = dict(signal=signal, rules=RULES, costs=COSTS, run=RUN)
    ours_first, ours_s, ours, kernel_s = time_ours(df, kw, args.repeats)
    ot = ours.trades[["entry_bar", "exit_bar", "side", "entry_price", "exit_price", "size", "exit_reason"]].copy()

    # the peers' inputs: the same ATR, the decision shifted onto the fill bar
    o, h, lo, c = (df[k].to_numpy(np.float64) for k in ("open", "high", "low", "close"))
    atr = np.asarray(labeling.atr(h, lo, c, 14), np.float64)
    sig_bar = ours.trades["entry_bar"].to_numpy() - 1
    atr_same = bool(np.array_equal(ours.trades["atr"].to_numpy(), atr[sig_bar]))
    enter = (signal >= p["threshold"]) & (atr > 0)  # NaN ATR compares False
    enter_next = np.zeros_like(enter)
    enter_next[1:] = enter[:-1]
    sl_frac = np.full(len(df), np.nan)
    tp_frac = np.full(len(df), np.nan)
    sl_frac[1:] = np.where(enter[:-1], p["sl"] * atr[:-1] / o[1:], np.nan)
    tp_frac[1:] = np.where(enter[:-1], p["pt"] * atr[:-1] / o[1:], np.nan)

    # vectorbt
    t0 = time.perf_counter()
    run_vbt(df, enter_next, sl_frac, tp_frac, p)
    vbt_first = time.perf_counter() - t0
    vbt_s, (pf, vt) = best_of(lambda: run_vbt(df, enter_next, sl_frac, tp_frac, p), args.repeats)

    # backtesting.py
    bt_s = None
    if not args.skip_backtesting:
        n_bt = min(args.bt_bars or len(df), len(df))
        df_bt = df.iloc[:n_bt]
        # whole-unit sizes: a starting cash so large that the smallest equity still buys >= 1 unit of the
        # dearest bar (our equity falls by ~1e-8 over 100k random trades, prices rise ~40,000x)
        bt_cash = CASH * 1e18
        bt_s, (stats, bpt) = best_of(lambda: run_btpy(df_bt, enter[:n_bt], atr[:n_bt], p, bt_cash),
                                     args.bt_repeats)
        if n_bt < len(df):
            ours_bt = run_backtest(df_bt, "agent", **{**kw, "signal": signal[:n_bt]})
            ours_bt_s, _ = best_of(lambda: run_backtest(df_bt, "agent", **{**kw, "signal": signal[:n_bt]}),
                                   args.repeats)
            ot_bt = ours_bt.trades[["entry_bar", "exit_bar", "side", "entry_price", "exit_price"]]
        else:
            ours_bt_s, ot_bt = ours_s, ot

    print(f"ATR of our trades == labeling.atr at the decision bar: {atr_same}")
    print(f"ours: {len(ot):,} trades, exit reasons {ours.trades['exit_reason'].value_counts().to_dict()}")
    print("trade match against ours (entry and exit bars and side; prices within "
          f"{RTOL:g} relative):")
    ok = compare(f"vectorbt {vbt.__version__}", ot, vt)
    if len(vt) == len(ot) and ok:
        size_rel = float(np.max(np.abs(vt["size"].to_numpy() / ot["size"].to_numpy() - 1)))
        print(f"    sizes (fractional in both): max relative difference {size_rel:.1e} "
              "(ours keeps 1e-9 of the equity back at each entry; it compounds)")
    if bt_s is not None:
        ok &= compare(f"backtesting.py {btpy.__version__} ({n_bt:,} bars)", ot_bt, bpt)
        print(f"    backtesting.py sizes are whole units on a {bt_cash:.0e} starting cash; "
              f"{int(bpt['open_at_end'].sum())} trade open at the end compared by entry, marked at the last close")

    print(f"first calls (compile or cache load + run): ours {ours_first:.3f} s, vectorbt {vbt_first:.2f} s")
    print(f"ours run_backtest(engine='fast') whole call, best of {args.repeats}: {ours_s * 1e3:9.2f} ms "
          f"(kernel {kernel_s * 1e3:.2f} ms)")
    print(f"vectorbt from_signals + trades records, best of {args.repeats}: {vbt_s * 1e3:9.2f} ms")
    if bt_s is not None:
        print(f"backtesting.py Backtest.run on {n_bt:,} bars, best of {args.bt_repeats}: {bt_s * 1e3:9.1f} ms"
              + (f" (ours on the same bars: {ours_bt_s * 1e3:.2f} ms)" if n_bt < len(df) else ""))
    print(f"ratios (same run): ours whole call / vectorbt {ours_s / vbt_s:.3f} (vectorbt {vbt_s / ours_s:.2f}x "
          f"ours); our kernel / vectorbt {kernel_s / vbt_s:.4f} ({vbt_s / kernel_s:.1f}x)"
          + (f"; ours / backtesting.py {ours_bt_s / bt_s:.5f} (backtesting.py {bt_s / ours_bt_s:,.0f}x ours)"
             if bt_s is not None else ""))
    mixed_ok = True
    print(f"({load_avg()})")
    if not args.skip_mixed:
        mixed_ok = mixed_bench(args, df, signal, atr, run_vbt, run_btpy, vbt, btpy)
    if args.grid > 0:
        grid_ok = grid_bench(args, df, signal, atr, run_vbt_grid, p)
    print(f"end: {load_avg()}")
    if not ok:
        print("trades DIFFER from ours")
        sys.exit(1)
    if not mixed_ok:
        print("mixed sides: trades DIFFER from ours")
        sys.exit(1)
    if args.grid > 0 and not grid_ok:
        print("grid: trade counts DIFFER between sweep and the loop or vectorbt")
        sys.exit(1)
    print("trades identical in every library compared" + ("" if args.skip_mixed else ", long-only and mixed sides")
          + (", grid trade counts equal" if args.grid > 0 else ""))


if __name__ == "__main__":
    main()
