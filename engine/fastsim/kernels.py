"""The fast simulator's numba kernels: pure functions, numpy arrays and NamedTuples in, NamedTuples out.

``simulate_nb`` is ``strategies.TransformerAgentStrategy`` on BarrierBroker, bar by bar (the conventions are
in the package docstring), ``sweep_nb`` runs it for many rule sets in parallel and ``headline_nb`` gives a
run's headline numbers. No pandas, I/O or logging here: :mod:`engine.fastsim.single` and
:mod:`engine.fastsim.grid` validate inputs and wrap the results.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
from labeling.jit import njit_cached

from engine.metrics import curve_stats_nb, trade_stats_nb
from strategies.base import CASH_EPS, EXIT_REASONS

# Exit-reason codes of the kernels: positions in strategies.EXIT_REASONS.
TP = EXIT_REASONS.index("take_profit")
SL = EXIT_REASONS.index("stop_loss")
TIME = EXIT_REASONS.index("time_limit")
EOD = EXIT_REASONS.index("end_of_data")

SWEEP_STATS = ("total_return", "cagr", "ann_volatility", "sharpe", "sortino", "max_drawdown", "calmar", "n_trades",
               "win_rate", "profit_factor", "avg_trade_return", "exposure", "end_value", "rejected_entries")


class Bars(NamedTuple):
    """Price arrays, float64: (bars,) for one instrument, (times, instruments) for a portfolio (NaN: no bar)."""

    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray


class Rules(NamedTuple):
    """``labeling.BarrierRules`` as the kernels read it; ``size_frac <= 0``: equity / max positions (portfolio)."""

    threshold: float
    pt: float
    sl: float
    horizon: int
    size_frac: float


class RuleGrid(NamedTuple):
    """One array per field of :class:`Rules`, one row per configuration (``sweep_nb``), and the row of the sizes
    matrix each configuration reads."""

    threshold: np.ndarray
    pt: np.ndarray
    sl: np.ndarray
    horizon: np.ndarray
    size_frac: np.ndarray
    size_row: np.ndarray


class Signals(NamedTuple):
    """What the decisions read per bar, float64 shaped like the prices (``day``: per row): the probability (NaN:
    none), the ATR the barriers are measured in, the side of an entry there (+1 long, -1 short, 0 no bet), its
    size as a multiple of the usual notional (``labeling.entry_sizes``; 0 no bet), and the calendar day (days
    since 1970-01-01, UTC) a short's daily borrow counts."""

    prob: np.ndarray
    atr: np.ndarray
    side: np.ndarray
    size: np.ndarray
    day: np.ndarray


class Account(NamedTuple):
    """Starting cash, ``labeling.Costs`` and margin: ``leverage`` = 1 / ``RunConfig.margin``, ``borrow_day`` =
    ``Costs.borrow`` / 365 (backtrader's credit rate)."""

    cash: float
    commission: float
    slippage: float
    leverage: float
    borrow_day: float


class Clock(NamedTuple):
    """What annualises a run's numbers: its length in years, bars per year, the per-bar risk-free rate."""

    years: float
    periods_per_year: float
    rf_bar: float


class Trades(NamedTuple):
    """The closed trades, ``n`` valid rows; bars are positions in the run, ``reason`` indexes EXIT_REASONS."""

    n: int
    entry_bar: np.ndarray
    exit_bar: np.ndarray
    signal_bar: np.ndarray
    entry_price: np.ndarray
    exit_price: np.ndarray
    size: np.ndarray
    pnl: np.ndarray
    ret: np.ndarray
    commission: np.ndarray
    atr: np.ndarray
    reason: np.ndarray
    side: np.ndarray
    bet_size: np.ndarray


class SimOut(NamedTuple):
    """What ``simulate_nb`` returns: trades, equity and units held at each close, refused entries, and the
    end_of_data exit's costs (already taken off the last equity value)."""

    trades: Trades
    equity: np.ndarray
    position: np.ndarray
    n_rejected: int
    eod_cost: float


class SweepOut(NamedTuple):
    """``sweep_nb``: headline numbers (configurations x SWEEP_STATS) and equity curves (configurations x bars,
    or x 0 when not kept)."""

    stats: np.ndarray
    curves: np.ndarray


@njit_cached
def slip_up_nb(pmax, price, slip):
    # backtrader _slip_up with slip_match=True, slip_out=False: capped at pmax; no slippage = no cap
    if slip == 0.0:
        return price
    p = price * (1.0 + slip)
    return p if p <= pmax else pmax


@njit_cached
def slip_down_nb(pmin, price, slip):
    if slip == 0.0:
        return price
    p = price * (1.0 - slip)
    return p if p >= pmin else pmin


@njit_cached
def close_nb(cash, units, xp, pos_price, commission, lev):
    """A position of ``units`` (< 0: short) closed at ``xp`` in BackBroker's order of float operations (shortcash
    off): (cash after, the fill's commission, order.executed.price)."""
    pnl_b = units * (xp - pos_price) * 1.0
    cash += abs(units) * pos_price / lev + pnl_b
    comm = abs(units) * commission * xp
    cash -= comm
    cash += 0.0
    exit_px = (0.0 + (-units) * xp) / (-units)
    return cash, comm, exit_px


@njit_cached
def barrier_exit_nb(units, o, hi, lo, stop_px, limit_px, timed, slippage):
    """Where and why a triple-barrier exit fills on this bar (price, reason code; -1: it does not), as BarrierBroker
    works it: the time exit at the open, else the stop, else the take-profit; a short's orders are buys."""
    if units > 0.0:
        if timed:
            return slip_down_nb(lo, o, slippage), TIME
        if o <= stop_px:
            return slip_down_nb(lo, o, slippage), SL
        if lo <= stop_px:
            return slip_down_nb(lo, stop_px, slippage), SL
        if limit_px <= o:
            return slip_down_nb(limit_px, o, slippage), TP  # backtrader floors a sell limit's gap at the limit
        if limit_px <= hi:
            return limit_px, TP
        return 0.0, -1
    if timed:
        return slip_up_nb(hi, o, slippage), TIME
    if o >= stop_px:
        return slip_up_nb(hi, o, slippage), SL
    if hi >= stop_px:
        return slip_up_nb(hi, stop_px, slippage), SL
    if limit_px >= o:
        return slip_up_nb(min(hi, limit_px), o, slippage), TP
    if limit_px >= lo:
        return limit_px, TP
    return 0.0, -1


@njit_cached
def entry_units_nb(notional, o, side, commission, slippage, lev):
    """``strategies.base.entry_units``: a buy sized at the open slipped up, a short sale at the open."""
    price = o * (1.0 + slippage) if side > 0 else o
    unit_cost = price / lev + 1.0 * commission * price
    return notional / unit_cost * (1.0 - CASH_EPS)


@njit_cached
def position_value_nb(units, close, pos_price, lev):
    """What the broker's value adds for a position (``strategies.broker.ShortValue``): a long at its close, a short
    at its entry value, each unlevered, plus its gain."""
    unrealized = units * (close - pos_price) * 1.0
    if units > 0.0:
        dvalue = units * close
        if dvalue > 0.0:
            return (0.0 + (dvalue - unrealized) / lev) + unrealized
        return 0.0 + dvalue
    return (0.0 + (-units * pos_price) / lev) + unrealized


@njit_cached
def close_out_price_nb(units, close, hi, lo, slippage):
    """``strategies.base.close_out_price``: the synthetic end-of-data fill at the close, slipped against us."""
    if units > 0.0:
        xp = close * (1.0 - slippage)
        return lo if lo > xp else xp
    xp = close * (1.0 + slippage)
    return hi if hi < xp else xp


@njit_cached
def simulate_nb(bars, signals, rules, account, start, end):
    """Triple-barrier trades on :class:`Signals` over bars [start, end), long or short (see the package docstring):
    a :class:`SimOut` whose bars are relative to ``start``."""
    open_, high, low, close = bars
    signal, atr, side, scale, day = signals
    threshold, pt, sl, horizon, size_frac = rules
    cash, commission, slippage, lev, borrow_day = account
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
    t_side = np.empty(cap, np.int8)
    t_bet = np.empty(cap, np.float64)
    equity = np.empty(n, np.float64)
    position = np.empty(n, np.float64)

    k = 0  # trades recorded
    n_rejected = 0
    units = 0.0  # position size, < 0 short
    pos_price = 0.0  # broker position price: the raw fill price
    pos_day = 0  # the day borrow was last charged up to (backtrader's position.datetime)
    accrued = 0.0  # borrow charged since the entry (backtrader's d_credit, booked with the exit's commission)
    entry_px = 0.0  # order.executed.price of the entry: units * price / units
    entry_comm = 0.0
    entry_bar = -1
    sig_bar = -1
    sig_atr = 0.0
    sig_side = 1
    sig_scale = 1.0
    stop_px = 0.0
    limit_px = 0.0
    exit_ordered = False  # time exit: market order at the next open
    intent = False  # entry decided at the previous close
    notional = 0.0
    for j in range(n):
        i = start + j
        o = open_[i]
        # next_open: size the entry on this open (the broker caps the fill within the bar)
        if intent:
            intent = False
            size = entry_units_nb(notional, o, sig_side, commission, slippage, lev)
            # broker.check_submitted: margin check at the unslipped open
            c = cash - size * o / lev
            c -= size * commission * o
            if c < 0.0:
                n_rejected += 1
            else:
                p = slip_up_nb(high[i], o, slippage) if sig_side > 0 else slip_down_nb(low[i], o, slippage)
                c = cash - size * p / lev
                c -= size * commission * p
                if c < 0.0:
                    n_rejected += 1
                else:
                    cash = c
                    units = size * sig_side
                    pos_price = p
                    pos_day = day[i]
                    accrued = 0.0
                    entry_px = (0.0 + units * p) / units
                    entry_comm = size * commission * p
                    entry_bar = j
                    if sig_side > 0:
                        stop_px = entry_px - sl * sig_atr
                        limit_px = entry_px + pt * sig_atr  # the OCO pair, worked from the next bar
                    else:
                        stop_px = entry_px + sl * sig_atr
                        limit_px = entry_px - pt * sig_atr
        elif units != 0.0:
            if units < 0.0 and day[i] > pos_day:  # broker.next: a short's borrow, per calendar day, before fills
                credit = (day[i] - pos_day) * borrow_day * abs(units) * pos_price
                accrued += credit
                cash -= credit
            pos_day = day[i]
            xp, reason = barrier_exit_nb(units, o, high[i], low[i], stop_px, limit_px, exit_ordered, slippage)
            if reason >= 0:
                cash, comm, exit_px = close_nb(cash, units, xp, pos_price, commission, lev)
                comm += accrued
                t_entry[k] = entry_bar
                t_exit[k] = j
                t_signal[k] = sig_bar
                t_eprice[k] = entry_px
                t_xprice[k] = exit_px
                t_size[k] = abs(units)
                t_pnl[k] = units * (exit_px - entry_px) - entry_comm - comm
                t_ret[k] = t_pnl[k] / (abs(units) * entry_px)
                t_comm[k] = entry_comm + comm
                t_atr[k] = sig_atr
                t_reason[k] = reason
                t_side[k] = 1 if units > 0.0 else -1
                t_bet[k] = sig_scale
                k += 1
                units = 0.0
                pos_price = 0.0
                exit_ordered = False
        # broker value at the close (backtrader's _get_value for one position)
        if units != 0.0:
            value = cash + position_value_nb(units, close[i], pos_price, lev)
        else:
            value = cash + (0.0 + 0.0)
        equity[j] = value
        position[j] = units
        # strategy.next at the close
        if units != 0.0:
            if not exit_ordered and j - entry_bar + 1 >= horizon:
                exit_ordered = True  # the barriers are cancelled with it
        else:
            a = atr[i]
            if signal[i] >= threshold and side[i] != 0.0 and scale[i] > 0.0 and a > 0.0:  # NaN compares False
                intent = True
                notional = size_frac * value * scale[i]
                sig_bar = j
                sig_atr = a
                sig_side = 1 if side[i] > 0.0 else -1
                sig_scale = scale[i]

    eod_cost = 0.0
    if units != 0.0:
        i = end - 1
        cl = close[i]
        xp = close_out_price_nb(units, cl, high[i], low[i], slippage)
        comm = abs(units) * commission * xp
        eod_cost = units * (cl - xp) + comm
        comm += accrued
        t_entry[k] = entry_bar
        t_exit[k] = n - 1
        t_signal[k] = sig_bar
        t_eprice[k] = entry_px
        t_xprice[k] = xp
        t_size[k] = abs(units)
        t_pnl[k] = units * (xp - entry_px) - entry_comm - comm
        t_ret[k] = t_pnl[k] / (abs(units) * entry_px)
        t_comm[k] = entry_comm + comm
        t_atr[k] = sig_atr
        t_reason[k] = EOD
        t_side[k] = 1 if units > 0.0 else -1
        t_bet[k] = sig_scale
        k += 1
        equity[n - 1] -= eod_cost
    trades = Trades(k, t_entry, t_exit, t_signal, t_eprice, t_xprice, t_size, t_pnl, t_ret, t_comm, t_atr, t_reason,
                    t_side, t_bet)
    return SimOut(trades, equity, position, n_rejected, eod_cost)


@njit_cached
def headline_nb(run, clock):
    """compute_stats' headline numbers of one :class:`SimOut` (SWEEP_STATS; NaN where compute_stats gives None)."""
    n_trades = run.trades.n
    return stats_nb(run.equity, np.count_nonzero(run.position), run.trades.pnl[:n_trades], run.trades.ret[:n_trades],
                    run.n_rejected, clock)


@njit_cached
def stats_nb(equity, bars_in_market, pnl, ret, n_rejected, clock):
    """compute_stats' headline numbers (SWEEP_STATS; NaN where it gives None) of an equity curve, the number of its
    bars with a position, its closed trades' pnl and returns, and its refused entries."""
    n_trades = len(pnl)
    years, ppy, rf_bar = clock
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
        wins, gp, gl, rsum = trade_stats_nb(pnl, ret)  # as compute_stats counts them
        out[8] = wins / n_trades
        if gl > 0:
            out[9] = gp / gl
        out[10] = rsum / n_trades
    out[11] = bars_in_market / n
    out[12] = end
    out[13] = n_rejected
    return out


@njit_cached(parallel=True)
def sweep_nb(bars, signals, sizes, grid, account, clock, keep_equity):
    """Every configuration (one row of the :class:`RuleGrid`, with row ``size_row`` of ``sizes`` as its entry sizes)
    through
    `simulate_nb`, in parallel: a :class:`SweepOut` of their headline stats, with their equity curves if
    ``keep_equity``."""
    n_conf = len(grid.threshold)
    n = len(bars.close)
    out = np.empty((n_conf, len(SWEEP_STATS)))
    curves = np.empty((n_conf, n if keep_equity else 0))
    for c in numba.prange(n_conf):
        rules = Rules(grid.threshold[c], grid.pt[c], grid.sl[c], grid.horizon[c], grid.size_frac[c])
        mine = Signals(signals.prob, signals.atr, signals.side, sizes[grid.size_row[c]], signals.day)
        run = simulate_nb(bars, mine, rules, account, 0, n)
        out[c, :] = headline_nb(run, clock)
        if keep_equity:
            curves[c, :] = run.equity
    return SweepOut(out, curves)
