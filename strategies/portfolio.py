"""One agent trading several instruments with shared cash: ``TransformerAgentStrategy``'s conventions per
instrument, at most ``max_positions`` positions at once.

How backtrader's multi-data clock is used: ``engine.run_portfolio`` gives one data feed per instrument to
one Cerebro (preload, runonce, cheat-on-open). Cerebro steps through the union of the feeds' times;
at each time a feed with a bar there advances and a feed without one (a holiday, before its first or
after its last bar) keeps its last bar. So this strategy tells "a new bar of instrument k now" from its
length (``len(data) > length at the previous step``) and acts on an instrument only at its own bars:
- an entry decided at instrument k's close is ordered at k's *next* bar's open, however many other
  times pass in between (the order is sized there, on that open);
- its barriers are worked from k's next bar on, at k's bars only (``BarrierBroker`` skips a feed
  without a new bar), and its time exit counts k's own bars;
- equity is the broker value at every time: cash plus each position at its instrument's last close.
``prenext`` runs the same step, so an instrument trades from its first bar even while another has not
started yet (backtrader's default waits for every feed).

Allocation at each close: the instruments with a new bar, no position, no entry in flight and
``prob >= threshold`` (and ATR > 0, and a side and size where the feed has those lines) are candidates; the
free slots (``max_positions`` minus positions held and entries waiting) go to the highest probability, then
the symbol name; each entry (long or short, on its side) commits ``equity / max_positions`` (or
``size_frac * equity``) times its size multiple, at most the cash not yet committed (positions
that gained are worth more than the cash they left). A candidate without a free slot or free cash is
skipped and counted. A decision at an instrument's last bar is not taken (nothing could fill it).

End of data: an instrument whose data ends before the backtest's last time is closed out at its last bar's
close (slipped against us within the bar's range) through the broker (``BarrierBroker.settle``), with
exit_reason ``end_of_data``; at the backtest's last time the open positions are closed synthetically
as in the single-instrument strategy (``eod_cost``).
"""

from __future__ import annotations

import logging
import math

import backtrader as bt
import pandas as pd

from labeling.rules import check_max_positions
from strategies.base import (END_OF_DATA, TRADE_FIELDS, barrier_prices, barrier_rules, close_out_price,
                             entry_units)
from strategies.broker import BarrierBroker

log = logging.getLogger(__name__)

PORTFOLIO_TRADE_FIELDS = ("symbol", *TRADE_FIELDS)


class PortfolioAgentStrategy(bt.Strategy):
    """Triple-barrier trades, long or short, on each feed's ``signal`` line, sharing one broker's cash.

    Every feed needs lines ``signal`` and ``atr`` and a ``_name`` (the symbol); lines ``side`` and ``size`` are
    read where present (as in ``TransformerAgentStrategy``). ``n_bars``: the bars of
    each feed (to know its last one); ``n_times``: the times of the backtest (union of the feeds').
    """

    params = (
        ("rules", None),  # labeling.BarrierRules (size_frac None = 1 / max_positions); None = BarrierRules()
        ("max_positions", None),  # positions open (or entries in flight) at once (engine.run_portfolio sets it)
        ("n_bars", None),  # per feed, its number of bars
        ("n_times", None),  # number of times of the whole backtest
    )

    def __init__(self):
        p = self.p
        self.rules = barrier_rules(p.rules)
        check_max_positions(p.max_positions)
        n = len(self.datas)
        if p.n_bars is None or len(p.n_bars) != n or p.n_times is None:
            raise ValueError("n_bars (one count per feed) and n_times are required: use engine.run_portfolio")
        self.symbols = [d._name for d in self.datas]
        self.trade_log: list[dict] = []
        self.equity_values: list[float] = []
        self.position_sizes: list[list[float]] = []  # per time, units held per instrument
        self.probs: list[list[float]] = []  # per time, the probability read per instrument (NaN: no bar)
        self.skipped = [0] * n  # signals with no free slot
        self.rejected = [0] * n  # entries the broker refused (not enough cash)
        self.eod_cost = 0.0
        self._len = [0] * n  # each feed's length at the previous step
        self._intents: dict[int, dict] = {}  # instrument -> entry decided, ordered at its next open (in order)
        self._entry: dict[int, int] = {}  # order ref -> instrument of an entry in flight
        self._exit: dict[int, int] = {}  # order ref -> instrument of a live exit order
        self._exit_order: dict[int, object] = {}  # instrument -> its live exit order
        self._settled: set[int] = set()  # refs of end-of-data sales (recorded when made)
        self._pending: dict[int, dict] = {}  # instrument -> signal info of its entry in flight
        self._open: dict[int, dict] = {}  # instrument -> the trade held
        self._times = 0
        self._signal = [d.lines.signal for d in self.datas]
        self._atr = [d.lines.atr for d in self.datas]
        self._side = [getattr(d.lines, "side", None) for d in self.datas]
        self._size = [getattr(d.lines, "bet_size", None) for d in self.datas]

    def start(self):
        if not (self.cerebro.p.cheat_on_open and self.broker.p.coo):
            raise RuntimeError("PortfolioAgentStrategy sizes entries at the fill (open) price: run it via "
                               "engine.run_portfolio (cheat-on-open)")
        if not isinstance(self.broker, BarrierBroker):
            raise RuntimeError("PortfolioAgentStrategy needs strategies.BarrierBroker (its exits are "
                               "TripleBarrierOrders worked only at their instrument's bars)")

    # ---------------------------------------------------------------- before the broker: entries
    def next_open(self):
        for k in list(self._intents):  # in decision order
            d = self.datas[k]
            if len(d) <= self._len[k]:
                continue  # no bar of this instrument now: the entry waits for its next open
            intent = self._intents.pop(k)
            size = entry_units(self.broker, d, intent["notional"], intent["side"])
            order = (self.buy if intent["side"] > 0 else self.sell)(data=d, size=size)
            if order is None:
                continue
            self._entry[order.ref] = k
            self._pending[k] = intent

    prenext_open = nextstart_open = next_open

    # ---------------------------------------------------------------- the broker's reports
    def notify_order(self, order):
        if order.status not in (bt.Order.Completed, bt.Order.Canceled, bt.Order.Expired, bt.Order.Margin,
                                bt.Order.Rejected):
            return
        ref = order.ref
        if ref in self._settled:
            self._settled.discard(ref)
            return
        if ref in self._entry:
            k = self._entry.pop(ref)
            info = self._pending.pop(k)
            d = self.datas[k]
            if order.status != bt.Order.Completed:
                self.rejected[k] += 1
                log.warning("%s: entry order %s at %s: not enough cash", self.symbols[k], order.getstatusname(),
                            _time(d))
                return
            entry_bar = len(d) - 1
            self._open[k] = {"symbol": self.symbols[k], "entry_time": _time(d), "entry_price": order.executed.price,
                             "size": abs(order.executed.size), "side": info["side"], "bet_size": info["bet_size"],
                             "entry_comm": order.executed.comm,
                             "entry_bar": entry_bar, "signal_time": info["signal_time"], "atr": info["atr"]}
            size = order.executed.size
            stop, take = barrier_prices(self.rules, order.executed.price, info["atr"], size)
            exit_order = self.broker.exit_barriers(self, d, size, stop, take, time_bar=entry_bar + self.rules.horizon)
            self._exit[exit_order.ref] = k
            self._exit_order[k] = exit_order
            return
        k = self._exit.pop(ref, None)
        if k is None:
            return
        self._exit_order.pop(k, None)
        if order.status == bt.Order.Completed:
            self._record_exit(k, order.executed.price, -order.executed.size, order.executed.comm, order.exit_reason)
        else:
            log.error("%s: exit order %s at %s", self.symbols[k], order.getstatusname(), _time(self.datas[k]))

    # ---------------------------------------------------------------- at each close
    def next(self):
        self._times += 1
        last_time = self._times == self.p.n_times
        new = [len(d) > self._len[k] for k, d in enumerate(self.datas)]
        ending = [new[k] and len(d) == self.p.n_bars[k] for k, d in enumerate(self.datas)]
        if not last_time:
            for k in range(len(self.datas)):
                if ending[k] and k in self._open and self.getposition(self.datas[k]).size:
                    self._settle(k)
        value = self.broker.getvalue()
        self.equity_values.append(value)
        self.position_sizes.append([self.getposition(d).size for d in self.datas])
        self.probs.append([float(self._signal[k][0]) if new[k] else math.nan for k in range(len(self.datas))])

        if not last_time:
            self._decide(new, ending, value)
        else:
            self._close_all()
        for k, d in enumerate(self.datas):
            self._len[k] = len(d)

    prenext = nextstart = next

    def _decide(self, new, ending, value):
        busy = set(self._open) | set(self._intents) | set(self._pending.keys())
        candidates = []
        for k in range(len(self.datas)):
            if not new[k] or ending[k] or k in busy:
                continue
            prob = float(self._signal[k][0])
            if prob >= self.rules.threshold:  # NaN compares False
                side = 1 if self._side[k] is None else int(self._side[k][0])
                scale = 1.0 if self._size[k] is None else float(self._size[k][0])
                atr = float(self._atr[k][0])
                if side and scale > 0.0 and atr > 0:
                    candidates.append((-prob, self.symbols[k], k, atr, side, scale))
        if not candidates:
            return
        candidates.sort()
        free = int(self.p.max_positions) - len(busy)
        size_frac = self.rules.size_frac
        target = value / self.p.max_positions if size_frac is None else size_frac * value
        # cash not yet committed: entries waiting for their instrument's next bar hold theirs
        available = self.broker.getcash() - sum(i["notional"] for i in self._intents.values())
        for rank, (_, _, k, atr, side, scale) in enumerate(candidates):
            notional = min(target * scale, available)
            if rank >= free or not notional > 0.0:
                self.skipped[k] += 1
                continue
            available -= notional
            self._intents[k] = {"notional": notional, "signal_time": _time(self.datas[k]), "atr": atr, "side": side,
                                "bet_size": scale}

    def _settle(self, k):
        """End of this instrument's data before the backtest's end: close out at its last close through the broker
        (whose commission then includes a short's accrued borrow)."""
        d = self.datas[k]
        size = self.getposition(d).size
        price = close_out_price(self.broker, d, size)
        exit_order = self._exit_order.pop(k, None)
        if exit_order is not None:
            self._exit.pop(exit_order.ref, None)
        order = self.broker.settle(self, d, price, withdraw=exit_order)
        self._settled.add(order.ref)
        self._record_exit(k, order.executed.price, size, order.executed.comm, END_OF_DATA)

    def _close_all(self):
        """The backtest's last time: close every open position synthetically at its instrument's last close."""
        for k in sorted(self._open):
            d = self.datas[k]
            size = self.getposition(d).size
            if not size:
                continue
            close = d.close[0]
            price = close_out_price(self.broker, d, size)
            comm = self.broker.getcommissioninfo(d).getcommission(size, price)
            self.eod_cost += size * (close - price) + comm
            self._record_exit(k, price, size, comm + self.broker.d_credit.get(d, 0.0), END_OF_DATA)

    def _record_exit(self, k, price, size, comm, reason):
        trade = self._open.pop(k)
        d = self.datas[k]
        entry_comm = trade.pop("entry_comm")
        pnl = size * (price - trade["entry_price"]) - entry_comm - comm
        trade.update(exit_time=_time(d), exit_price=price, pnl=pnl, ret=pnl / (trade["size"] * trade["entry_price"]),
                     exit_bar=len(d) - 1, bars_held=len(d) - 1 - trade["entry_bar"], exit_reason=reason,
                     commission=entry_comm + comm)
        self.trade_log.append({f: trade[f] for f in PORTFOLIO_TRADE_FIELDS})


def _time(data) -> pd.Timestamp:
    return pd.Timestamp(data.datetime.datetime(0))
