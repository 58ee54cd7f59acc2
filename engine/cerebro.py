"""The one backtrader set-up both backtrader runners share (one instrument and portfolios): cerebro, feeds,
broker, costs, and a timed run.

Cheat-on-open, so strategies size an entry decided at close[t] at the open of t+1, its fill price; market
orders still fill at that open. Costs: ``commission`` is a fraction of traded value per side (``COMM_PERC``,
percabs); ``slippage`` is ``set_slippage_perc``: buys fill higher and sells lower, capped at the bar's
high/low, also on fills at the open (market orders, gaps through barriers); ``borrow`` is backtrader's
``interest`` on shorts (per calendar day, on the position's entry value), booked with the exit's commission.
``RunConfig.margin`` is backtrader's leverage (1 / margin) on every position.
"""

from __future__ import annotations

import time

import backtrader as bt

import datafeeds
from engine.config import RunConfig
from labeling.rules import Costs


def build_cerebro(feeds: dict, broker, run: RunConfig, costs: Costs) -> bt.Cerebro:
    """A Cerebro with ``broker`` holding ``run.cash`` at ``costs`` and ``run.margin``, and one feed per entry of
    ``feeds`` (name -> (period frame, {line: values}), in order; the name is the feed's ``_name``)."""
    cerebro = bt.Cerebro(stdstats=False, preload=True, runonce=True, optreturn=False, cheat_on_open=True)
    cerebro.broker = broker
    for name, (period, lines) in feeds.items():
        cerebro.adddata(datafeeds.to_backtrader(period, name=name, **lines), name=name)
    cerebro.broker.set_coo(True)
    cerebro.broker.setcash(run.cash)
    # shortcash off: a short ties up cash like a long (its value / leverage) instead of adding its proceeds, so
    # the broker's own cash check enforces the margin on both sides
    cerebro.broker.set_shortcash(False)
    cerebro.broker.setcommission(commission=costs.commission, commtype=bt.CommInfoBase.COMM_PERC,
                                 percabs=True, stocklike=True, leverage=run.leverage, interest=costs.borrow)
    if costs.slippage:
        cerebro.broker.set_slippage_perc(costs.slippage, slip_open=True, slip_limit=True, slip_match=True,
                                         slip_out=False)
    return cerebro


def run_strategy(cerebro: bt.Cerebro, strategy: type, params: dict):
    """Run ``strategy`` with ``params`` on ``cerebro``: (the strategy instance, seconds of cerebro.run)."""
    cerebro.addstrategy(strategy, **params)
    t0 = time.perf_counter()
    strat = cerebro.run()[0]
    return strat, time.perf_counter() - t0
