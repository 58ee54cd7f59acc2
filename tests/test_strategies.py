"""Hand-made price paths whose triple-barrier outcome is known, plus live==batch and the baselines."""

import math

import backtrader as bt
import numpy as np
import pandas as pd
import pytest

import datafeeds
from engine import BarrierRules, Costs, RunConfig, run_backtest
from strategies import (
    STRATEGIES, BarrierBroker, BuyAndHold, SmaCross, TransformerAgentStrategy, TripleBarrierOrder, get_strategy,
)
from strategies.base import CASH_EPS

from conftest import flat_bars, signal_at

CASH = 100_000.0
COMM = 0.001
EPS = CASH_EPS  # rounding headroom in the notional sizing




@pytest.fixture(params=[True, False], ids=["native", "stock"])
def native(request):
    """Run a case on both brokers: one TripleBarrierOrder per exit, and the stock three orders."""
    return request.param


def _run(df, signal, *, native, atr=1.0, horizon=10, threshold=0.5):
    return run_backtest(df, "agent", signal=signal, atr=np.full(len(df), atr),
                        rules=BarrierRules(threshold=threshold, horizon=horizon), costs=Costs(commission=COMM),
                        run=RunConfig(cash=CASH, benchmark=False, native_barriers=native))


def _size(fill_open, value=CASH, slip=0.0):
    """Notional sizing: the whole equity buys units at the fill price plus commission."""
    return value / (fill_open * (1 + slip) * (1 + COMM)) * (1 - EPS)


def _pnl(size, entry, exit_):
    return size * (exit_ - entry) - COMM * size * (entry + exit_)


def _one_trade(res):
    assert len(res.trades) == 1, res.trades
    return res.trades.iloc[0]


def _check_trade(t, df, *, entry_bar, exit_bar, exit_price, reason):
    entry_price = df["open"].iloc[entry_bar]
    size = _size(entry_price)
    assert t["entry_time"] == df.index[entry_bar]
    assert t["exit_time"] == df.index[exit_bar]
    assert t["signal_time"] == df.index[entry_bar - 1]
    assert t["entry_price"] == pytest.approx(entry_price, rel=1e-12)
    assert t["exit_price"] == pytest.approx(exit_price, rel=1e-12)
    assert t["exit_reason"] == reason
    assert t["bars_held"] == exit_bar - entry_bar
    assert t["size"] == pytest.approx(size, rel=1e-12)
    assert t["pnl"] == pytest.approx(_pnl(size, entry_price, exit_price), rel=1e-9)
    assert t["ret"] == pytest.approx(t["pnl"] / (size * entry_price), rel=1e-12)


def _check_equity_closes(res):
    """Flat at the end: the final equity is the cash plus the sum of net trade P&L."""
    assert res.equity.iloc[-1] == pytest.approx(CASH + res.trades["pnl"].sum(), rel=1e-12)


# --- barriers ----------------------------------------------------------------------------------

def test_take_profit_inside_bar_fills_at_limit(native):
    # signal at bar 3 (close 100); entry at bar 4 open 100.0 -> TP 101.5, SL 98.5 (ATR 1)
    df = flat_bars(overrides={5: (100.5, 101.8, 100.3, 101.0)})
    res = _run(df, signal_at(20, 3), native=native)
    _check_trade(_one_trade(res), df, entry_bar=4, exit_bar=5, exit_price=101.5, reason="take_profit")
    _check_equity_closes(res)


def test_take_profit_gap_fills_at_open(native):
    df = flat_bars(overrides={5: (102.0, 102.5, 101.9, 102.2)})
    res = _run(df, signal_at(20, 3), native=native)
    _check_trade(_one_trade(res), df, entry_bar=4, exit_bar=5, exit_price=102.0, reason="take_profit")


def test_stop_gap_fills_at_open_below_stop(native):
    df = flat_bars(overrides={5: (98.0, 98.2, 97.0, 97.5)})
    res = _run(df, signal_at(20, 3), native=native)
    _check_trade(_one_trade(res), df, entry_bar=4, exit_bar=5, exit_price=98.0, reason="stop_loss")
    _check_equity_closes(res)


def test_stop_inside_bar_fills_at_stop_price(native):
    df = flat_bars(overrides={6: (100.0, 100.3, 98.0, 99.0)})
    res = _run(df, signal_at(20, 3), native=native)
    _check_trade(_one_trade(res), df, entry_bar=4, exit_bar=6, exit_price=98.5, reason="stop_loss")


@pytest.mark.parametrize("engine", ["native", "stock", "fast"])
@pytest.mark.parametrize("bar, exit_bar, exit_price, reason", [
    # entry at bar 4's open 100.0, ATR 1: take-profit 101.5, stop 98.5 (both exact in binary)
    ((100.0, 100.3, 98.5, 99.0), 6, 98.5, "stop_loss"),  # the low touches the stop exactly: out at the stop
    ((100.0, 101.5, 99.8, 101.0), 6, 101.5, "take_profit"),  # the high touches the take-profit exactly
    ((100.0, 100.3, 98.5 + 1e-9, 99.0), 14, 100.0, "time_limit"),  # a hair above the stop: held to the horizon
    ((100.0, 101.5 - 1e-9, 99.8, 101.0), 14, 100.0, "time_limit"),  # a hair below the take-profit
])
def test_a_bar_that_touches_a_barrier_exactly_exits_there_in_every_engine(engine, bar, exit_bar, exit_price, reason):
    df = flat_bars(overrides={6: bar})
    kw = dict(signal=signal_at(20, 3), atr=np.full(20, 1.0), costs=Costs(commission=COMM),
              rules=BarrierRules(horizon=10))
    run = RunConfig(cash=CASH, benchmark=False)
    if engine == "fast":
        res = run_backtest(df, "agent", run=run.replace(engine="fast"), **kw)
    else:
        res = run_backtest(df, "agent", run=run.replace(native_barriers=engine == "native"), **kw)
    _check_trade(_one_trade(res), df, entry_bar=4, exit_bar=exit_bar, exit_price=exit_price, reason=reason)


def test_both_barriers_in_one_bar_stop_first(native):
    df = flat_bars(overrides={5: (100.0, 102.0, 98.0, 101.0)})
    res = _run(df, signal_at(20, 3), native=native)
    _check_trade(_one_trade(res), df, entry_bar=4, exit_bar=5, exit_price=98.5, reason="stop_loss")


def test_barriers_use_executed_entry_price_and_signal_bar_atr(native):
    # entry opens at 100.6 (gap within the buffer): TP = 100.6 + 1.5 * 2 = 103.6 with ATR[t] = 2
    df = flat_bars(overrides={4: (100.6, 100.8, 100.4, 100.6), 5: (100.6, 103.7, 100.5, 103.0)})
    atr = np.full(20, 2.0)
    atr[4:] = 50.0  # later ATR values must not move the barriers
    res = run_backtest(df, "agent", signal=signal_at(20, 3), atr=atr, costs=Costs(commission=COMM),
                       rules=BarrierRules(horizon=10),
                       run=RunConfig(cash=CASH, benchmark=False, native_barriers=native))
    t = _one_trade(res)
    _check_trade(t, df, entry_bar=4, exit_bar=5, exit_price=103.6, reason="take_profit")
    assert t["atr"] == 2.0


def test_entry_bar_range_is_not_checked(native):
    # the fill bar 4 spans both barriers; nothing happens until bar 6 touches the TP
    df = flat_bars(overrides={4: (100.0, 105.0, 95.0, 100.0), 6: (100.0, 101.6, 99.9, 101.0)})
    res = _run(df, signal_at(20, 3), native=native)
    _check_trade(_one_trade(res), df, entry_bar=4, exit_bar=6, exit_price=101.5, reason="take_profit")


def test_time_exit_after_horizon_bars_at_next_open(native):
    # horizon 5: barriers watched on bars 5..8, time exit ordered at bar 8's close, filled at bar 9's open;
    # bar 9 spans both barriers but the children were cancelled at bar 8.
    df = flat_bars(overrides={9: (100.3, 110.0, 90.0, 100.0)})
    res = _run(df, signal_at(20, 3), horizon=5, native=native)
    _check_trade(_one_trade(res), df, entry_bar=4, exit_bar=9, exit_price=100.3, reason="time_limit")
    _check_equity_closes(res)


def test_barrier_on_last_bar_of_horizon_still_counts(native):
    df = flat_bars(overrides={8: (100.0, 101.6, 99.9, 101.0)})
    res = _run(df, signal_at(20, 3), horizon=5, native=native)
    _check_trade(_one_trade(res), df, entry_bar=4, exit_bar=8, exit_price=101.5, reason="take_profit")


def test_end_of_data_exit_at_last_close_with_commission(native):
    df = flat_bars(overrides={19: (100.0, 100.4, 99.9, 100.3)})
    res = _run(df, signal_at(20, 16), horizon=10, native=native)
    _check_trade(_one_trade(res), df, entry_bar=17, exit_bar=19, exit_price=100.3, reason="end_of_data")
    _check_equity_closes(res)
    assert res.position.iloc[-1] > 0  # the synthetic exit happens after the last bar's close


def test_reentry_on_the_exit_bar_and_no_entry_while_in_a_trade(native):
    # signals on 3 (taken), 4 and 5 (in a trade: ignored), exit on bar 5, signal 5 -> entry at bar 6
    later = {i: (97.5, 97.7, 97.3, 97.5) for i in range(6, 12)}
    df = flat_bars(overrides={5: (98.0, 98.2, 97.0, 97.5), **later}, n=12)
    res = _run(df, signal_at(12, [3, 4, 5]), horizon=3, native=native)
    assert list(res.trades["entry_bar"]) == [4, 6]
    assert list(res.trades["exit_reason"]) == ["stop_loss", "time_limit"]
    assert res.trades["exit_bar"].iloc[1] == 9
    value_after_first = CASH + res.trades["pnl"].iloc[0]
    assert res.trades["size"].iloc[1] == pytest.approx(_size(97.5, value_after_first), rel=1e-12)
    assert res.trades["size"].iloc[0] == pytest.approx(_size(100.0), rel=1e-12)
    _check_equity_closes(res)


def test_no_entry_below_threshold_on_nan_signal_or_nan_atr(native):
    df = flat_bars()
    sig = signal_at(20, [3], p=0.59)
    sig[5] = np.nan
    atr = np.full(20, 1.0)
    atr[8] = np.nan
    sig[8] = 0.99
    res = run_backtest(df, "agent", signal=sig, atr=atr, costs=Costs(commission=COMM),
                       run=RunConfig(cash=CASH, benchmark=False), rules=BarrierRules(threshold=0.6))
    assert res.trades.empty
    assert (res.equity == CASH).all()
    res = _run(df, signal_at(20, 3, p=0.6), threshold=0.6, native=native)  # >= threshold enters
    assert len(res.trades) == 1


def test_opening_gap_up_is_sized_at_the_open_not_rejected(native):
    # a 3% gap up between the decision (close 100) and the fill: the notional buys fewer units
    df = flat_bars(n=12, overrides={i: (103.0, 103.2, 102.8, 103.0) for i in range(4, 12)})
    res = _run(df, signal_at(12, 3), horizon=5, native=native)
    _check_trade(_one_trade(res), df, entry_bar=4, exit_bar=9, exit_price=103.0, reason="time_limit")
    assert res.stats["rejected_entries"] == 0
    # all equity in: cash after the fill is ~0 (EPS headroom), value moves with the position
    assert res.equity.iloc[4] == pytest.approx(CASH - COMM * _size(103.0) * 103.0, rel=1e-12)


def test_strategy_refuses_to_run_without_cheat_on_open():
    import backtrader as bt
    cerebro = bt.Cerebro(stdstats=False)
    df = flat_bars()
    cerebro.adddata(datafeeds.to_backtrader(df, signal=signal_at(20, 3), atr=np.ones(20)))
    cerebro.addstrategy(TransformerAgentStrategy)
    with pytest.raises(RuntimeError, match="cheat_on_open"):
        cerebro.run()


def test_horizon_one_exits_at_the_next_open_whatever_the_range(native):
    # the fill bar counts as bar 1: the time exit fills at bar 5's open though bar 5 spans both barriers
    df = flat_bars(overrides={5: (100.1, 110.0, 90.0, 100.0)})
    res = _run(df, signal_at(20, 3), horizon=1, native=native)
    _check_trade(_one_trade(res), df, entry_bar=4, exit_bar=5, exit_price=100.1, reason="time_limit")
    _check_equity_closes(res)


def test_slippage_moves_fills_and_sizing(native):
    slip = 0.001
    df = flat_bars(overrides={9: (100.3, 100.5, 100.1, 100.3)})
    res = run_backtest(df, "agent", signal=signal_at(20, 3), atr=np.ones(20),
                       costs=Costs(commission=COMM, slippage=slip), rules=BarrierRules(horizon=5),
                       run=RunConfig(cash=CASH, benchmark=False, native_barriers=native))
    t = _one_trade(res)
    entry, exit_ = 100.0 * (1 + slip), 100.3 * (1 - slip)
    size = _size(100.0, slip=slip)
    assert t["entry_price"] == pytest.approx(entry, rel=1e-12)
    assert t["exit_price"] == pytest.approx(exit_, rel=1e-12)
    assert t["pnl"] == pytest.approx(_pnl(size, entry, exit_), rel=1e-9)


@pytest.mark.parametrize("slippage", [0.0, 0.0005])
def test_native_barrier_order_trades_exactly_as_the_stock_three_orders(slippage, monkeypatch):
    # Real bars, a busy momentum rule, short and long horizons: every fill price, size, reason and
    # equity value is the same on BarrierBroker as on backtrader's own BackBroker.
    submitted = []
    exit_barriers = BarrierBroker.exit_barriers

    def spy(self, *args, **kwargs):
        order = exit_barriers(self, *args, **kwargs)
        submitted.append(order)
        return order

    monkeypatch.setattr(BarrierBroker, "exit_barriers", spy)
    df = datafeeds.load_ohlcv("nasdaq", start="2012-01-01", end="2016-12-31")
    for horizon, pt, sl in [(1, 1.5, 1.5), (3, 0.5, 0.5), (20, 1.5, 1.0)]:
        kw = dict(signal=_momentum_batch(df), costs=Costs(commission=COMM, slippage=slippage),
                  rules=BarrierRules(threshold=0.7, horizon=horizon, pt=pt, sl=sl))
        submitted.clear()
        native = run_backtest(df, "agent", run=RunConfig(benchmark=False), **kw)
        # the native path really ran: one TripleBarrierOrder per trade
        assert len(submitted) == len(native.trades) and all(isinstance(o, TripleBarrierOrder) for o in submitted)
        stock = run_backtest(df, "agent", run=RunConfig(benchmark=False, native_barriers=False), **kw)
        assert native.config["broker"] == "BarrierBroker" and stock.config["broker"] == "CashBackBroker"
        assert len(native.trades) > 100
        if horizon > 1:
            assert {"take_profit", "stop_loss", "time_limit"} <= set(native.trades["exit_reason"])
        pd.testing.assert_frame_equal(native.trades, stock.trades, check_exact=True)
        pd.testing.assert_series_equal(native.equity, stock.equity, check_exact=True)
        pd.testing.assert_series_equal(native.position, stock.position, check_exact=True)


def test_triple_barrier_order_refuses_what_it_cannot_fill_like_the_stock_orders():
    with pytest.raises(ValueError, match="stop lies below the take-profit"):
        BarrierBroker().exit_barriers(None, None, 1.0, stop=101.0, take=99.0, time_bar=5)
    with pytest.raises(ValueError, match="stop lies above the take-profit"):
        BarrierBroker().exit_barriers(None, None, -1.0, stop=99.0, take=101.0, time_bar=5)
    with pytest.raises(ValueError, match="time_bar"):
        BarrierBroker().exit_barriers(None, None, 1.0, stop=99.0, take=101.0, time_bar=-1)
    coc = BarrierBroker()
    coc.set_coc(True)  # market fills at the creation bar's close: not the stock time exit's fill
    with pytest.raises(ValueError, match="cheat-on-close"):
        coc.exit_barriers(None, None, 1.0, stop=99.0, take=101.0, time_bar=5)
    filler = BarrierBroker()
    filler.set_filler(bt.broker.fillers.FixedSize(size=10))  # partial fills
    with pytest.raises(ValueError, match="filler"):
        filler.exit_barriers(None, None, 1.0, stop=99.0, take=101.0, time_bar=5)


def test_exit_orders_need_a_reason():
    class NoReason(TransformerAgentStrategy):
        def _on_entry_filled(self, order):
            self._submit_exit(self.sell(size=order.executed.size))

    with pytest.raises(ValueError, match="needs a reason"):
        run_backtest(flat_bars(), NoReason, signal=signal_at(20, 3), atr=np.ones(20), run=RunConfig(benchmark=False))


# --- live mode ---------------------------------------------------------------------------------

class _MomentumAgent:
    """Streaming rule: 0.8 if close > close 5 bars ago else 0.2 (NaN until it has 6 closes)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.closes, self.calls = [], []

    def update(self, bar):
        self.calls.append(bar["datetime"])
        self.closes.append(bar["close"])
        if len(self.closes) < 6:
            return math.nan
        return 0.8 if self.closes[-1] > self.closes[-6] else 0.2


def _momentum_batch(df):
    c = df["close"]
    return pd.Series(np.where(c > c.shift(5), 0.8, 0.2), index=df.index).where(c.shift(5).notna())


def test_live_agent_trades_equal_batch_trades_with_warm_up_history():
    df = datafeeds.load_ohlcv("sp500", start="2016-01-01", end="2017-12-31")
    kw = dict(run=RunConfig(start="2016-06-01", benchmark=False), costs=Costs(commission=COMM),
              rules=BarrierRules(threshold=0.7, horizon=10))
    batch = run_backtest(df, "agent", signal=_momentum_batch(df), **kw)
    agent = _MomentumAgent()
    live = run_backtest(df, "agent", live=True, agent=agent, **kw)
    assert len(batch.trades) > 10
    pd.testing.assert_frame_equal(live.trades, batch.trades)
    pd.testing.assert_series_equal(live.equity, batch.equity)
    pd.testing.assert_series_equal(live.signal, batch.signal)
    # the agent saw every bar exactly once, in order, history first
    assert agent.calls == list(df.index)


def test_live_without_agent_is_an_error():
    with pytest.raises(ValueError, match="agent="):
        run_backtest(flat_bars(), "agent", live=True, run=RunConfig(benchmark=False))


# --- baselines ---------------------------------------------------------------------------------

def test_registry_and_unknown_name():
    assert STRATEGIES == {"agent": TransformerAgentStrategy, "buyhold": BuyAndHold, "smacross": SmaCross}
    assert get_strategy("smacross") is SmaCross
    with pytest.raises(ValueError, match="did you mean 'buyhold'"):
        get_strategy("buyhld")
    with pytest.raises(ValueError, match="unknown strategy"):
        run_backtest(flat_bars(), "nope")


def test_buy_and_hold_by_name():
    df = flat_bars(overrides={1: (100.5, 100.7, 100.3, 100.5), 19: (101.0, 103.2, 100.9, 103.0)})
    res = run_backtest(df, "buyhold", costs=Costs(commission=COMM), run=RunConfig(cash=CASH, benchmark=False))
    t = _one_trade(res)
    size = _size(100.5)
    assert (t["entry_bar"], t["exit_bar"], t["exit_reason"]) == (1, 19, "end_of_data")
    assert t["entry_price"] == 100.5 and t["exit_price"] == 103.0
    assert t["pnl"] == pytest.approx(_pnl(size, 100.5, 103.0), rel=1e-9)
    _check_equity_closes(res)


def test_smacross_enters_and_exits_on_crosses():
    close = np.r_[np.linspace(100, 90, 10), np.linspace(91, 110, 12), np.linspace(109, 95, 12)]
    open_ = np.r_[close[0], close[:-1]]  # opens at the previous close: no gap, entries always fill
    df = pd.DataFrame({"open": open_, "high": np.maximum(open_, close) + 0.5,
                       "low": np.minimum(open_, close) - 0.5, "close": close,
                       "volume": 1.0}, index=pd.bdate_range("2021-01-04", periods=len(close), name="datetime"))
    res = run_backtest(df, "smacross", costs=Costs(commission=COMM), run=RunConfig(cash=CASH, benchmark=False),
                       fast=3, slow=6)
    fast, slow = df["close"].rolling(3).mean(), df["close"].rolling(6).mean()
    above = (fast > slow).to_numpy()
    valid = slow.notna().to_numpy()
    ups = [i for i in range(1, len(df)) if valid[i - 1] and above[i] and not above[i - 1]]
    downs = [i for i in range(1, len(df)) if valid[i - 1] and not above[i] and above[i - 1]]
    assert len(res.trades) == 1
    t = res.trades.iloc[0]
    assert t["entry_bar"] == ups[0] + 1 and t["exit_bar"] == downs[0] + 1
    assert t["exit_reason"] == "signal_exit"
    assert t["exit_price"] == df["open"].iloc[downs[0] + 1]
