"""The pandas-facing wrapper of the portfolio kernel: :func:`simulate_portfolio`, behind
``engine.run_portfolio(run=RunConfig(engine="fast"))``."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from engine.backtest_common import day_numbers
from engine.config import RunConfig
from engine.fastsim.kernels import Bars, Signals
from engine.fastsim.portfolio_kernel import TRADE_FLOATS, TRADE_INTS, Calendar, portfolio_nb
from engine.fastsim.inputs import REASON_NAMES, account, kernel_rules, prices
from labeling.rules import BarrierRules, Costs


def simulate_portfolio(per: dict, times: pd.DatetimeIndex, rules: BarrierRules, costs: Costs, run: RunConfig,
                       max_positions: int) -> dict:
    """The portfolio strategy through the kernel on (times x instruments) arrays.

    ``per``: symbol -> its ``engine.backtest_common.Instrument``, symbols sorted (``engine.portfolio.inputs``);
    returns what ``engine.portfolio`` assembles its result from (equity, positions, the trades frame, skipped
    and rejected counts per symbol, the kernel's seconds).
    """
    symbols = list(per)
    bars, signals, calendar = portfolio_arrays(per, times)
    t0 = time.perf_counter()
    # size_frac None: equity / max_positions per entry, which the kernel reads from a size <= 0
    out = portfolio_nb(bars, signals, calendar, kernel_rules(rules, -1.0), account(run, costs), int(max_positions))
    run_seconds = time.perf_counter() - t0
    k_tr = int(out.n_trades)
    ints = dict(zip(TRADE_INTS, (out.trade_ints[:k_tr, c] for c in range(len(TRADE_INTS)))))
    floats = dict(zip(TRADE_FLOATS, (out.trade_floats[:k_tr, c] for c in range(len(TRADE_FLOATS)))))
    sym_, entry, exit_ = ints["instrument"], ints["entry_bar"], ints["exit_bar"]
    unit = f"datetime64[{times.unit}]"
    entry_time = np.empty(k_tr, dtype=unit)
    exit_time = np.empty(k_tr, dtype=unit)
    for k, sym in enumerate(symbols):  # each instrument's own bar positions -> its times
        mine = sym_ == k
        idx = per[sym].period.index.as_unit(times.unit)
        idx = (idx.tz_convert("UTC").tz_localize(None) if idx.tz is not None else idx).to_numpy()
        entry_time[mine], exit_time[mine] = idx[entry[mine]], idx[exit_[mine]]
    tz = times.tz
    as_time = (lambda v: pd.DatetimeIndex(v).tz_localize("UTC").tz_convert(tz)) if tz is not None else pd.DatetimeIndex
    trades = pd.DataFrame({
        "symbol": np.asarray(symbols, dtype=object)[sym_], "entry_time": as_time(entry_time),
        "entry_price": floats["entry_price"], "exit_time": as_time(exit_time), "exit_price": floats["exit_price"],
        "size": floats["size"], "side": ints["side"], "bet_size": floats["bet_size"], "pnl": floats["pnl"],
        "ret": floats["ret"],
        "bars_held": exit_ - entry,
        "exit_reason": REASON_NAMES.take(ints["reason"]), "signal_time": times[ints["signal_time"]],
        "atr": floats["atr"], "entry_bar": entry, "exit_bar": exit_, "commission": floats["commission"],
    })
    return {"equity": out.equity, "positions": out.positions, "trades": trades,
            "skipped": [int(v) for v in out.skipped], "rejected": [int(v) for v in out.rejected],
            "run_seconds": run_seconds}


def portfolio_arrays(per: dict, times: pd.DatetimeIndex) -> tuple[Bars, Signals, Calendar]:
    """The kernel's (times x instruments) inputs of ``per`` (symbol -> ``Instrument``): NaN prices, signals and ATR
    where an instrument has no bar, 0 sides and sizes."""
    T, n = len(times), len(per)
    arrays = {c: np.full((T, n), np.nan) for c in ("open", "high", "low", "close", "signal", "atr")}
    arrays["side"], arrays["size"] = np.zeros((T, n)), np.zeros((T, n))
    has_bar = np.zeros((T, n), dtype=np.bool_)
    last_t = np.empty(n, dtype=np.int64)
    for k, inst in enumerate(per.values()):
        pos = times.get_indexer(inst.period.index)
        has_bar[pos, k] = True
        last_t[k] = pos[-1]
        for c in ("open", "high", "low", "close"):
            arrays[c][pos, k] = prices(inst.period, c)
        for c in ("signal", "atr", "side", "size"):
            arrays[c][pos, k] = getattr(inst, c)
    bars = Bars(arrays["open"], arrays["high"], arrays["low"], arrays["close"])
    signals = Signals(arrays["signal"], arrays["atr"], arrays["side"], arrays["size"], day_numbers(times))
    return bars, signals, Calendar(has_bar, last_t)
