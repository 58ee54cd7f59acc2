"""The fast simulator's portfolio kernel: ``strategies.PortfolioAgentStrategy`` on BarrierBroker over
(times x instruments) arrays, with backtrader's cumulative cash check of each cycle's new orders and its
first-in first-out order processing across instruments. Pure: arrays and NamedTuples in and out.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from labeling.jit import njit_cached

from engine.fastsim.kernels import (EOD, SWEEP_STATS, Rules, Signals, SweepOut, barrier_exit_nb, close_nb,
                                    close_out_price_nb, entry_units_nb, slip_down_nb, slip_up_nb, stats_nb)

# columns of PortfolioOut.trade_ints
TRADE_INTS = ("instrument", "entry_bar", "exit_bar", "signal_time", "reason", "side")
TRADE_FLOATS = ("entry_price", "exit_price", "size", "pnl", "ret", "commission", "atr", "bet_size")  # .trade_floats


class Calendar(NamedTuple):
    """Which instrument has a bar at which time (T, n), and the time of each instrument's last bar (n,)."""

    has_bar: np.ndarray
    last_t: np.ndarray


class Held(NamedTuple):
    """The positions held, one slot per instrument: units (< 0 short), the broker's position price, the entry's
    executed price and commission, borrow accrued, entry bar, bars seen, signal time, ATR and bet size of the
    trade."""

    units: np.ndarray
    pos_price: np.ndarray
    entry_px: np.ndarray
    entry_comm: np.ndarray
    accrued: np.ndarray
    entry_bar: np.ndarray
    nb: np.ndarray
    sig_t: np.ndarray
    sig_a: np.ndarray
    sig_b: np.ndarray


class PortfolioOut(NamedTuple):
    """What ``portfolio_nb`` returns: ``n_trades`` valid rows of the trade tables (entry and exit bars are the
    instrument's own bar positions, the signal time a row of the times), equity (T,), units held (T, n), and
    per instrument the signals skipped for want of a free slot and the entries refused for want of cash."""

    n_trades: int
    trade_ints: np.ndarray
    trade_floats: np.ndarray
    equity: np.ndarray
    positions: np.ndarray
    skipped: np.ndarray
    rejected: np.ndarray


@njit_cached
def _book_nb(tr_i, tr_f, row, ints, floats):
    """Write one closed trade into row ``row`` of the trade tables: ``ints`` (instrument, entry bar, exit bar,
    signal time, reason, side), ``floats`` (entry price, exit price, size, pnl, commission, atr, bet size); ret is
    computed."""
    tr_i[row, 0], tr_i[row, 1], tr_i[row, 2], tr_i[row, 3], tr_i[row, 4], tr_i[row, 5] = ints
    entry_px, exit_px, size, pnl, comm, atr, bet = floats
    tr_f[row, 0], tr_f[row, 1], tr_f[row, 2], tr_f[row, 3] = entry_px, exit_px, size, pnl
    tr_f[row, 4], tr_f[row, 5], tr_f[row, 6], tr_f[row, 7] = pnl / (size * entry_px), comm, atr, bet


@njit_cached
def _exit_nb(k, xp, reason, cash, held, account):
    """Close instrument ``k``'s position at ``xp`` through the broker (its commission booked with the borrow
    accrued): the cash after, and the trade's row for :func:`_book_nb` (ints, floats)."""
    h = held
    u = h.units[k]
    cash, comm, exit_px = close_nb(cash, u, xp, h.pos_price[k], account.commission, account.leverage)
    comm += h.accrued[k]
    pnl = u * (exit_px - h.entry_px[k]) - h.entry_comm[k] - comm
    ints = (k, h.entry_bar[k], h.nb[k] - 1, h.sig_t[k], reason, 1 if u > 0.0 else -1)
    floats = (h.entry_px[k], exit_px, abs(u), pnl, h.entry_comm[k] + comm, h.sig_a[k], h.sig_b[k])
    h.units[k] = 0.0
    h.pos_price[k] = 0.0
    return cash, ints, floats


@njit_cached
def portfolio_nb(bars, signals, calendar, rules, account, max_positions):
    """The portfolio strategy over (T, n) arrays (NaN where an instrument has no bar; ``has_bar`` marks
    the bars, :class:`Calendar`), instruments in symbol order; :class:`~engine.fastsim.kernels.Signals` (T, n),
    days (T,). ``size_frac <= 0`` means equity / max_positions per entry.

    Follows backtrader's cycle at each time t: the strategy's ``next_open`` (entries waiting for this
    instrument's bar are sized on its open), the broker (``check_submitted``: a cumulative cash check of
    the orders submitted since the last cycle, exits first; then the pending orders first in, first
    out: exits by submission, then the new entries), then the strategy at the close (end-of-data sales,
    the value, the allocation). Returns trades (rows of instrument, entry bar, exit bar -- the
    instrument's own bar positions -- signal time, prices, size, pnl, ret, commission, atr, reason),
    equity (T,), positions (T, n), skipped (n,), rejected (n,): a :class:`PortfolioOut`.
    """
    open_, high, low, close = bars
    signal, atr, side, scale, day = signals
    has_bar, last_t = calendar
    threshold, pt, sl, horizon, size_frac = rules
    cash, commission, slippage, lev, borrow_day = account
    T, n = close.shape
    cap = 2
    for k in range(n):
        cap += int(has_bar[:, k].sum()) // 2 + 2
    tr_i = np.empty((cap, 6), np.int64)  # instrument, entry bar, exit bar, signal time, reason, side
    tr_f = np.empty((cap, 8), np.float64)  # entry price, exit price, size, pnl, ret, commission, atr, bet size
    equity = np.empty(T, np.float64)
    positions = np.zeros((T, n), np.float64)
    skipped = np.zeros(n, np.int64)
    rejected = np.zeros(n, np.int64)

    nb = np.zeros(n, np.int64)  # bars of each instrument seen so far
    last_close = np.zeros(n, np.float64)
    last_day = np.zeros(n, np.int64)  # the day of each instrument's last bar (its feed's datetime)
    units = np.zeros(n, np.float64)  # < 0 short
    pos_price = np.zeros(n, np.float64)
    pos_day = np.zeros(n, np.int64)  # backtrader's position.datetime, as a day: borrow is charged up to it
    accrued = np.zeros(n, np.float64)  # borrow charged since the entry (backtrader's d_credit)
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
    intent_side = np.ones(n, np.int64)
    sig_t = np.zeros(n, np.int64)  # signal time of the trade held
    sig_a = np.zeros(n, np.float64)
    sig_b = np.ones(n, np.float64)  # bet size (entry size multiple) of the trade held
    intent_scale = np.ones(n, np.float64)
    sig_s = np.ones(n, np.int64)
    held = Held(units, pos_price, entry_px, entry_comm, accrued, entry_bar, nb, sig_t, sig_a, sig_b)
    entry_size = np.zeros(n, np.float64)  # entry orders of this cycle
    entry_list = np.empty(n, np.int64)
    seq = 0
    k_tr = 0

    for t in range(T):
        for k in range(n):
            if has_bar[t, k]:
                nb[k] += 1
                last_close[k] = close[t, k]
                last_day[k] = day[t]
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
            entry_size[k] = entry_units_nb(intent_notional[k], open_[t, k], intent_side[k], commission, slippage, lev)
            sig_t[k] = intent_sig[k]
            sig_a[k] = intent_atr[k]
            sig_b[k] = intent_scale[k]
            sig_s[k] = intent_side[k]
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
            c += abs(units[k]) * stop_px[k] / lev + 0.0
            c -= abs(units[k]) * commission * stop_px[k]
        accepted = np.zeros(n, np.bool_)
        for e in range(n_entries):
            k = entry_list[e]
            o = open_[t, k]
            c -= entry_size[k] * o / lev
            c -= entry_size[k] * commission * o
            if c < 0.0:
                rejected[k] += 1
            else:
                accepted[k] = True
        # -- broker.next: borrow on shorts, per calendar day of each instrument's feed, before the fills
        credit = 0.0
        for k in range(n):
            if units[k] != 0.0:
                if units[k] < 0.0 and last_day[k] > pos_day[k]:
                    dc = (last_day[k] - pos_day[k]) * borrow_day * abs(units[k]) * pos_price[k]
                    accrued[k] += dc
                    credit += dc
                pos_day[k] = last_day[k]
        cash -= credit
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
            xp, reason = barrier_exit_nb(units[k], open_[t, k], high[t, k], low[t, k], stop_px[k], limit_px[k],
                                         nb[k] - 1 >= time_bar[k], slippage)
            if reason < 0:
                continue
            exit_live[k] = False
            cash, ints, floats = _exit_nb(k, xp, reason, cash, held, account)
            _book_nb(tr_i, tr_f, k_tr, ints, floats)
            k_tr += 1
        for e in range(n_entries):
            k = entry_list[e]
            if not accepted[k]:
                continue
            o = open_[t, k]
            size = entry_size[k]
            p = slip_up_nb(high[t, k], o, slippage) if sig_s[k] > 0 else slip_down_nb(low[t, k], o, slippage)
            c2 = cash - size * p / lev
            c2 -= size * commission * p
            if c2 < 0.0:
                rejected[k] += 1
                continue
            cash = c2
            u = size * sig_s[k]
            units[k] = u
            pos_price[k] = p
            pos_day[k] = day[t]
            accrued[k] = 0.0
            entry_px[k] = (0.0 + u * p) / u
            entry_comm[k] = size * commission * p
            entry_bar[k] = nb[k] - 1
            if u > 0.0:
                stop_px[k] = entry_px[k] - sl * sig_a[k]
                limit_px[k] = entry_px[k] + pt * sig_a[k]
            else:
                stop_px[k] = entry_px[k] + sl * sig_a[k]
                limit_px[k] = entry_px[k] - pt * sig_a[k]
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
                    xp = close_out_price_nb(units[k], close[t, k], high[t, k], low[t, k], slippage)
                    cash, ints, floats = _exit_nb(k, xp, EOD, cash, held, account)
                    _book_nb(tr_i, tr_f, k_tr, ints, floats)
                    k_tr += 1
                    exit_live[k] = False
                    exit_new[k] = False
        # the broker's value: cash plus each position at its instrument's last close (symbol order)
        acc = 0.0
        for k in range(n):
            u = units[k]
            if u != 0.0:
                unreal = u * (last_close[k] - pos_price[k]) * 1.0
                # a long at its close, a short at its entry value, each unlevered, plus its gain (ShortValue)
                dvalue = u * last_close[k] if u > 0.0 else -u * pos_price[k]
                if dvalue > 0.0:
                    acc += ((dvalue - unreal) if u > 0.0 else dvalue) / lev
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
        target = value / max_positions if size_frac <= 0.0 else size_frac * value  # times each entry's size
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
                if not (p >= threshold and side[t, k] != 0.0 and scale[t, k] > 0.0 and a > 0.0):
                    continue
                if best < 0 or p > best_p:
                    best = k
                    best_p = p
            if best < 0:
                break
            k = best
            taken[k] = True
            want = target * scale[t, k]
            notional = want if want < available else available
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
                intent_scale[k] = scale[t, k]
                intent_side[k] = 1 if side[t, k] > 0.0 else -1
            rank += 1

    eod_cost = 0.0
    t = T - 1
    for k in range(n):
        u = units[k]
        if u == 0.0:
            continue
        cl = last_close[k]
        xp = close_out_price_nb(u, cl, high[t, k], low[t, k], slippage)
        comm = abs(u) * commission * xp
        eod_cost += u * (cl - xp) + comm
        comm += accrued[k]
        _book_nb(tr_i, tr_f, k_tr, (k, entry_bar[k], nb[k] - 1, sig_t[k], EOD, 1 if u > 0.0 else -1),
                 (entry_px[k], xp, abs(u), u * (xp - entry_px[k]) - entry_comm[k] - comm, entry_comm[k] + comm,
                  sig_a[k], sig_b[k]))
        k_tr += 1
    equity[T - 1] -= eod_cost
    return PortfolioOut(k_tr, tr_i, tr_f, equity, positions, skipped, rejected)


@njit_cached(parallel=True)
def portfolio_sweep_nb(bars, signals, calendar, grid, max_positions, account, clock, keep_equity):
    """Every configuration (a row of the :class:`~engine.fastsim.kernels.RuleGrid`, with ``max_positions[row]``
    positions at most) through :func:`portfolio_nb`, in parallel; ``signals.size`` holds one (T, n) matrix of entry
    sizes per sizing, (rows, T, n), of which a configuration reads row ``size_row``. A
    :class:`~engine.fastsim.kernels.SweepOut` of their headline numbers, with their equity curves if
    ``keep_equity``."""
    n_conf = len(grid.threshold)
    T, n = bars.close.shape
    out = np.empty((n_conf, len(SWEEP_STATS)))
    curves = np.empty((n_conf, T if keep_equity else 0))
    for c in numba.prange(n_conf):
        rules = Rules(grid.threshold[c], grid.pt[c], grid.sl[c], grid.horizon[c], grid.size_frac[c])
        mine = Signals(signals.prob, signals.atr, signals.side, signals.size[grid.size_row[c]], signals.day)
        run = portfolio_nb(bars, mine, calendar, rules, account, max_positions[c])
        in_market = 0
        for t in range(T):
            for k in range(n):
                if run.positions[t, k] != 0.0:
                    in_market += 1
                    break
        k_tr = run.n_trades
        out[c, :] = stats_nb(run.equity, in_market, run.trade_floats[:k_tr, 3], run.trade_floats[:k_tr, 4],
                             run.rejected.sum(), clock)
        if keep_equity:
            curves[c, :] = run.equity
    return SweepOut(out, curves)
