"""``BarrierBroker``: backtrader's BackBroker plus one native order for a triple-barrier exit.

A triple-barrier exit on the stock broker is three orders per trade (a stop, a limit OCO'd to it, and a
market order after cancelling both at the time limit; sells for a long, buys for a short), each with its
own submit, accept, cancel and notification clones: that order traffic, not the strategy, is most of a backtest's cost
when trades are frequent. :class:`TripleBarrierOrder` is one order carrying all three barriers (a sell
closing a long, or a buy closing a short), worked by the broker's own fill rules, in the order the stock OCO
pair is worked:

1. from bar ``time_bar`` on: a market order at the open (``_try_exec_market``): the time exit;
2. else the stop (``_try_exec_stop`` at ``stop``): a gap through it fills at the open;
3. else the take-profit (``_try_exec_limit`` at ``take``): a gap through it fills at the open.

The stop is tried first, as FIFO processing of the stock pair (stop submitted first) does when one
bar spans both barriers -- also when a long's bar opens above the take-profit and then trades down to
the stop (a short's: opens below it and trades up to the stop): both paths book that bar as
``stop_loss`` at the stop price. Fills, commission, slippage, cash
and positions all go through BackBroker's ``_execute``; ``tests/test_strategies.py`` checks
trade-for-trade parity with the stock three-order path. The equivalence needs whole fills at the open
or a barrier: ``exit_barriers`` refuses a broker with cheat-on-close (market fills at the order's
creation close) or a volume filler (partial fills). Every other order behaves exactly as on
``bt.brokers.BackBroker``.
"""

from __future__ import annotations

import backtrader as bt

from strategies.base import STOP_LOSS, TAKE_PROFIT, TIME_LIMIT


class TripleBarrierOrder:
    """The exit of a position: stop ``stop``, take-profit ``take``, market exit from bar ``time_bar``.

    A sell closing a long (stop below take) or a buy closing a short (stop above take): the concrete orders are
    :class:`SellBarriers` and :class:`BuyBarriers`, made by :meth:`BarrierBroker.exit_barriers`.
    ``exit_reason`` is set by the broker on the fill (``stop_loss``, ``take_profit``, ``time_limit``).
    ``time_bar`` is a 0-based bar position in the order's data feed.
    """

    def __init__(self):
        super().__init__()
        # set by BarrierBroker.exit_barriers, the only way to make one
        self.stop = self.take = float("nan")
        self.time_bar = -1
        self.exit_reason: str | None = None
        self.seen_len = 0  # bars of the data already worked: a data without a new bar is not worked again


class SellBarriers(TripleBarrierOrder, bt.order.SellOrder):
    """The triple-barrier exit of a long."""


class BuyBarriers(TripleBarrierOrder, bt.order.BuyOrder):
    """The triple-barrier exit of a short (backtrader's buy stop and buy limit, mirrored fills)."""


class ShortValue:
    """BackBroker's account value with a short marked right (shortcash off): the cash it ties up (its entry value /
    leverage) plus its gain. BackBroker takes ``abs()`` of a short's value instead, which flips its sign once the
    price passes twice the entry and overstates equity from there on. Everything else is BackBroker's."""

    def _get_value(self, datas=None, lever=False):
        if datas is not None or self.p.shortcash or self._fundhist:
            return super()._get_value(datas=datas, lever=lever)
        while self._cash_addition:
            c = self._cash_addition.popleft()
            self._fundshares += c / self._fundval
            self.cash += c
        pos_value = pos_value_unlever = unrealized = 0.0
        for data, position in self.positions.items():
            comminfo = self.getcommissioninfo(data)
            close = data.close[0]
            dunrealized = comminfo.profitandloss(position.size, position.price, close)
            # a long at its close, a short at its entry value: each unlevered, plus its gain
            dvalue = comminfo.getvalue(position, close) if position.size >= 0 else -position.size * position.price
            pos_value += dvalue
            unrealized += dunrealized
            if dvalue > 0:
                if position.size > 0:
                    dvalue -= dunrealized
                pos_value_unlever += dvalue / comminfo.get_leverage()
                pos_value_unlever += dunrealized
            else:
                pos_value_unlever += dvalue
        self._value = self.cash + pos_value_unlever
        self._fundval = self._value / self._fundshares
        self._valuemkt = pos_value_unlever
        self._valuelever = self.cash + pos_value
        self._valuemktlever = pos_value
        self._leverage = pos_value / (pos_value_unlever or 1.0)
        self._unrealized = unrealized
        return self._value if not lever else self._valuelever


class CashBackBroker(ShortValue, bt.brokers.BackBroker):
    """The stock BackBroker, its shorts valued right (:class:`ShortValue`): the reference for BarrierBroker's orders."""


class BarrierBroker(ShortValue, bt.brokers.BackBroker):
    """BackBroker that also works :class:`TripleBarrierOrder` (see :meth:`exit_barriers`), its shorts valued right
    (:class:`ShortValue`)."""

    def exit_barriers(self, owner, data, size: float, stop: float, take: float, time_bar: int):
        """Submit one order closing a position of ``size`` units (> 0 long: a sell, stop below take; < 0 short:
        a buy, stop above take) at the first barrier touched (see the module doc); ``time_bar`` is the 0-based
        bar of ``data`` whose open takes the time exit."""
        if not size or not (stop < take if size > 0 else stop > take):
            raise ValueError(f"a {'long' if size > 0 else 'short'} of {size} units cannot have stop {stop} and "
                             f"take-profit {take}: the stop lies {'below' if size > 0 else 'above'} the take-profit")
        if int(time_bar) != time_bar or time_bar < 0:
            raise ValueError(f"time_bar must be a bar position >= 0, got {time_bar}")
        if self.p.coc or self.p.filler is not None:
            raise ValueError(
                "TripleBarrierOrder fills like the stock stop/limit/market orders only without cheat-on-close "
                "(set_coc) and without a volume filler (set_filler): use bt.brokers.BackBroker for those"
            )
        cls = SellBarriers if size > 0 else BuyBarriers
        order = cls(owner=owner, data=data, size=abs(size), price=stop, exectype=bt.Order.Stop)
        order.stop, order.take, order.time_bar = float(stop), float(take), int(time_bar)
        order.seen_len = len(data)  # the barriers are worked from the data's next bar on
        self._ocoize(order, None)  # a group of its own, as BackBroker.sell does for an order without oco
        return self.submit(order)

    def _try_exec(self, order):
        if not isinstance(order, TripleBarrierOrder):
            return super()._try_exec(order)
        data = order.data
        if len(data) <= order.seen_len:
            # With several data feeds backtrader steps every feed's clock together and calls the broker
            # at each time of any feed; a feed without a bar at that time keeps its last bar, which was
            # worked already (or is the entry's fill bar): never fill on it again.
            return
        order.seen_len = len(data)
        popen, phigh, plow = _tick(data, "open"), _tick(data, "high"), _tick(data, "low")
        if len(data) - 1 >= order.time_bar:
            order.exit_reason = TIME_LIMIT
            self._try_exec_market(order, popen, phigh, plow)
        else:
            # the reason is set before the attempt: _execute notifies a clone of the order
            order.exit_reason = STOP_LOSS
            self._try_exec_stop(order, popen, phigh, plow, order.stop, _tick(data, "close"))
            if order.alive():
                order.exit_reason = TAKE_PROFIT
                self._try_exec_limit(order, popen, phigh, plow, order.take)
        if order.alive():
            order.exit_reason = None


    def settle(self, owner, data, price: float, withdraw=None):
        """Close the whole position of ``data`` now at ``price`` (an instrument whose data ends before
        the backtest: its end-of-data exit), through BackBroker's own execution arithmetic. ``withdraw``:
        the position's exit order, taken back silently wherever it waits (still submitted, or pending).
        Returns the order (already completed) so the owner can recognise its notification."""
        if withdraw is not None:
            for queue in (self.submitted, self.pending):
                if withdraw in queue:
                    queue.remove(withdraw)
            withdraw.cancel()
        position = self.getposition(data)
        cls = bt.order.SellOrder if position.size > 0 else bt.order.BuyOrder
        order = cls(owner=owner, data=data, size=abs(position.size), price=price, exectype=bt.Order.Market,
                    simulated=True)
        order.addcomminfo(self.getcommissioninfo(data))
        order.submit(self)
        order.accept(self)
        self._ocoize(order, None)  # a group of its own, as every order BackBroker submits
        self._execute(order, ago=0, price=price)
        self._get_value()  # the broker's value now reflects the exit
        return order


def _tick(data, name: str) -> float:
    """The bar's price as BackBroker reads it: the feed's ``tick_`` value, else the line's [0]."""
    value = getattr(data, "tick_" + name, None)
    return getattr(data.lines, name)[0] if value is None else value
