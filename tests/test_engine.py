"""run_backtest on real data: causality under truncation, benchmark, slicing, invariants, plots, errors."""

import json
import os

import numpy as np
import pandas as pd
import pytest

import datafeeds
import labeling
from engine import BacktestResult, BarrierRules, RunConfig, plot_backtest, run_backtest

COMM = 0.0005


def _causal_signal(df):
    """A causal probability: logistic of the close's distance to its 20-bar mean."""
    c = df["close"]
    return 1.0 / (1.0 + np.exp(-(c / c.rolling(20).mean() - 1.0) * 100.0))


@pytest.fixture(scope="module")
def sp():
    return datafeeds.load_ohlcv("sp500", start="2013-01-01", end="2016-12-31")


@pytest.fixture(scope="module")
def agent_run(sp):
    return run_backtest(sp, "agent", signal=_causal_signal(sp), rules=BarrierRules(threshold=0.6),
                        run=RunConfig(start="2014-01-01"))


def test_truncated_data_gives_the_same_past(sp):
    # (a) causality: cutting the future off changes nothing before the cut
    cut = pd.Timestamp("2015-08-31")
    kw = dict(rules=BarrierRules(threshold=0.6, horizon=15), run=RunConfig(start="2014-01-01", benchmark=False))
    full = run_backtest(sp, "agent", signal=_causal_signal(sp), **kw)
    short_df = sp.loc[:cut]
    short = run_backtest(short_df, "agent", signal=_causal_signal(short_df), **kw)
    n = len(short.equity)
    pd.testing.assert_series_equal(short.signal, full.signal.iloc[:n])
    pd.testing.assert_series_equal(short.equity.iloc[:-1], full.equity.iloc[: n - 1])
    closed = short.trades[short.trades["exit_reason"] != "end_of_data"].reset_index(drop=True)
    full_before = full.trades[full.trades["exit_time"] <= cut].reset_index(drop=True)
    assert len(closed) > 10
    pd.testing.assert_frame_equal(closed, full_before)


def test_result_invariants(agent_run, sp):
    res = agent_run
    assert isinstance(res, BacktestResult)
    assert res.equity.index.equals(res.data.index) and res.data.index[0] == pd.Timestamp("2014-01-02")
    t = res.trades
    assert len(t) > 20 and set(t["exit_reason"]) <= {"take_profit", "stop_loss", "time_limit", "end_of_data"}
    # fills: entries at the fill bar's open, barrier exits at the barrier or a better/worse open
    opens = res.data["open"].to_numpy()
    np.testing.assert_allclose(t["entry_price"], opens[t["entry_bar"]], rtol=1e-14)  # 1-ulp from averaging
    tp = t["entry_price"] + 1.5 * t["atr"]
    sl = t["entry_price"] - 1.5 * t["atr"]
    is_tp, is_sl = t["exit_reason"] == "take_profit", t["exit_reason"] == "stop_loss"
    exit_open = opens[t["exit_bar"]]
    np.testing.assert_allclose(t.loc[is_tp, "exit_price"], np.maximum(tp, exit_open)[is_tp])
    np.testing.assert_allclose(t.loc[is_sl, "exit_price"], np.minimum(sl, exit_open)[is_sl])
    assert (t["bars_held"] >= 1).all() and (t["bars_held"] <= 20).all()
    assert (t.loc[t["exit_reason"] == "time_limit", "bars_held"] == 20).all()
    # ATR is labeling.atr on the FULL data at the signal bar (warm-up uses history before start)
    full_atr = pd.Series(labeling.atr(sp["high"], sp["low"], sp["close"], 14), index=sp.index)
    np.testing.assert_array_equal(t["atr"].to_numpy(), full_atr.loc[t["signal_time"]].to_numpy())
    # net P&L: the equity ends at cash + the sum of trade P&L
    assert res.equity.iloc[-1] == pytest.approx(100_000 + t["pnl"].sum(), rel=1e-12)
    json.dumps(res.stats, allow_nan=False)
    json.dumps(res.config, allow_nan=False)


def test_benchmark_is_buy_and_hold_computed_by_hand(agent_run):
    res = agent_run
    o, c = res.data["open"].to_numpy(), res.data["close"].to_numpy()
    size = 100_000 / (o[1] * (1 + COMM)) * (1 - 1e-9)  # notional sizing at the fill price
    cash_left = 100_000 - size * o[1] * (1 + COMM)
    expected = np.r_[100_000, cash_left + size * c[1:]]
    expected[-1] -= COMM * size * c[-1]  # the end_of_data exit's commission
    np.testing.assert_allclose(res.benchmark_equity.to_numpy(), expected, rtol=1e-12)
    assert res.benchmark_stats["total_return"] == pytest.approx(expected[-1] / 1e5 - 1, rel=1e-12)


def test_signal_series_must_align(sp):
    sig = _causal_signal(sp)
    with pytest.raises(ValueError, match="not in the data"):
        run_backtest(sp.iloc[:100], "agent", signal=sig, run=RunConfig(benchmark=False))
    with pytest.raises(ValueError, match="outside"):
        run_backtest(sp, "agent", signal=sig * 2, run=RunConfig(benchmark=False))
    with pytest.raises(ValueError, match="signal="):
        run_backtest(sp, "agent", run=RunConfig(benchmark=False))
    with pytest.raises(ValueError, match="no parameter"):
        run_backtest(sp, "buyhold", threshold=0.5)
    with pytest.raises(ValueError, match="bar"):
        run_backtest(sp, "buyhold", run=RunConfig(start="2030-01-01"))
    # a sub-range signal is reindexed: NaN (= no signal) elsewhere
    part = sig.loc["2015-01-01":"2015-06-30"]
    res = run_backtest(sp, "agent", signal=part, rules=BarrierRules(threshold=0.6), run=RunConfig(benchmark=False))
    assert res.signal.loc[: "2014-12-31"].isna().all()
    assert (res.trades["signal_time"] >= pd.Timestamp("2015-01-01")).all()


def test_strategy_classes_the_engine_can_read(sp):
    import backtrader as bt
    from strategies import TradeLogStrategy

    class Plain(bt.Strategy):
        pass

    with pytest.raises(TypeError, match="TradeLogStrategy subclass"):
        run_backtest(sp, Plain, run=RunConfig(benchmark=False))

    class OverridesNext(TradeLogStrategy):
        def next(self):  # skips the base class's per-bar equity recording
            pass

    with pytest.raises(RuntimeError, match=r"recorded 0 equity values .* on_bar\(\)"):
        run_backtest(sp, OverridesNext, run=RunConfig(benchmark=False))

    class Idle(TradeLogStrategy):
        pass

    res = run_backtest(sp.iloc[:50], Idle, run=RunConfig(cash=1234.0, benchmark=False))
    assert (res.equity == 1234.0).all() and (res.position == 0).all() and res.trades.empty


def test_sample_name_and_baselines_by_name():
    res = run_backtest("stoxx50_1d", "smacross", fast=5, slow=20)
    assert res.config["data_source"] == "stoxx50_1d" and res.config["data_sha256"]
    assert res.benchmark_stats["n_trades"] == 1
    assert res.signal is None


def test_plot_writes_a_png_atomically(agent_run, tmp_path):
    path = plot_backtest(agent_run, tmp_path / "bt.png", title="agent on sp500")
    assert path == tmp_path / "bt.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["bt.png"]  # no temp file left behind
    with pytest.raises(ValueError, match=".png"):
        plot_backtest(agent_run, tmp_path / "bt.jpg")
