"""Triple-barrier trading of an agent's probability: long-only, one position at a time.

Conventions (pinned by tests/test_strategies.py; they mirror the labels as closely as backtrader allows):
- Decision at bar t's close: enter when flat (no position, no live order) and ``prob[t] >= threshold``
  and ``ATR[t]`` is finite and > 0. The market entry fills at bar t+1's open (bar ``f``).
- Barriers come from the *executed* entry price: take-profit ``entry + pt * ATR[t]`` (sell limit) and
  stop ``entry - sl * ATR[t]`` (sell stop), one OCO pair submitted when the entry fills. backtrader
  evaluates them from bar f+1 on, so the fill bar's own high/low is never checked for a barrier
  (the labels watch bars t+1..t+horizon from ``close[t]``; the strategy watches t+2..t+horizon,
  i.e. f+1..f+horizon-1, from the fill price).
- Fills: a gap through a barrier fills at the open (stop: open <= stop; limit: open >= take-profit);
  if one bar's range spans both barriers the stop is assumed first (it is submitted first and the
  broker works pending orders first-in first-out; the OCO limit is then cancelled).
- Time exit: at the close of the ``horizon``-th bar held (the fill bar counts as 1) the barriers are
  cancelled and a market sell fills at the next open, i.e. ``bars_held == horizon``.
- End of data: an open position is closed synthetically at the last bar's close (less slippage,
  floored at the bar's low) net of the broker's commission, with exit_reason ``end_of_data``;
  backtrader cannot fill an order after the last bar. ``eod_cost`` holds the equity adjustment.
- Sizing is notional (a fixed cash amount, fractional units, no leverage): the decision at bar t's
  close commits ``size_frac * equity[t]``; the units are that amount / (fill price + commission per
  unit), computed in ``next_open`` of bar t+1 where the open -- the fill price -- is known (backtrader
  cheat-on-open: ``Cerebro(cheat_on_open=True)`` and ``broker.set_coo(True)``, which
  ``engine.run_backtest`` sets). Sizing units from close[t] instead would make backtrader reject
  (Margin) every entry whose open gaps up past the cash kept spare: 30 of ~550 entries of a momentum
  rule on the nasdaq sample with 1% spare, a bias against gap-up entries.
"""

from __future__ import annotations

import logging
import math

import backtrader as bt
import pandas as pd

log = logging.getLogger(__name__)

TAKE_PROFIT = "take_profit"
STOP_LOSS = "stop_loss"
TIME_LIMIT = "time_limit"
END_OF_DATA = "end_of_data"
SIGNAL_EXIT = "signal_exit"
EXIT_REASONS = (TAKE_PROFIT, STOP_LOSS, TIME_LIMIT, END_OF_DATA, SIGNAL_EXIT)

TRADE_FIELDS = (
    "entry_time", "entry_price", "exit_time", "exit_price", "size", "pnl", "ret", "bars_held",
    "exit_reason", "signal_time", "atr", "entry_bar", "exit_bar", "commission",
)

_CASH_EPS = 1e-9  # sizing headroom so float rounding never puts the fill's cost above the cash
_DEAD = (bt.Order.Completed, bt.Order.Canceled, bt.Order.Expired, bt.Order.Margin, bt.Order.Rejected)


class TradeLogStrategy(bt.Strategy):
    """Base for our strategies: sizing, order bookkeeping and a trade log of dicts (``TRADE_FIELDS``).

    Subclasses call :meth:`_enter` / :meth:`_exit_market` and may override :meth:`_on_entry_filled`.
    ``entry_bar``/``exit_bar`` are 0-based bar positions in the feed; ``ret = pnl / (size * entry_price)``.
    """

    params = (
        ("size_frac", 1.0),  # fraction of equity committed per entry, (0, 1]: no leverage
    )
    reads_signal = False  # True: the feed must carry a `signal` line (the engine attaches it)

    def __init__(self):
        if not 0.0 < self.p.size_frac <= 1.0:
            raise ValueError(f"size_frac must be in (0, 1] (no leverage), got {self.p.size_frac}")
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

    # -- helpers for subclasses ------------------------------------------------------------------
    def _bar(self) -> int:
        return len(self) - 1

    def _now(self) -> pd.Timestamp:
        return pd.Timestamp(self.data.datetime.datetime(0))

    def _is_flat(self) -> bool:
        return not self.position.size and not self._live and self._intent is None

    def _enter(self, **info) -> None:
        """Decide at this close to buy at the next open; ``info`` (e.g. atr) goes to the trade record."""
        notional = self.p.size_frac * self.broker.getvalue()
        if notional <= 0.0:  # nothing left to invest (costs have eaten the account)
            return
        self._intent = {"signal_time": self._now(), "atr": math.nan, **info}
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
        price = self.data.open[0] * (1.0 + self.broker.p.slip_perc)  # the broker caps it at the high
        unit_cost = price + self.broker.getcommissioninfo(self.data).getcommission(1.0, price)
        # backtrader rejects (Margin) a fill costing a hair more than the cash: keep _CASH_EPS spare
        order = self.buy(size=self._notional / unit_cost * (1.0 - _CASH_EPS))
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

    def _submit_exit(self, order, reason: str) -> None:
        self._live[order.ref] = order
        self._reason[order.ref] = reason

    def _on_entry_filled(self, order) -> None:
        """Hook: the entry filled (``self._open`` is set); submit protective orders here."""

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
                    "size": order.executed.size,
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
        reason = self._reason.pop(order.ref, None)
        if order.status == bt.Order.Completed and reason is not None:
            self._record_exit(order.executed.price, -order.executed.size, order.executed.comm, reason)
        elif order.status in (bt.Order.Margin, bt.Order.Rejected):
            log.error("exit order %s at %s (%s)", order.getstatusname(), self._now(), reason)

    def stop(self):
        if self._open is None or not self.position.size:
            return
        size = self.position.size
        close = self.data.close[0]
        # backtrader's sell slippage: price * (1 - slip_perc), capped at the bar's low (slip_match).
        price = max(close * (1.0 - self.broker.p.slip_perc), self.data.low[0])
        comm = self.broker.getcommissioninfo(self.data).getcommission(size, price)
        self.eod_cost = size * (close - price) + comm
        self._record_exit(price, size, comm, END_OF_DATA)

    def _record_exit(self, price: float, size: float, comm: float, reason: str) -> None:
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


class TransformerAgentStrategy(TradeLogStrategy):
    """Long-only triple-barrier trades on an agent's probability (line ``signal`` or a live agent).

    The feed needs lines ``signal`` (probability, NaN = none; ignored when ``live``) and ``atr``.
    With ``live=True`` the ``agent`` (``.reset()``, ``.update(bar) -> float``) is called exactly once per
    bar with ``{'datetime','open','high','low','close','volume'}``; ``agent_history`` (a DataFrame of
    the bars before the backtest) is streamed into it after ``reset()`` so warm-up matches batch mode.
    """

    reads_signal = True
    params = (
        ("threshold", 0.5),  # enter when prob >= threshold
        ("pt", 1.5),  # take-profit distance in ATR[t]
        ("sl", 1.5),  # stop distance in ATR[t]
        ("horizon", 20),  # bars held before the time exit (fill bar counts as 1)
        ("live", False),  # call agent.update per bar instead of reading the signal line
        ("agent", None),
        ("agent_history", None),
    )

    def __init__(self):
        super().__init__()
        if self.p.pt <= 0 or self.p.sl <= 0:
            raise ValueError(f"pt and sl must be > 0 ATR multiples, got pt={self.p.pt}, sl={self.p.sl}")
        if int(self.p.horizon) != self.p.horizon or self.p.horizon < 1:
            raise ValueError(f"horizon must be an integer >= 1 bars, got {self.p.horizon}")
        if self.p.live and self.p.agent is None:
            raise ValueError("live=True needs agent= (an object with .reset() and .update(bar) -> float)")
        for line in ("atr",) + (() if self.p.live else ("signal",)):
            if not hasattr(self.data.lines, line):
                raise ValueError(
                    f"the data feed has no '{line}' line: build it with "
                    f"datafeeds.to_backtrader(df, {line}=...) or use engine.run_backtest"
                )
        self.probs: list[float] = []  # the probability used at each bar (batch or live)
        # Line buffers resolved once: ``line[0]`` is this bar's value, without the per-bar attribute
        # lookup through the feed's lines (a measurable share of a backtest's pure-Python overhead).
        self._atr_line = self.data.lines.atr
        self._signal_line = None if self.p.live else self.data.lines.signal
        self._threshold = self.p.threshold
        self._horizon = self.p.horizon

    def start(self):
        super().start()
        if self.p.live:
            self.p.agent.reset()
            history = self.p.agent_history
            if history is not None:
                for ts, row in zip(history.index, history.itertuples(index=False)):
                    self.p.agent.update(_bar_dict(ts, row.open, row.high, row.low, row.close, row.volume))

    def next(self):
        # Look-ahead guard: only [0] (this bar) or negative indices; with preload, [1] would
        # silently return the next bar's value.
        if self._signal_line is None:  # live
            d = self.data
            prob = float(self.p.agent.update(
                _bar_dict(self._now(), d.open[0], d.high[0], d.low[0], d.close[0], d.volume[0])
            ))
        else:
            prob = float(self._signal_line[0])
        self.probs.append(prob)

        if self._open is not None:  # in a trade: only the time barrier is ours to check
            if self._bar() - self._open["entry_bar"] + 1 >= self._horizon:
                self._exit_market(TIME_LIMIT)
            return
        # Cheapest test first; NaN compares False, so no-signal bars stop here.
        if prob >= self._threshold and self._is_flat():
            atr = float(self._atr_line[0])
            if atr > 0:
                self._enter(atr=atr)

    def _on_entry_filled(self, order):
        if self._horizon <= 1:
            # The time exit is ordered at this very bar's close and fills at the next open, before a
            # barrier could ever be checked; submitting them anyway would leave orders backtrader
            # cannot cancel yet (still Submitted), which later fill against no position.
            return
        entry, atr, size = order.executed.price, self._open["atr"], order.executed.size
        # Stop first: FIFO processing makes it win when one bar spans both barriers.
        stop = self.sell(exectype=bt.Order.Stop, price=entry - self.p.sl * atr, size=size)
        self._submit_exit(stop, STOP_LOSS)
        take = self.sell(exectype=bt.Order.Limit, price=entry + self.p.pt * atr, size=size, oco=stop)
        self._submit_exit(take, TAKE_PROFIT)


def _bar_dict(ts, o, h, lo, c, v) -> dict:
    return {"datetime": pd.Timestamp(ts), "open": float(o), "high": float(h), "low": float(lo),
            "close": float(c), "volume": float(v)}
