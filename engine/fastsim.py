"""Numba simulator of ``strategies.TransformerAgentStrategy``: the backtrader run's trades and equity, fast.

Parity with the backtrader path (``engine.run_backtest(engine="backtrader")``) is the contract, bar by bar:
- bar i, before the broker: an entry decided at close[i-1] is sized on open[i] slipped up (uncapped),
  ``units = size_frac * equity[i-1] / (price + commission * price) * (1 - 1e-9)`` (cheat-on-open);
- broker: the market buy fills at ``open * (1 + slippage)`` capped at the high (a margin check at the
  unslipped open comes first); a pending time exit sells at ``open * (1 - slippage)`` floored at the low;
  from the bar after the fill the OCO pair is worked stop first: stop gap ``open <= stop`` fills at the
  open slipped down (floor low), ``low <= stop`` at ``stop * (1 - slippage)`` (floor low), limit gap
  ``open >= limit`` at the open slipped down (floored at the *limit*), ``high >= limit`` at the limit;
- the strategy at close[i]: in a trade, order the time exit once ``i - entry_bar + 1 >= horizon``;
  flat, enter when ``signal >= threshold`` and ``atr > 0``; equity is cash + units * close.
- after the last bar an open position leaves at ``close * (1 - slippage)`` floored at the low, net of
  commission (``end_of_data``); the last equity value is net of that exit's costs.
Speed: benchmarks/bench_fastsim.py, orders of magnitude faster than backtrader (measurements: docs/DECISIONS.md).
Arithmetic follows backtrader's own order of float operations (cash, commission, ``order.executed.price
= units * price / units``), so results agree to rounding (tests: rtol 1e-9, in practice bit-equal).
With ``horizon=1`` the time exit is ordered at the fill bar's close, so neither engine works the
barriers: the position leaves at the next open.

Portfolios (``simulate_portfolio``, behind ``engine.run_portfolio(engine="fast")``): ``_portfolio_nb`` runs
``strategies.PortfolioAgentStrategy`` on BarrierBroker over (times x instruments) arrays with NaN where an
instrument has no bar, including backtrader's cumulative cash check of each cycle's new orders and its
first-in first-out order processing across instruments; tests/test_portfolio.py holds it to the
backtrader run trade for trade (equity to 1e-9 relative; bit-equal in practice).
"""

from __future__ import annotations

import logging
import math
import time
from os import PathLike

import numba
import numpy as np
import pandas as pd
from labeling.jit import njit_cached

import datafeeds
from engine.backtest_common import BacktestResult, prepare_inputs, run_facts, trades_frame
from engine.jsonable import jsonable
from engine.metrics import compute_stats, curve_stats_nb, trade_stats_nb
from strategies import EXIT_REASONS, TRADE_FIELDS
from strategies.base import CASH_EPS

log = logging.getLogger(__name__)

# Exit-reason codes of the kernel: positions in strategies.EXIT_REASONS.
_TP = EXIT_REASONS.index("take_profit")
_SL = EXIT_REASONS.index("stop_loss")
_TIME = EXIT_REASONS.index("time_limit")
_EOD = EXIT_REASONS.index("end_of_data")
_REASON_NAMES = pd.Index(EXIT_REASONS, dtype="str")  # code -> name by `take`, faster than a list (docs/DECISIONS.md)


@njit_cached
def _slip_up_nb(pmax, price, slip):
    # backtrader _slip_up with slip_match=True, slip_out=False: capped at pmax; no slippage = no cap
    if slip == 0.0:
        return price
    p = price * (1.0 + slip)
    return p if p <= pmax else pmax


@njit_cached
def _slip_down_nb(pmin, price, slip):
    if slip == 0.0:
        return price
    p = price * (1.0 - slip)
    return p if p >= pmin else pmin


@njit_cached
def _sell_nb(cash, units, xp, pos_price, entry_px, entry_comm, commission):
    """A long of ``units`` sold at ``xp`` in BackBroker's order of float operations: (cash after, commission,
    order.executed.price, the trade's pnl net of both commissions)."""
    pnl_b = units * (xp - pos_price) * 1.0
    cash += units * pos_price / 1.0 + pnl_b
    comm = units * commission * xp
    cash -= comm
    cash += 0.0
    exit_px = (0.0 + (-units) * xp) / (-units)
    return cash, comm, exit_px, units * (exit_px - entry_px) - entry_comm - comm


@njit_cached
def _simulate_nb(open_, high, low, close, signal, atr, threshold, pt, sl, horizon, size_frac,
                 cash, commission, slippage, start, end):
    """Long-only triple-barrier trades on ``signal`` over bars [start, end) (see the module docstring).

    Returns (n_trades, entry_bar, exit_bar, signal_bar, entry_price, exit_price, size, pnl, ret,
    commission, atr, reason, equity, position, n_rejected, eod_cost); bars are relative to ``start``,
    trade arrays hold ``n_trades`` valid rows, ``reason`` indexes ``strategies.EXIT_REASONS``.
    """
    n = end - start
    n_sig = 0  # each trade starts at a bar that signals: a bound on the trades, far below n/2 for high thresholds
    for i in range(start, end):
        if signal[i] >= threshold:
            n_sig += 1
    cap = min(n // 2 + 2, n_sig + 2)  # entries are >= 2 bars apart
    t_entry = np.empty(cap, np.int64)
    t_exit = np.empty(cap, np.int64)
    t_signal = np.empty(cap, np.int64)
    t_eprice = np.empty(cap, np.float64)
    t_xprice = np.empty(cap, np.float64)
    t_size = np.empty(cap, np.float64)
    t_pnl = np.empty(cap, np.float64)
    t_ret = np.empty(cap, np.float64)
    t_comm = np.empty(cap, np.float64)
    t_atr = np.empty(cap, np.float64)
    t_reason = np.empty(cap, np.int8)
    equity = np.empty(n, np.float64)
    position = np.empty(n, np.float64)

    k = 0  # trades recorded
    n_rejected = 0
    units = 0.0  # position size
    pos_price = 0.0  # broker position price: the raw fill price
    entry_px = 0.0  # order.executed.price of the entry: units * price / units
    entry_comm = 0.0
    entry_bar = -1
    sig_bar = -1
    sig_atr = 0.0
    stop_px = 0.0
    limit_px = 0.0
    exit_ordered = False  # time exit: market sell at the next open
    intent = False  # entry decided at the previous close
    notional = 0.0
    for j in range(n):
        i = start + j
        o = open_[i]
        # next_open: size the entry on this open (slipped up, not capped: the broker caps the fill)
        if intent:
            intent = False
            price = o * (1.0 + slippage)
            unit_cost = price + 1.0 * commission * price
            size = notional / unit_cost * (1.0 - CASH_EPS)
            # broker.check_submitted: margin check at the unslipped open
            c = cash - size * o
            c -= size * commission * o
            if c < 0.0:
                n_rejected += 1
            else:
                p = _slip_up_nb(high[i], o, slippage)
                c = cash - size * p
                c -= size * commission * p
                if c < 0.0:
                    n_rejected += 1
                else:
                    cash = c
                    units = size
                    pos_price = p
                    entry_px = (0.0 + size * p) / size
                    entry_comm = size * commission * p
                    entry_bar = j
                    stop_px = entry_px - sl * sig_atr
                    limit_px = entry_px + pt * sig_atr  # the OCO pair, worked from the next bar
        elif units != 0.0:
            xp = 0.0
            reason = -1
            if exit_ordered:
                xp = _slip_down_nb(low[i], o, slippage)
                reason = _TIME
            else:
                # pending orders are worked FIFO: the stop (submitted first) before the limit
                if o <= stop_px:
                    xp = _slip_down_nb(low[i], o, slippage)
                    reason = _SL
                elif low[i] <= stop_px:
                    xp = _slip_down_nb(low[i], stop_px, slippage)
                    reason = _SL
                elif limit_px <= o:
                    xp = _slip_down_nb(limit_px, o, slippage)  # backtrader floors a limit gap at the limit
                    reason = _TP
                elif limit_px <= high[i]:
                    xp = limit_px
                    reason = _TP
            if reason >= 0:
                cash, comm, exit_px, pnl = _sell_nb(cash, units, xp, pos_price, entry_px, entry_comm, commission)
                t_entry[k] = entry_bar
                t_exit[k] = j
                t_signal[k] = sig_bar
                t_eprice[k] = entry_px
                t_xprice[k] = exit_px
                t_size[k] = units
                t_pnl[k] = pnl
                t_ret[k] = pnl / (units * entry_px)
                t_comm[k] = entry_comm + comm
                t_atr[k] = sig_atr
                t_reason[k] = reason
                k += 1
                units = 0.0
                pos_price = 0.0
                exit_ordered = False
        # broker value at the close (backtrader's _get_value for one long-only position)
        cl = close[i]
        dvalue = units * cl
        unrealized = units * (cl - pos_price) * 1.0
        if dvalue > 0.0:
            value = cash + ((0.0 + (dvalue - unrealized) / 1.0) + unrealized)
        else:
            value = cash + (0.0 + dvalue)
        equity[j] = value
        position[j] = units
        # strategy.next at the close
        if units != 0.0:
            if not exit_ordered and j - entry_bar + 1 >= horizon:
                exit_ordered = True  # the barriers are cancelled with it
        else:
            a = atr[i]
            if signal[i] >= threshold and a > 0.0:  # NaN compares False
                intent = True
                notional = size_frac * value
                sig_bar = j
                sig_atr = a

    eod_cost = 0.0
    if units != 0.0:
        i = end - 1
        cl = close[i]
        xp = cl * (1.0 - slippage)
        if low[i] > xp:
            xp = low[i]
        comm = units * commission * xp
        eod_cost = units * (cl - xp) + comm
        pnl = units * (xp - entry_px) - entry_comm - comm
        t_entry[k] = entry_bar
        t_exit[k] = n - 1
        t_signal[k] = sig_bar
        t_eprice[k] = entry_px
        t_xprice[k] = xp
        t_size[k] = units
        t_pnl[k] = pnl
        t_ret[k] = pnl / (units * entry_px)
        t_comm[k] = entry_comm + comm
        t_atr[k] = sig_atr
        t_reason[k] = _EOD
        k += 1
        equity[n - 1] -= eod_cost
    return (k, t_entry, t_exit, t_signal, t_eprice, t_xprice, t_size, t_pnl, t_ret, t_comm, t_atr,
            t_reason, equity, position, n_rejected, eod_cost)


def simulate(
    data: pd.DataFrame | str | PathLike,
    signal: pd.Series | np.ndarray,
    *,
    atr: pd.Series | np.ndarray | None = None,
    threshold: float = 0.5,
    pt: float = 1.5,
    sl: float = 1.5,
    horizon: int = 20,
    size_frac: float = 1.0,
    cash: float = 100_000,
    commission: float = 0.0005,
    slippage: float = 0.0,
    start=None,
    end=None,
    atr_period: int = 14,
    periods_per_year: float | None = None,
    risk_free: float = 0.0,
    benchmark: bool = True,
) -> BacktestResult:
    """``run_backtest(data, "agent", ...)`` computed by :func:`_simulate_nb`: same result, no backtrader.

    Arguments mean what they mean for :func:`engine.run_backtest` and ``TransformerAgentStrategy``
    (defaults included); the benchmark is buy-and-hold run through the same kernel (exact).
    """
    t0 = time.perf_counter()
    df = data if isinstance(data, pd.DataFrame) else datafeeds.load_ohlcv(data)
    _check_params(threshold, pt, sl, horizon, size_frac, cash, commission, slippage)
    if signal is None:
        raise ValueError("simulate needs signal= (probabilities aligned to the data)")
    sig, atr_full, period, ppy = prepare_inputs(df, signal, atr, atr_period, start, end, periods_per_year)

    ohlc = [_prices(period, col) for col in ("open", "high", "low", "close")]
    sig_p, atr_p = (_on_period(v, df, period) for v in (sig, atr_full))
    t_run = time.perf_counter()
    out = _simulate_nb(*ohlc, sig_p, atr_p, float(threshold), float(pt), float(sl), int(horizon),
                       float(size_frac), float(cash), float(commission), float(slippage), 0, len(period))
    run_seconds = time.perf_counter() - t_run
    equity, position, trades, n_rejected = _unpack(out, period.index)
    stats = compute_stats(equity, trades, periods_per_year=ppy, exposure=float(np.count_nonzero(out[13]) / len(period)),
                          risk_free=risk_free)
    stats["rejected_entries"] = n_rejected
    if n_rejected:
        log.warning("%d entry order(s) rejected: not enough cash", n_rejected)

    bench_stats = bench_equity = None
    if benchmark:
        bench_equity, bench_stats = _buy_and_hold(ohlc, period.index, cash, commission, slippage, ppy, risk_free)

    config = {
        "strategy": "TransformerAgentStrategy",
        "engine": "fast",
        "params": {k: jsonable(v) for k, v in (("size_frac", size_frac), ("threshold", threshold), ("pt", pt),
                                                 ("sl", sl), ("horizon", horizon), ("live", False))},
        **run_facts(df, period, cash, commission, slippage, atr, atr_period, ppy, periods_per_year, risk_free),
        "live": False,
        "benchmark": "buy-and-hold through the fast kernel, same bars, cash and costs" if benchmark else None,
        "rejected_entries": n_rejected,
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


def _check_params(threshold, pt, sl, horizon, size_frac, cash, commission, slippage) -> None:
    if not 0.0 < size_frac <= 1.0:
        raise ValueError(f"size_frac must be in (0, 1] (no leverage), got {size_frac}")
    if not (pt > 0 and sl > 0):
        raise ValueError(f"pt and sl must be > 0 ATR multiples, got pt={pt}, sl={sl}")
    if isinstance(horizon, bool) or not float(horizon).is_integer() or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1 bars, got {horizon}")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite probability, got {threshold}")
    if cash <= 0 or commission < 0 or not 0 <= slippage < 1:
        raise ValueError(f"need cash > 0, commission >= 0, 0 <= slippage < 1; got {cash}, {commission}, {slippage}")


def _on_period(values: pd.Series, df: pd.DataFrame, period: pd.DataFrame) -> np.ndarray:
    """``values`` (on ``df.index``) over the period's bars as float64: a slice by position, not a reindex."""
    lo = 0 if len(period) == len(df) else int(df.index.get_loc(period.index[0]))
    return np.ascontiguousarray(values.to_numpy(dtype=np.float64)[lo : lo + len(period)])


def _prices(period: pd.DataFrame, col: str) -> np.ndarray:
    values = np.ascontiguousarray(period[col].to_numpy(dtype=np.float64))
    if not np.isfinite(values).all():
        bad = period.index[~np.isfinite(values)][0]
        raise ValueError(f"column {col!r} is not finite at {bad}: load the data with datafeeds.load_ohlcv")
    return values


def _unpack(out, index: pd.DatetimeIndex):
    """Equity, position (Series on ``index``), trades frame (TRADE_FIELDS) and rejections from the kernel."""
    (k, entry, exit_, sig_bar, eprice, xprice, size, pnl, ret, comm, atr_t, reason,
     equity, position, n_rejected, _eod_cost) = out
    # the kernel's fresh arrays: wrapped without the copy pandas 3 makes by default
    equity = pd.Series(equity, index=index, name="equity", dtype=np.float64, copy=False)
    position = pd.Series(position, index=index, name="position", dtype=np.float64, copy=False)
    if k == 0:
        return equity, position, trades_frame([], index), int(n_rejected)
    entry, exit_ = entry[:k], exit_[:k]
    cols = {
        "entry_time": index[entry], "entry_price": eprice[:k], "exit_time": index[exit_],
        "exit_price": xprice[:k], "size": size[:k], "pnl": pnl[:k], "ret": ret[:k],
        "bars_held": exit_ - entry, "exit_reason": _REASON_NAMES.take(reason[:k]),
        "signal_time": index[sig_bar[:k]], "atr": atr_t[:k], "entry_bar": entry, "exit_bar": exit_,
        "commission": comm[:k],
    }
    return equity, position, pd.DataFrame({f: cols[f] for f in TRADE_FIELDS}, copy=False), int(n_rejected)


def _buy_and_hold(ohlc, index, cash, commission, slippage, ppy, risk_free=0.0):
    """strategies.BuyAndHold through the kernel (see `_buy_and_hold_run`): its equity and stats."""
    equity, position, trades, n_rejected = _buy_and_hold_run(ohlc, index, cash, commission, slippage)
    stats = compute_stats(equity, trades, periods_per_year=ppy, exposure=float((position != 0).mean()),
                          risk_free=risk_free)
    stats["rejected_entries"] = n_rejected
    return equity, stats


def _buy_and_hold_run(ohlc, index, cash, commission, slippage):
    """One entry decided at the first close, barriers at +-inf and a horizon past the end, so the position
    leaves by the end_of_data exit: equity, position, trades and rejections, as `_unpack` gives them."""
    n = len(index)
    sig = np.full(n, np.nan)
    sig[0] = 1.0
    atr = np.full(n, np.nan)
    atr[0] = 1.0
    out = _simulate_nb(*ohlc, sig, atr, 0.5, math.inf, math.inf, n + 1, 1.0, float(cash),
                       float(commission), float(slippage), 0, n)
    return _unpack(out, index)


def buy_and_hold_equity(period: pd.DataFrame, cash: float, commission: float,
                        slippage: float) -> tuple[pd.Series, pd.DataFrame]:
    """Equity and trade of ``strategies.BuyAndHold`` with ``cash`` over ``period`` (the fast kernel; parity-tested)."""
    ohlc = [_prices(period, col) for col in ("open", "high", "low", "close")]
    equity, _position, trades, _rejected = _buy_and_hold_run(ohlc, period.index, cash, commission, slippage)
    return equity, trades


# ------------------------------------------------------------------------------------------------------
# Portfolios: several instruments, one cash account (strategies.PortfolioAgentStrategy on BarrierBroker)
# ------------------------------------------------------------------------------------------------------


@njit_cached
def _book_nb(tr_i, tr_f, row, k, entry_bar, exit_bar, sig_time, reason, entry_px, exit_px, size, pnl, comm, atr):
    """Write one closed trade into row ``row`` of the trade tables."""
    tr_i[row, 0], tr_i[row, 1], tr_i[row, 2], tr_i[row, 3], tr_i[row, 4] = k, entry_bar, exit_bar, sig_time, reason
    tr_f[row, 0], tr_f[row, 1], tr_f[row, 2], tr_f[row, 3] = entry_px, exit_px, size, pnl
    tr_f[row, 4], tr_f[row, 5], tr_f[row, 6] = pnl / (size * entry_px), comm, atr


@njit_cached
def _portfolio_nb(open_, high, low, close, signal, atr, has_bar, last_t, threshold, pt, sl, horizon,
                  max_positions, size_frac, cash, commission, slippage):
    """The portfolio strategy over (T, n) arrays (NaN where an instrument has no bar; ``has_bar`` marks
    the bars), instruments in symbol order. ``size_frac <= 0`` means equity / max_positions per entry.

    Follows backtrader's cycle at each time t: the strategy's ``next_open`` (entries waiting for this
    instrument's bar are sized on its open), the broker (``check_submitted``: a cumulative cash check of
    the orders submitted since the last cycle, exits first; then the pending orders first in, first
    out: exits by submission, then the new entries), then the strategy at the close (end-of-data sales,
    the value, the allocation). Returns trades (rows of instrument, entry bar, exit bar -- the
    instrument's own bar positions -- signal time, prices, size, pnl, ret, commission, atr, reason),
    equity (T,), positions (T, n), skipped (n,), rejected (n,).
    """
    T, n = close.shape
    cap = 2
    for k in range(n):
        cap += int(has_bar[:, k].sum()) // 2 + 2
    tr_i = np.empty((cap, 5), np.int64)  # instrument, entry bar, exit bar, signal time, reason
    tr_f = np.empty((cap, 7), np.float64)  # entry price, exit price, size, pnl, ret, commission, atr
    equity = np.empty(T, np.float64)
    positions = np.zeros((T, n), np.float64)
    skipped = np.zeros(n, np.int64)
    rejected = np.zeros(n, np.int64)

    nb = np.zeros(n, np.int64)  # bars of each instrument seen so far
    last_close = np.zeros(n, np.float64)
    units = np.zeros(n, np.float64)
    pos_price = np.zeros(n, np.float64)
    entry_px = np.zeros(n, np.float64)
    entry_comm = np.zeros(n, np.float64)
    entry_bar = np.zeros(n, np.int64)
    stop_px = np.zeros(n, np.float64)
    limit_px = np.zeros(n, np.float64)
    time_bar = np.zeros(n, np.int64)
    exit_live = np.zeros(n, np.bool_)
    exit_new = np.zeros(n, np.bool_)  # submitted at the last cycle: checked by check_submitted now
    exit_seq = np.zeros(n, np.int64)
    intent = np.zeros(n, np.bool_)
    intent_seq = np.zeros(n, np.int64)
    intent_notional = np.zeros(n, np.float64)
    intent_sig = np.zeros(n, np.int64)
    intent_atr = np.zeros(n, np.float64)
    sig_t = np.zeros(n, np.int64)  # signal time of the trade held
    sig_a = np.zeros(n, np.float64)
    entry_size = np.zeros(n, np.float64)  # entry orders of this cycle
    entry_list = np.empty(n, np.int64)
    seq = 0
    k_tr = 0

    for t in range(T):
        for k in range(n):
            if has_bar[t, k]:
                nb[k] += 1
                last_close[k] = close[t, k]
        # -- strategy.next_open: waiting entries of instruments with a bar now, in decision order
        n_entries = 0
        while True:
            best = -1
            for k in range(n):
                if intent[k] and has_bar[t, k] and (best < 0 or intent_seq[k] < intent_seq[best]):
                    best = k
            if best < 0:
                break
            k = best
            intent[k] = False
            price = open_[t, k] * (1.0 + slippage)
            unit_cost = price + 1.0 * commission * price
            entry_size[k] = intent_notional[k] / unit_cost * (1.0 - CASH_EPS)
            sig_t[k] = intent_sig[k]
            sig_a[k] = intent_atr[k]
            entry_list[n_entries] = k
            n_entries += 1
        # -- broker.check_submitted: exits submitted at the last cycle (in order), then the new entries
        c = cash
        while True:
            best = -1
            for k in range(n):
                if exit_new[k] and (best < 0 or exit_seq[k] < exit_seq[best]):
                    best = k
            if best < 0:
                break
            k = best
            exit_new[k] = False
            c += units[k] * stop_px[k] / 1.0 + 0.0
            c -= units[k] * commission * stop_px[k]
        accepted = np.zeros(n, np.bool_)
        for e in range(n_entries):
            k = entry_list[e]
            o = open_[t, k]
            c -= entry_size[k] * o / 1.0
            c -= entry_size[k] * commission * o
            if c < 0.0:
                rejected[k] += 1
            else:
                accepted[k] = True
        # -- broker pending orders: live exits by submission (each worked once, at its own bar), then entries
        worked = np.zeros(n, np.bool_)
        while True:
            best = -1
            for k in range(n):
                if exit_live[k] and has_bar[t, k] and not worked[k] and (best < 0 or exit_seq[k] < exit_seq[best]):
                    best = k
            if best < 0:
                break
            k = best
            worked[k] = True
            o, hi, lo = open_[t, k], high[t, k], low[t, k]
            xp = 0.0
            reason = -1
            if nb[k] - 1 >= time_bar[k]:
                xp = _slip_down_nb(lo, o, slippage)
                reason = _TIME
            elif o <= stop_px[k]:
                xp = _slip_down_nb(lo, o, slippage)
                reason = _SL
            elif lo <= stop_px[k]:
                xp = _slip_down_nb(lo, stop_px[k], slippage)
                reason = _SL
            elif limit_px[k] <= o:
                xp = _slip_down_nb(limit_px[k], o, slippage)
                reason = _TP
            elif limit_px[k] <= hi:
                xp = limit_px[k]
                reason = _TP
            if reason < 0:
                continue
            exit_live[k] = False
            u = units[k]
            cash, comm, exit_px, pnl = _sell_nb(cash, u, xp, pos_price[k], entry_px[k], entry_comm[k], commission)
            _book_nb(tr_i, tr_f, k_tr, k, entry_bar[k], nb[k] - 1, sig_t[k], reason, entry_px[k], exit_px, u, pnl,
                     entry_comm[k] + comm, sig_a[k])
            k_tr += 1
            units[k] = 0.0
            pos_price[k] = 0.0
        for e in range(n_entries):
            k = entry_list[e]
            if not accepted[k]:
                continue
            o = open_[t, k]
            size = entry_size[k]
            p = _slip_up_nb(high[t, k], o, slippage)
            c2 = cash - size * p
            c2 -= size * commission * p
            if c2 < 0.0:
                rejected[k] += 1
                continue
            cash = c2
            units[k] = size
            pos_price[k] = p
            entry_px[k] = (0.0 + size * p) / size
            entry_comm[k] = size * commission * p
            entry_bar[k] = nb[k] - 1
            stop_px[k] = entry_px[k] - sl * sig_a[k]
            limit_px[k] = entry_px[k] + pt * sig_a[k]
            time_bar[k] = entry_bar[k] + horizon
            seq += 1
            exit_seq[k] = seq
            exit_new[k] = True
            exit_live[k] = True
        # -- strategy.next at the close
        last_time = t == T - 1
        if not last_time:
            for k in range(n):
                if has_bar[t, k] and t == last_t[k] and units[k] != 0.0:
                    u = units[k]
                    xp = close[t, k] * (1.0 - slippage)
                    if low[t, k] > xp:
                        xp = low[t, k]
                    cash, comm, exit_px, pnl = _sell_nb(cash, u, xp, pos_price[k], entry_px[k], entry_comm[k],
                                                        commission)
                    _book_nb(tr_i, tr_f, k_tr, k, entry_bar[k], nb[k] - 1, sig_t[k], _EOD, entry_px[k], exit_px, u,
                             pnl, entry_comm[k] + comm, sig_a[k])
                    k_tr += 1
                    units[k] = 0.0
                    pos_price[k] = 0.0
                    exit_live[k] = False
                    exit_new[k] = False
        # the broker's value: cash plus each position at its instrument's last close (symbol order)
        acc = 0.0
        for k in range(n):
            u = units[k]
            if u != 0.0:
                dvalue = u * last_close[k]
                unreal = u * (last_close[k] - pos_price[k]) * 1.0
                if dvalue > 0.0:
                    acc += (dvalue - unreal) / 1.0
                    acc += unreal
                else:
                    acc += dvalue
            else:
                acc += 0.0
        value = cash + acc
        equity[t] = value
        for k in range(n):
            positions[t, k] = units[k]
        if last_time:
            break
        # allocation: candidates by probability (highest first), then symbol (index) order
        busy = 0
        for k in range(n):
            if units[k] != 0.0 or intent[k]:
                busy += 1
        free = max_positions - busy
        target = value / max_positions if size_frac <= 0.0 else size_frac * value
        # Python sums the waiting entries' notionals in decision order: so does this
        committed = 0.0
        order_ks = np.argsort(np.where(intent, intent_seq, np.iinfo(np.int64).max), kind="mergesort")
        for q in range(n):
            k = order_ks[q]
            if intent[k]:
                committed = committed + intent_notional[k]
        available = cash - committed
        rank = 0
        taken = np.zeros(n, np.bool_)
        while True:
            best = -1
            best_p = 0.0
            for k in range(n):
                if taken[k] or not has_bar[t, k] or t == last_t[k] or units[k] != 0.0 or intent[k]:
                    continue
                p = signal[t, k]
                a = atr[t, k]
                if not (p >= threshold and a > 0.0):
                    continue
                if best < 0 or p > best_p:
                    best = k
                    best_p = p
            if best < 0:
                break
            k = best
            taken[k] = True
            notional = target if target < available else available
            if rank >= free or not notional > 0.0:
                skipped[k] += 1
            else:
                available -= notional
                intent[k] = True
                seq += 1
                intent_seq[k] = seq
                intent_notional[k] = notional
                intent_sig[k] = t
                intent_atr[k] = atr[t, k]
            rank += 1

    eod_cost = 0.0
    t = T - 1
    for k in range(n):
        u = units[k]
        if u == 0.0:
            continue
        cl = last_close[k]
        xp = cl * (1.0 - slippage)
        if low[t, k] > xp:
            xp = low[t, k]
        comm = u * commission * xp
        eod_cost += u * (cl - xp) + comm
        _book_nb(tr_i, tr_f, k_tr, k, entry_bar[k], nb[k] - 1, sig_t[k], _EOD, entry_px[k], xp, u,
                 u * (xp - entry_px[k]) - entry_comm[k] - comm, entry_comm[k] + comm, sig_a[k])
        k_tr += 1
    equity[T - 1] -= eod_cost
    return k_tr, tr_i, tr_f, equity, positions, skipped, rejected


def simulate_portfolio(per: dict, times: pd.DatetimeIndex, *, threshold: float, pt: float, sl: float, horizon: int,
                       max_positions: int, size_frac: float | None, cash: float, commission: float,
                       slippage: float) -> dict:
    """The portfolio strategy through :func:`_portfolio_nb` on (times x instruments) arrays.

    ``per``: symbol -> (period frame, signal array, ATR array), symbols sorted (``engine.portfolio.inputs``);
    returns what ``engine.portfolio`` assembles its result from (equity, positions, trade dicts, skipped
    and rejected counts per symbol).
    """
    symbols = list(per)
    T, n = len(times), len(symbols)
    arrays = {c: np.full((T, n), np.nan) for c in ("open", "high", "low", "close", "signal", "atr")}
    has_bar = np.zeros((T, n), dtype=np.bool_)
    last_t = np.empty(n, dtype=np.int64)
    rows = []
    for k, sym in enumerate(symbols):
        period, sig, atr = per[sym]
        pos = times.get_indexer(period.index)
        rows.append(pos)
        has_bar[pos, k] = True
        last_t[k] = pos[-1]
        for c in ("open", "high", "low", "close"):
            arrays[c][pos, k] = _prices(period, c)
        arrays["signal"][pos, k] = sig
        arrays["atr"][pos, k] = atr
    t0 = time.perf_counter()
    out = _portfolio_nb(arrays["open"], arrays["high"], arrays["low"], arrays["close"], arrays["signal"],
                        arrays["atr"], has_bar, last_t, float(threshold), float(pt), float(sl), int(horizon),
                        int(max_positions), -1.0 if size_frac is None else float(size_frac), float(cash),
                        float(commission), float(slippage))
    run_seconds = time.perf_counter() - t0
    k_tr, tr_i, tr_f, equity, positions, skipped, rejected = out
    sym_, entry, exit_, sig_t, reason = (tr_i[:k_tr, c] for c in range(5))
    ep, xp, size, pnl, ret, comm, atr_t = (tr_f[:k_tr, c] for c in range(7))
    n_tr = int(k_tr)
    unit = f"datetime64[{times.unit}]"
    entry_time = np.empty(n_tr, dtype=unit)
    exit_time = np.empty(n_tr, dtype=unit)
    for k, sym in enumerate(symbols):  # each instrument's own bar positions -> its times
        mine = sym_ == k
        idx = per[sym][0].index.as_unit(times.unit)
        idx = (idx.tz_convert("UTC").tz_localize(None) if idx.tz is not None else idx).to_numpy()
        entry_time[mine], exit_time[mine] = idx[entry[mine]], idx[exit_[mine]]
    tz = times.tz
    as_time = (lambda v: pd.DatetimeIndex(v).tz_localize("UTC").tz_convert(tz)) if tz is not None else pd.DatetimeIndex
    trades = pd.DataFrame({
        "symbol": np.asarray(symbols, dtype=object)[sym_], "entry_time": as_time(entry_time), "entry_price": ep,
        "exit_time": as_time(exit_time), "exit_price": xp, "size": size, "pnl": pnl,
        "ret": ret, "bars_held": exit_ - entry, "exit_reason": _REASON_NAMES.take(reason),
        "signal_time": times[sig_t], "atr": atr_t, "entry_bar": entry, "exit_bar": exit_,
        "commission": comm,
    })
    return {"equity": equity, "positions": positions, "trades": trades, "skipped": [int(v) for v in skipped],
            "rejected": [int(v) for v in rejected], "run_seconds": run_seconds}


# ------------------------------------------------------------------------------------------------------
# Parameter grids in one call
# ------------------------------------------------------------------------------------------------------

SWEEP_PARAMS = ("threshold", "pt", "sl", "horizon", "size_frac")
SWEEP_STATS = ("total_return", "cagr", "ann_volatility", "sharpe", "sortino", "max_drawdown", "calmar", "n_trades",
               "win_rate", "profit_factor", "avg_trade_return", "exposure", "end_value", "rejected_entries")


@njit_cached
def _headline_nb(equity, position, pnl, ret, n_trades, years, ppy, rf_bar):
    """compute_stats' headline numbers of one run (NaN where compute_stats gives None)."""
    n = len(equity)
    out = np.full(len(SWEEP_STATS), np.nan)
    start, end = equity[0], equity[n - 1]
    out[0] = end / start - 1.0
    if years > 0 and end > 0:
        out[1] = (end / start) ** (1.0 / years) - 1.0
    ok, mean, std, down, mdd, _, _ = curve_stats_nb(equity, rf_bar)  # compute_stats' own kernel: equal numbers
    if not ok:  # compute_stats refuses such a curve
        return out
    sqrt_ppy = math.sqrt(ppy)
    out[2] = std * sqrt_ppy
    if std > 0:
        out[3] = mean / std * sqrt_ppy
    if down > 0:
        out[4] = mean / down * sqrt_ppy
    out[5] = mdd
    if not math.isnan(out[1]) and mdd < 0:
        out[6] = out[1] / abs(mdd)
    out[7] = n_trades
    if n_trades:
        wins, gp, gl, rsum = trade_stats_nb(pnl[:n_trades], ret[:n_trades])  # as compute_stats counts them
        out[8] = wins / n_trades
        if gl > 0:
            out[9] = gp / gl
        out[10] = rsum / n_trades
    out[11] = np.count_nonzero(position) / n
    out[12] = end
    return out


@njit_cached(parallel=True)
def _sweep_nb(open_, high, low, close, signal, atr, thresholds, pts, sls, horizons, size_fracs, cash, commission,
              slippage, years, ppy, rf_bar, keep_equity):
    """Every configuration (one row of the parameter arrays) through `_simulate_nb`, in parallel; their headline
    stats, and their equity curves (n_conf x bars) if ``keep_equity`` (else an empty n_conf x 0 array)."""
    n_conf = len(thresholds)
    n = len(close)
    out = np.empty((n_conf, len(SWEEP_STATS)))
    curves = np.empty((n_conf, n if keep_equity else 0))
    for c in numba.prange(n_conf):
        res = _simulate_nb(open_, high, low, close, signal, atr, thresholds[c], pts[c], sls[c], horizons[c],
                           size_fracs[c], cash, commission, slippage, 0, n)
        k = res[0]
        out[c, :] = _headline_nb(res[12], res[13], res[7][:k], res[8][:k], k, years, ppy, rf_bar)
        out[c, len(SWEEP_STATS) - 1] = res[14]
        if keep_equity:
            curves[c, :] = res[12]
    return out, curves


def sweep(data: pd.DataFrame | str | PathLike, signal, grid, *, atr=None, cash: float = 100_000,
          commission: float = 0.0005, slippage: float = 0.0, start=None, end=None, atr_period: int = 14,
          periods_per_year: float | None = None, risk_free: float = 0.0, defaults: dict | None = None,
          equity: bool = False):
    """The agent strategy on one signal for many parameter sets in one numba call (parallel over them).

    ``grid``: parameter name -> values (``threshold``, ``pt``, ``sl``, ``horizon``, ``size_frac``; their
    Cartesian product), or a DataFrame of explicit rows with some of those columns. Parameters not given
    take ``defaults`` or ``simulate``'s defaults. Returns one row per configuration: its parameters and the
    headline numbers ``run_backtest(engine="fast")`` reports for it (``SWEEP_STATS``; NaN where that gives None).
    ``equity=True``: ``(that frame, equity curves)``, the curves a DataFrame on the period's bars with one column
    per configuration (8 bytes x bars x configurations: for short periods, e.g. validation blocks).
    """
    import itertools

    df = data if isinstance(data, pd.DataFrame) else datafeeds.load_ohlcv(data)
    base = {"threshold": 0.5, "pt": 1.5, "sl": 1.5, "horizon": 20, "size_frac": 1.0, **(defaults or {})}
    if isinstance(grid, pd.DataFrame):
        rows = grid
        names = list(grid.columns)
    elif isinstance(grid, dict):
        names = list(grid)
        values = [np.atleast_1d(np.asarray(grid[k])) for k in names]
        rows = pd.DataFrame(list(itertools.product(*values)), columns=names)
    else:
        raise TypeError(f"grid must be a dict of parameter -> values or a DataFrame, got {type(grid).__name__}")
    unknown = [k for k in names if k not in SWEEP_PARAMS]
    if unknown:
        import difflib

        hint = difflib.get_close_matches(unknown[0], SWEEP_PARAMS, n=1)
        raise ValueError(f"sweep: unknown parameter {unknown[0]!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                         + f"; the parameters are {', '.join(SWEEP_PARAMS)}")
    if not len(rows):
        raise ValueError("sweep: the grid is empty")
    conf = {k: (rows[k].to_numpy() if k in rows else np.full(len(rows), base[k])) for k in SWEEP_PARAMS}
    for i in range(len(rows)):  # the same checks a single run makes, naming the row
        try:
            _check_params(*(conf[k][i] for k in ("threshold", "pt", "sl", "horizon", "size_frac")), cash, commission,
                          slippage)
        except ValueError as exc:
            raise ValueError(f"sweep: configuration {i}: {exc}") from None
    sig, atr_full, period, ppy = prepare_inputs(df, signal, atr, atr_period, start, end, periods_per_year)
    ohlc = [_prices(period, col) for col in ("open", "high", "low", "close")]
    sig_p, atr_p = (_on_period(v, df, period) for v in (sig, atr_full))
    years = (period.index[-1] - period.index[0]).total_seconds() / (365.25 * 86_400.0)
    rf_bar = (1.0 + risk_free) ** (1.0 / ppy) - 1.0 if risk_free else 0.0
    stats, curves = _sweep_nb(*ohlc, sig_p, atr_p, conf["threshold"].astype(np.float64),
                              conf["pt"].astype(np.float64), conf["sl"].astype(np.float64),
                              conf["horizon"].astype(np.int64), conf["size_frac"].astype(np.float64), float(cash),
                              float(commission), float(slippage), float(years), float(ppy), float(rf_bar),
                              bool(equity))
    out = pd.DataFrame({k: conf[k] for k in SWEEP_PARAMS})
    out["horizon"] = out["horizon"].astype(np.int64)
    for j, name in enumerate(SWEEP_STATS):
        out[name] = stats[:, j]
    out["n_trades"] = out["n_trades"].astype(np.int64)
    out["rejected_entries"] = out["rejected_entries"].astype(np.int64)
    if equity:
        return out, pd.DataFrame(curves.T, index=period.index, columns=range(len(rows)))
    return out
