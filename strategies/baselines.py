"""Reference strategies to beat, and the name -> class registry used by the engine and the CLI."""

from __future__ import annotations

import difflib

import backtrader as bt

from strategies.agent import TransformerAgentStrategy
from strategies.base import SIGNAL_EXIT, TradeLogStrategy


class BuyAndHold(TradeLogStrategy):
    """Buy ``size_frac`` of equity at the second bar's open (order at the first close), hold to the end.

    The position leaves through the synthetic ``end_of_data`` exit at the last close.
    """

    def __init__(self):
        super().__init__()
        self._ordered = False

    def on_bar(self):
        if not self._ordered:
            self._ordered = True
            self._enter()


class SmaCross(TradeLogStrategy):
    """Long-only moving-average cross: enter when the fast SMA of close crosses above the slow one,
    leave (``signal_exit``, at the next open) when it crosses below."""

    params = (
        ("fast", 10),  # bars in the fast SMA
        ("slow", 30),  # bars in the slow SMA
    )

    def __init__(self):
        super().__init__()
        if not 1 <= self.p.fast < self.p.slow:
            raise ValueError(f"SmaCross needs 1 <= fast < slow, got fast={self.p.fast}, slow={self.p.slow}")
        fast = bt.ind.SMA(self.data.close, period=self.p.fast)
        slow = bt.ind.SMA(self.data.close, period=self.p.slow)
        self._cross = bt.ind.CrossOver(fast, slow)

    def on_bar(self):
        if self._open is not None:
            if self._cross[0] < 0 and not self._live:
                self._exit_market(SIGNAL_EXIT)
        elif self._is_flat() and self._cross[0] > 0:
            self._enter()


STRATEGIES = {"agent": TransformerAgentStrategy, "buyhold": BuyAndHold, "smacross": SmaCross}


def get_strategy(name: str) -> type[TradeLogStrategy]:
    """The strategy class registered under ``name`` (see ``STRATEGIES``)."""
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(STRATEGIES), n=1)
        hint = f" did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown strategy {name!r}:{hint} known strategies: {', '.join(sorted(STRATEGIES))}"
        ) from None
