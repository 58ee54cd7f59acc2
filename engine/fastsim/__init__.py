"""Numba simulator of ``strategies.TransformerAgentStrategy``: the backtrader run's trades and equity, fast.

Parity with the backtrader path (``engine.run_backtest(engine="backtrader")``) is the contract, bar by bar
(a long's side is written; a short's is its mirror, below):
- bar i, before the broker: an entry decided at close[i-1] is sized on open[i] slipped up (uncapped),
  ``units = size_frac * equity[i-1] * size[i-1] / (price / leverage + commission * price) * (1 - 1e-9)``
  (cheat-on-open; ``size`` the entry's size multiple, 1 for fixed sizing; leverage = 1 / margin);
- broker: a short's borrow for the calendar days since the last bar is charged first; the market buy fills at
  ``open * (1 + slippage)`` capped at the high (a margin check at the unslipped open comes first); a pending
  time exit sells at ``open * (1 - slippage)`` floored at the low; from the bar after the fill the OCO pair is
  worked stop first: stop gap ``open <= stop`` fills at the open slipped down (floor low), ``low <= stop`` at
  ``stop * (1 - slippage)`` (floor low), limit gap ``open >= limit`` at the open slipped down (floored at the
  *limit*), ``high >= limit`` at the limit;
- the strategy at close[i]: in a trade, order the time exit once ``i - entry_bar + 1 >= horizon``;
  flat, enter on the bar's side when ``signal >= threshold``, ``atr > 0`` and the side and size are not 0;
  equity is cash + the position's value (``strategies.broker.ShortValue``).
- after the last bar an open position leaves at ``close * (1 - slippage)`` floored at the low, net of
  commission (``end_of_data``); the last equity value is net of that exit's costs.
A short is sized at the unslipped open, sells at the open slipped down (floored at the low), and its exits are
buys: stop gap ``open >= stop`` and ``high >= stop``, take-profit gap ``open <= limit`` (capped at the limit and
the high) and ``low <= limit``, slipped up and capped at the high; its end-of-data exit buys at the close slipped
up, capped at the high; its borrow is booked with the exit's commission.
Speed: benchmarks/bench_fastsim.py, orders of magnitude faster than backtrader (measurements: docs/DECISIONS.md).
Arithmetic follows backtrader's own order of float operations (cash, commission, ``order.executed.price
= units * price / units``), so results agree to rounding (tests: rtol 1e-9, in practice bit-equal).
With ``horizon=1`` the time exit is ordered at the fill bar's close, so neither engine works the
barriers: the position leaves at the next open.

Portfolios (``simulate_portfolio``, behind ``engine.run_portfolio(run=RunConfig(engine="fast"))``):
``portfolio_nb`` runs
``strategies.PortfolioAgentStrategy`` on BarrierBroker over (times x instruments) arrays with NaN where an
instrument has no bar, including backtrader's cumulative cash check of each cycle's new orders and its
first-in first-out order processing across instruments; tests/test_portfolio.py holds it to the
backtrader run trade for trade (equity to 1e-9 relative; bit-equal in practice).

Layout: the numba kernels (``kernels``: one instrument, the sweep; ``portfolio_kernel``) are pure functions over
numpy arrays with NamedTuples in and out; ``inputs`` makes what they read from pandas; ``single``, ``portfolio``
and ``grid`` are the thin pandas-facing wrappers that validate the inputs and assemble
:class:`engine.results.BacktestResult` and friends.
"""

from engine.fastsim.grid import SWEEP_PARAMS, sweep
from engine.fastsim.kernels import SWEEP_STATS
from engine.fastsim.portfolio import simulate_portfolio
from engine.fastsim.single import buy_and_hold_equity, simulate

__all__ = ["SWEEP_PARAMS", "SWEEP_STATS", "buy_and_hold_equity", "simulate", "simulate_portfolio", "sweep"]
