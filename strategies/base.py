"""The base of our strategies: notional sizing at the fill price, order bookkeeping, a trade log.

Every strategy records one dict per closed trade (``TRADE_FIELDS``) with its ``exit_reason``, so
the engine, the fast simulator and the plots read all strategies the same way.
"""

from __future__ import annotations

import logging
import math

import backtrader as bt
import pandas as pd

from labeling.rules import BarrierRules, check_size_frac

log = logging.getLogger(__name__)

TAKE_PROFIT = "take_profit"
STOP_LOSS = "stop_loss"
TIME_LIMIT = "time_limit"
END_OF_DATA = "end_of_data"
SIGNAL_EXIT = "signal_exit"
EXIT_REASONS = (TAKE_PROFIT, STOP_LOSS, TIME_LIMIT, END_OF_DATA, SIGNAL_EXIT)

TRADE_FIELDS = (
    "entry_time", "entry_price", "exit_time", "exit_price", "size", "side", "bet_size", "pnl", "ret", "bars_held",
    "exit_reason", "signal_time", "atr", "entry_bar", "exit_bar", "commission",
)

CASH_EPS = 1e-9  # sizing headroom so float rounding never puts the fill's cost above the cash
_DEAD = (bt.Order.Completed, bt.Order.Canceled, bt.Order.Expired, bt.Order.Margin, bt.Order.Rejected)


def entry_units(broker, data, notional: float, side: int) -> float:
    """Units an entry of ``notional`` cash buys (``side`` +1) or sells short (-1) at this bar's open, sized so the
    broker's cash checks pass: at the open and at the slipped fill, each unit ties up price / leverage plus its
    commission. A buy is sized at the open slipped up (the broker caps the fill at the high), a short sale at the
    open itself (its fill slips down, which costs less)."""
    price = data.open[0] * (1.0 + broker.p.slip_perc) if side > 0 else data.open[0]
    comminfo = broker.getcommissioninfo(data)
    unit_cost = price / comminfo.get_leverage() + comminfo.getcommission(1.0, price)
    # backtrader rejects (Margin) a fill costing a hair more than the cash: keep CASH_EPS spare
    return notional / unit_cost * (1.0 - CASH_EPS)


def close_out_price(broker, data, size: float) -> float:
    """The synthetic end-of-data fill closing ``size`` units at the bar's close, slipped against us as backtrader
    slips (slip_match): a long sells at close * (1 - slip) floored at the low, a short buys at close * (1 + slip)
    capped at the high."""
    close, slip = data.close[0], broker.p.slip_perc
    if size > 0:
        return max(close * (1.0 - slip), data.low[0])
    return min(close * (1.0 + slip), data.high[0])


def barrier_prices(rules, entry: float, atr: float, size: float) -> tuple[float, float]:
    """(stop, take-profit) of a position of ``size`` units (< 0: short) entered at ``entry``, ATR ``atr``."""
    if size > 0:
        return entry - rules.sl * atr, entry + rules.pt * atr
    return entry + rules.sl * atr, entry - rules.pt * atr


def barrier_rules(rules) -> BarrierRules:
    """A strategy's ``rules`` parameter: a ``labeling.BarrierRules``, None meaning the defaults."""
    if rules is None:
        return BarrierRules()
    if not isinstance(rules, BarrierRules):
        raise TypeError(f"rules must be a labeling.BarrierRules, got {type(rules).__name__}")
    return rules


class TradeLogStrategy(bt.Strategy):
    """Base for our strategies: sizing, order bookkeeping, a trade log of dicts (``TRADE_FIELDS``) and
    the broker value and position at every bar's close (``equity_values``, ``position_sizes``; a short's is < 0).

    Subclasses put their decision in :meth:`on_bar` (not ``next``, which records the bar first), call
    :meth:`_enter` / :meth:`_exit_market`, and may override :meth:`_on_entry_filled`.
    ``entry_bar``/``exit_bar`` are 0-based bar positions in the feed; ``size`` counts units (> 0), ``side`` is +1
    (long) or -1 (short) and ``bet_size`` the entry's size as a multiple of the usual notional (1: fixed sizing);
    ``pnl = side * size * (exit_price - entry_price)`` less both commissions (and a short's borrow cost);
    ``ret = pnl / (size * entry_price)``.
    """

    params = (
        ("size_frac", None),  # fraction of equity committed per entry, (0, 1]: no leverage; None = 1
    )
    reads_signal = False  # True: the feed must carry a `signal` line (the engine attaches it)

    def __init__(self):
        self._size_frac = self._entry_fraction()
        self.trade_log: list[dict] = []
        self.n_rejected = 0
        self.eod_cost = 0.0  # value given up by the synthetic end_of_data exit (slippage + commission)
        self._live: dict[int, object] = {}  # ref -> live order of ours
        self._reason: dict[int, str] = {}  # ref -> exit reason of an exit order
        self._entry_ref: int | None = None
        self._intent: dict | None = None  # an entry decided at this close, ordered at the next open
        self._notional = 0.0  # cash amount of that entry: size_frac * equity at the decision
        self._pending_entry: dict = {}  # signal info of the entry order in flight
        self._open: dict | None = None  # the trade currently held
        # Recorded here rather than by an analyzer: backtrader dispatches several calls per bar to
        # each analyzer, which cost 16% of a bare pass.
        self.equity_values: list[float] = []  # broker value at each bar's close, warm-up included
        self.position_sizes: list[float] = []  # units held at each bar's close

    def _entry_fraction(self) -> float:
        """The fraction of equity each entry commits (checked once, by ``labeling.rules``)."""
        size = check_size_frac(self.p.size_frac)
        return 1.0 if size is None else size

    # -- helpers for subclasses ------------------------------------------------------------------
    def _bar(self) -> int:
        return len(self) - 1

    def _now(self) -> pd.Timestamp:
        return pd.Timestamp(self.data.datetime.datetime(0))

    def _is_flat(self) -> bool:
        return not self.position.size and not self._live and self._intent is None

    def _enter(self, side: int = 1, scale: float = 1.0, **info) -> None:
        """Decide at this close to buy (``side`` +1) or sell short (-1) at the next open, committing ``scale`` times
        the usual size; ``info`` (e.g. atr) goes to the trade record."""
        notional = self._size_frac * self.broker.getvalue() * scale
        if notional <= 0.0:  # nothing left to invest (costs have eaten the account)
            return
        self._intent = {"signal_time": self._now(), "atr": math.nan, **info, "side": side, "bet_size": scale}
        self._notional = notional

    def start(self):
        if not (self.cerebro.p.cheat_on_open and self.broker.p.coo):
            raise RuntimeError(
                f"{type(self).__name__} sizes entries at the fill (open) price: run it with "
                "bt.Cerebro(cheat_on_open=True) and cerebro.broker.set_coo(True), or via engine.run_backtest"
            )

    def next_open(self):
        # Bar t+1 before the broker fills: only open[0], the fill price, is read here.
        if self._intent is None:
            return
        size = entry_units(self.broker, self.data, self._notional, self._intent["side"])
        order = (self.buy if self._intent["side"] > 0 else self.sell)(size=size)
        if order is None:  # backtrader refuses a zero size: the account can no longer buy anything
            self._intent = None
            return
        self._live[order.ref] = order
        self._entry_ref = order.ref
        self._pending_entry, self._intent = self._intent, None

    # backtrader calls these instead of next_open while its minimum-period bookkeeping catches up
    prenext_open = nextstart_open = next_open

    def _exit_market(self, reason: str) -> None:
        """Cancel our live exit orders and sell the whole position at the next open."""
        for order in list(self._live.values()):
            self.cancel(order)  # immediate in the backtest broker (also cancels its OCO sibling)
        self._live.clear()
        order = self.close()
        if order is None:  # no units held (a zero-size fill): nothing to sell
            return
        self._live[order.ref] = order
        self._reason[order.ref] = reason

    def _submit_exit(self, order, reason: str | None = None) -> None:
        """Track an exit order; ``reason=None`` only for an order that reports its own ``exit_reason``
        on the fill (``strategies.TripleBarrierOrder``)."""
        if reason is None and not hasattr(order, "exit_reason"):
            raise ValueError(f"exit order {order.ref} needs a reason: one of {', '.join(EXIT_REASONS)}")
        self._live[order.ref] = order
        if reason is not None:
            self._reason[order.ref] = reason

    def _on_entry_filled(self, order) -> None:
        """Hook: the entry filled (``self._open`` is set); submit protective orders here."""

    def on_bar(self) -> None:
        """Hook: the decision at this bar's close. Read only ``[0]`` and negative indices: with
        preload, ``line[1]`` silently returns the next bar."""

    def _record_bar(self) -> None:
        self.equity_values.append(self.broker.getvalue())
        self.position_sizes.append(self.position.size)

    # -- backtrader's per-bar calls: record the bar, then decide (not during indicator warm-up) ------
    def prenext(self):
        self._record_bar()

    def next(self):
        self._record_bar()
        self.on_bar()

    # -- backtrader callbacks ----------------------------------------------------------------------
    def notify_order(self, order):
        if order.status not in _DEAD:
            return
        self._live.pop(order.ref, None)
        if order.ref == self._entry_ref:
            self._entry_ref = None
            if order.status == bt.Order.Completed:
                self._open = {
                    "entry_time": self._now(),
                    "entry_price": order.executed.price,
                    "size": abs(order.executed.size),
                    "entry_comm": order.executed.comm,
                    "entry_bar": self._bar(),
                    **self._pending_entry,
                }
                self._on_entry_filled(order)
            else:
                self.n_rejected += 1
                log.warning(
                    "entry order %s at %s (size %.6g, signal bar %s): not enough cash",
                    order.getstatusname(), self._now(),
                    order.created.size, self._pending_entry.get("signal_time"),
                )
            return
        reason = self._reason.pop(order.ref, None) or getattr(order, "exit_reason", None)
        if order.status == bt.Order.Completed:
            if reason is None:  # not one of our exits: the trade log would silently lose this fill
                log.error("order %s filled at %s without an exit reason", order.ref, self._now())
                return
            self._record_exit(order.executed.price, -order.executed.size, order.executed.comm, reason)
        elif order.status in (bt.Order.Margin, bt.Order.Rejected):
            log.error("exit order %s at %s (%s)", order.getstatusname(), self._now(), reason)

    def stop(self):
        if self._open is None or not self.position.size:
            return
        size = self.position.size
        close = self.data.close[0]
        price = close_out_price(self.broker, self.data, size)
        comm = self.broker.getcommissioninfo(self.data).getcommission(size, price)
        self.eod_cost = size * (close - price) + comm
        # the trade's costs include a short's borrow accrued since its entry (already out of the cash)
        self._record_exit(price, size, comm + self.broker.d_credit.get(self.data, 0.0), END_OF_DATA)

    def _record_exit(self, price: float, size: float, comm: float, reason: str) -> None:
        """Book the open trade's exit: ``size`` is the position closed (< 0 for a short), ``comm`` the exit's costs."""
        trade = self._open
        if trade is None:
            log.error("exit fill at %s with no open trade recorded", self._now())
            return
        entry_comm = trade.pop("entry_comm")
        pnl = size * (price - trade["entry_price"]) - entry_comm - comm
        trade.update(
            exit_time=self._now(),
            exit_price=price,
            pnl=pnl,
            ret=pnl / (trade["size"] * trade["entry_price"]),
            exit_bar=self._bar(),
            bars_held=self._bar() - trade["entry_bar"],
            exit_reason=reason,
            commission=entry_comm + comm,
        )
        self.trade_log.append({k: trade[k] for k in TRADE_FIELDS})
        self._open = None
