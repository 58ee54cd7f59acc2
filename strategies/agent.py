"""Triple-barrier trading of an agent's probability: one position at a time, long or short.

Conventions (pinned by tests/test_strategies.py; they mirror the labels as closely as backtrader allows):
- Decision at bar t's close: enter when flat (no position, no live order) and ``prob[t] >= threshold``
  and ``ATR[t]`` is finite and > 0, on the bar's side (the feed's ``side`` line: +1 long, -1 short, 0 no bet;
  without one, long) and at the bar's size (the ``size`` line, a multiple of the usual notional,
  ``labeling.entry_sizes``; 0 = no bet). The market entry fills at bar t+1's open (bar ``f``).
- Barriers come from the *executed* entry price: take-profit ``entry + pt * ATR[t]`` (sell limit) and
  stop ``entry - sl * ATR[t]`` (sell stop), one OCO pair submitted when the entry fills; a short's are
  mirrored: take-profit ``entry - pt * ATR[t]`` (buy limit), stop ``entry + sl * ATR[t]`` (buy stop). backtrader
  evaluates them from bar f+1 on, so the fill bar's own high/low is never checked for a barrier
  (the labels watch bars t+1..t+horizon from ``close[t]``; the strategy watches t+2..t+horizon,
  i.e. f+1..f+horizon-1, from the fill price).
- Fills: a gap through a barrier fills at the open (a long's stop: open <= stop; limit: open >= take-profit;
  a short's mirrored); if one bar's range spans both barriers the stop is assumed first (it is submitted first and the
  broker works pending orders first-in first-out; the OCO limit is then cancelled).
- Time exit: at the close of the ``horizon``-th bar held (the fill bar counts as 1) the barriers are
  cancelled and a market order fills at the next open, i.e. ``bars_held == horizon``.
- Orders: on ``strategies.BarrierBroker`` (what ``engine.run_backtest`` uses) the stop, the take-profit
  and the time exit are one ``TripleBarrierOrder`` worked by the same fill rules in the same order; on
  the stock ``BackBroker`` they are the three orders above. Tests hold the two to identical trades.
- End of data: an open position is closed synthetically at the last bar's close (slipped against us,
  within the bar's range) net of the broker's commission, with exit_reason ``end_of_data``;
  backtrader cannot fill an order after the last bar. ``eod_cost`` holds the equity adjustment.
- Sizing is notional (a cash amount, fractional units): the decision at bar t's close commits
  ``size_frac * equity[t] * size[t]``; the units are that amount / (fill price / leverage + commission
  per unit; leverage = 1 / ``RunConfig.margin``), computed in ``next_open`` of bar t+1 where the open --
  the fill price -- is known (backtrader
  cheat-on-open: ``Cerebro(cheat_on_open=True)`` and ``broker.set_coo(True)``, which
  ``engine.run_backtest`` sets). Sizing units from close[t] instead would make backtrader reject
  (Margin) every entry whose open gaps up past the cash kept spare, a bias against gap-up entries
  (measurements: docs/DECISIONS.md).
"""

from __future__ import annotations

import backtrader as bt
import pandas as pd

from strategies.base import STOP_LOSS, TAKE_PROFIT, TIME_LIMIT, TradeLogStrategy, barrier_prices, barrier_rules
from strategies.broker import BarrierBroker


class TransformerAgentStrategy(TradeLogStrategy):
    """Triple-barrier trades on an agent's probability (line ``signal`` or a live agent), long or short.

    The feed needs lines ``signal`` (probability, NaN = none; ignored when ``live``) and ``atr``; lines ``side``
    (+1/-1/0) and ``size`` (entry size multiple) are read where present.
    With ``live=True`` the ``agent`` (``.reset()``, ``.update(bar) -> float``) is called exactly once per
    bar with ``{'datetime','open','high','low','close','volume'}``; ``agent_history`` (a DataFrame of
    the bars before the backtest) is streamed into it after ``reset()`` so warm-up matches batch mode.
    """

    reads_signal = True
    params = (
        ("rules", None),  # labeling.BarrierRules: threshold, barriers and size; None = BarrierRules()
        ("live", False),  # call agent.update per bar instead of reading the signal line
        ("agent", None),
        ("agent_history", None),
    )

    def __init__(self):
        self.rules = barrier_rules(self.p.rules)
        super().__init__()
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
        self._side_line = getattr(self.data.lines, "side", None)
        self._size_line = getattr(self.data.lines, "bet_size", None)
        self._threshold = self.rules.threshold
        self._horizon = self.rules.horizon

    def _entry_fraction(self) -> float:
        if self.p.size_frac is not None:
            raise ValueError("TransformerAgentStrategy takes its size in rules=BarrierRules(size_frac=...), "
                             "not size_frac=")
        return self.rules.entry_fraction

    def start(self):
        super().start()
        # One native triple-barrier order per trade where the broker has it, else the stock orders.
        self._native = isinstance(self.broker, BarrierBroker)
        if self.p.live:
            self.p.agent.reset()
            history = self.p.agent_history
            if history is not None:
                for ts, row in zip(history.index, history.itertuples(index=False)):
                    self.p.agent.update(_bar_dict(ts, row.open, row.high, row.low, row.close, row.volume))

    def on_bar(self):
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

        if self._open is not None:  # in a trade: on the stock broker the time barrier is ours to check
            if not self._native and self._bar() - self._open["entry_bar"] + 1 >= self._horizon:
                self._exit_market(TIME_LIMIT)
            return
        # Cheapest test first; NaN compares False, so no-signal bars stop here.
        if prob >= self._threshold and self._is_flat():
            side = 1 if self._side_line is None else int(self._side_line[0])
            scale = 1.0 if self._size_line is None else float(self._size_line[0])
            atr = float(self._atr_line[0])
            if side and scale > 0.0 and atr > 0:
                self._enter(side=side, scale=scale, atr=atr)

    def _on_entry_filled(self, order):
        entry, atr, size = order.executed.price, self._open["atr"], order.executed.size
        stop_price, take_price = barrier_prices(self.rules, entry, atr, size)
        if self._native:
            # time exit at the open of bar entry_bar + horizon: the same fill as a market order
            # placed at the close before it
            self._submit_exit(self.broker.exit_barriers(
                self, self.data, size, stop_price, take_price, time_bar=self._open["entry_bar"] + self._horizon
            ))
            return
        if self._horizon <= 1:
            # The time exit is ordered at this very bar's close and fills at the next open, before a
            # barrier could ever be checked; submitting them anyway would leave orders backtrader
            # cannot cancel yet (still Submitted), which later fill against no position.
            return
        # Stop first: FIFO processing makes it win when one bar spans both barriers.
        close = self.sell if size > 0 else self.buy
        stop = close(exectype=bt.Order.Stop, price=stop_price, size=abs(size))
        self._submit_exit(stop, STOP_LOSS)
        take = close(exectype=bt.Order.Limit, price=take_price, size=abs(size), oco=stop)
        self._submit_exit(take, TAKE_PROFIT)


def _bar_dict(ts, o, h, lo, c, v) -> dict:
    return {"datetime": pd.Timestamp(ts), "open": float(o), "high": float(h), "low": float(lo),
            "close": float(c), "volume": float(v)}
