"""engine.fastsim: the hand-made cases of test_strategies through the fast path, and parity with backtrader."""

import math

import numpy as np
import pandas as pd
import pytest

import datafeeds
from engine import BarrierRules, Costs, RunConfig, run_backtest
from engine.fastsim import simulate
from strategies import TRADE_FIELDS
from strategies.base import CASH_EPS

from conftest import flat_bars, signal_at

CASH = 100_000.0
COMM = 0.001
EPS = CASH_EPS  # rounding headroom in the notional sizing
RTOL = 1e-9




def _fast(df, signal, *, atr=1.0, horizon=10, threshold=0.5, slippage=0.0):
    atr = np.full(len(df), atr) if np.isscalar(atr) else atr
    return run_backtest(df, "agent", signal=signal, atr=atr, rules=BarrierRules(threshold=threshold, horizon=horizon),
                        costs=Costs(commission=COMM, slippage=slippage),
                        run=RunConfig(engine="fast", cash=CASH, benchmark=False))


def _size(fill_open, value=CASH, slip=0.0):
    return value / (fill_open * (1 + slip) * (1 + COMM)) * (1 - EPS)


def _pnl(size, entry, exit_):
    return size * (exit_ - entry) - COMM * size * (entry + exit_)


# --- hand-made paths (the numbers of tests/test_strategies.py) -----------------------------------

# (bar overrides, signal bars, horizon, entry bar, exit bar, exit price, exit reason)
CASES = {
    "tp_inside_bar": ({5: (100.5, 101.8, 100.3, 101.0)}, 3, 10, 4, 5, 101.5, "take_profit"),
    "tp_gap_at_open": ({5: (102.0, 102.5, 101.9, 102.2)}, 3, 10, 4, 5, 102.0, "take_profit"),
    "stop_gap_at_open": ({5: (98.0, 98.2, 97.0, 97.5)}, 3, 10, 4, 5, 98.0, "stop_loss"),
    "stop_inside_bar": ({6: (100.0, 100.3, 98.0, 99.0)}, 3, 10, 4, 6, 98.5, "stop_loss"),
    "both_in_one_bar_stop_first": ({5: (100.0, 102.0, 98.0, 101.0)}, 3, 10, 4, 5, 98.5, "stop_loss"),
    "entry_bar_not_checked": ({4: (100.0, 105.0, 95.0, 100.0), 6: (100.0, 101.6, 99.9, 101.0)},
                              3, 10, 4, 6, 101.5, "take_profit"),
    "time_exit_next_open": ({9: (100.3, 110.0, 90.0, 100.0)}, 3, 5, 4, 9, 100.3, "time_limit"),
    "barrier_on_last_horizon_bar": ({8: (100.0, 101.6, 99.9, 101.0)}, 3, 5, 4, 8, 101.5, "take_profit"),
    "end_of_data_at_last_close": ({19: (100.0, 100.4, 99.9, 100.3)}, 16, 10, 17, 19, 100.3, "end_of_data"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hand_made_paths(name):
    overrides, at, horizon, entry_bar, exit_bar, exit_price, reason = CASES[name]
    df = flat_bars(overrides=overrides)
    res = _fast(df, signal_at(20, at), horizon=horizon)
    assert len(res.trades) == 1, res.trades
    t = res.trades.iloc[0]
    entry = df["open"].iloc[entry_bar]
    size = _size(entry)
    assert (t["entry_time"], t["exit_time"]) == (df.index[entry_bar], df.index[exit_bar])
    assert t["signal_time"] == df.index[entry_bar - 1]
    assert (t["entry_bar"], t["exit_bar"], t["bars_held"]) == (entry_bar, exit_bar, exit_bar - entry_bar)
    assert t["exit_reason"] == reason
    assert t["entry_price"] == pytest.approx(entry, rel=1e-12)
    assert t["exit_price"] == pytest.approx(exit_price, rel=1e-12)
    assert t["size"] == pytest.approx(size, rel=1e-12)
    assert t["pnl"] == pytest.approx(_pnl(size, entry, exit_price), rel=1e-9)
    assert t["ret"] == pytest.approx(t["pnl"] / (size * entry), rel=1e-12)
    assert t["commission"] == pytest.approx(COMM * size * (entry + exit_price), rel=1e-12)
    assert res.equity.iloc[-1] == pytest.approx(CASH + t["pnl"], rel=1e-12)  # flat at the end
    assert (res.position.iloc[entry_bar:exit_bar] == t["size"]).all()
    assert (res.position.iloc[:entry_bar] == 0).all()


def test_barriers_from_executed_entry_and_signal_bar_atr():
    df = flat_bars(overrides={4: (100.6, 100.8, 100.4, 100.6), 5: (100.6, 103.7, 100.5, 103.0)})
    atr = np.full(20, 2.0)
    atr[4:] = 50.0  # later ATR values must not move the barriers
    t = _fast(df, signal_at(20, 3), atr=atr).trades.iloc[0]
    assert (t["exit_price"], t["exit_reason"], t["atr"]) == (pytest.approx(103.6, rel=1e-12), "take_profit", 2.0)


def test_reentry_on_exit_bar_and_no_entry_while_in_a_trade():
    later = {i: (97.5, 97.7, 97.3, 97.5) for i in range(6, 12)}
    df = flat_bars(overrides={5: (98.0, 98.2, 97.0, 97.5), **later}, n=12)
    res = _fast(df, signal_at(12, [3, 4, 5]), horizon=3)
    assert list(res.trades["entry_bar"]) == [4, 6]
    assert list(res.trades["exit_bar"]) == [5, 9]
    assert list(res.trades["exit_reason"]) == ["stop_loss", "time_limit"]
    assert res.trades["size"].iloc[1] == pytest.approx(_size(97.5, CASH + res.trades["pnl"].iloc[0]), rel=1e-12)
    assert res.equity.iloc[-1] == pytest.approx(CASH + res.trades["pnl"].sum(), rel=1e-12)


def test_no_entry_below_threshold_on_nan_signal_or_nan_atr():
    sig = signal_at(20, [3], p=0.59)
    sig[8] = 0.99
    atr = np.full(20, 1.0)
    atr[8] = np.nan
    res = _fast(flat_bars(), sig, atr=atr, threshold=0.6)
    assert res.trades.empty and (res.equity == CASH).all() and (res.position == 0).all()
    assert len(_fast(flat_bars(), signal_at(20, 3, p=0.6), threshold=0.6).trades) == 1  # >= threshold enters


def test_gap_up_is_sized_at_the_open():
    df = flat_bars(n=12, overrides={i: (103.0, 103.2, 102.8, 103.0) for i in range(4, 12)})
    res = _fast(df, signal_at(12, 3), horizon=5)
    assert res.trades["size"].iloc[0] == pytest.approx(_size(103.0), rel=1e-12)
    assert res.stats["rejected_entries"] == 0
    assert res.equity.iloc[4] == pytest.approx(CASH - COMM * _size(103.0) * 103.0, rel=1e-12)


def test_slippage_moves_fills_and_sizing():
    slip = 0.001
    df = flat_bars(overrides={9: (100.3, 100.5, 100.1, 100.3)})
    t = _fast(df, signal_at(20, 3), horizon=5, slippage=slip).trades.iloc[0]
    entry, exit_ = 100.0 * (1 + slip), 100.3 * (1 - slip)
    assert t["entry_price"] == pytest.approx(entry, rel=1e-12)
    assert t["exit_price"] == pytest.approx(exit_, rel=1e-12)
    assert t["pnl"] == pytest.approx(_pnl(_size(100.0, slip=slip), entry, exit_), rel=1e-9)


# Slippage caps, as backtrader applies them (set_slippage_perc, slip_match=True, slip_out=False):
# (bar overrides, signal bar, horizon, exit price, reason, entry price); slippage 0.001, ATR 1.
SLIP_CASES = {
    # buy at open 100 slipped to 100.1 is capped at the high 100.05; units still sized on 100.1
    "buy_capped_at_high": ({4: (100.0, 100.05, 99.9, 100.0), 6: (100.0, 101.6, 99.9, 101.0)},
                           3, 10, 101.55, "take_profit", 100.05),
    # limit gap: TP 100.1 + 1.5; open 101.65 slipped down to 101.548 is floored at the limit (not the low)
    "limit_gap_floored_at_limit": ({5: (101.65, 101.7, 100.0, 101.0)}, 3, 10, 100.1 + 1.5, "take_profit", 100.1),
    # stop touched inside the bar: 98.6 * 0.999 = 98.5014 is floored at the low 98.55
    "stop_slipped_floored_at_low": ({5: (100.0, 100.2, 98.55, 99.0)}, 3, 10, 98.55, "stop_loss", 100.1),
    # end of data: last close slipped down, floored at the low
    "end_of_data_floored_at_low": ({19: (100.0, 100.4, 100.25, 100.3)}, 16, 10, 100.25, "end_of_data", 100.1),
}


@pytest.mark.parametrize("name", list(SLIP_CASES))
def test_slippage_caps_match_backtrader(name):
    overrides, at, horizon, exit_price, reason, entry_price = SLIP_CASES[name]
    df = flat_bars(overrides=overrides)
    kw = dict(signal=signal_at(20, at), atr=np.ones(20), rules=BarrierRules(horizon=horizon),
              costs=Costs(commission=COMM, slippage=0.001))
    fast = run_backtest(df, "agent", run=RunConfig(engine="fast", cash=CASH, benchmark=False), **kw)
    t = fast.trades.iloc[0]
    assert t["exit_reason"] == reason
    assert t["entry_price"] == pytest.approx(entry_price, rel=1e-12)
    assert t["exit_price"] == pytest.approx(exit_price, rel=1e-12)
    assert t["size"] == pytest.approx(_size(100.0, slip=0.001), rel=1e-12)
    _assert_same(fast, run_backtest(df, "agent", run=RunConfig(cash=CASH, benchmark=False), **kw))


def test_horizon_one_exits_at_the_next_open_without_barriers():
    # the time exit is ordered at the fill bar's close, so no barrier is ever worked (both engines)
    df = flat_bars(overrides={5: (100.2, 103.0, 97.0, 100.0), 12: (100.0, 100.2, 98.0, 99.0)})
    res = _fast(df, signal_at(20, 3), horizon=1)
    t = res.trades.iloc[0]
    assert len(res.trades) == 1
    assert (t["entry_bar"], t["exit_bar"], t["exit_reason"], t["exit_price"]) == (4, 5, "time_limit", 100.2)
    assert (res.position.iloc[5:] == 0).all()
    kw = dict(signal=signal_at(20, 3), atr=np.full(len(df), 1.0), costs=Costs(commission=COMM),
              run=RunConfig(cash=CASH, benchmark=False), rules=BarrierRules(horizon=1))
    _assert_same(res, run_backtest(df, "agent", **kw))


# --- errors ------------------------------------------------------------------------------------

def test_fast_engine_refuses_other_strategies_live_mode_and_unknown_engines():
    df = flat_bars()
    with pytest.raises(ValueError, match="only the agent strategy"):
        run_backtest(df, "smacross", run=RunConfig(engine="fast"))
    with pytest.raises(ValueError, match="live=True"):
        run_backtest(df, "agent", run=RunConfig(engine="fast"), live=True, agent=object())
    with pytest.raises(ValueError, match="unknown engine 'numba'"):
        run_backtest(df, "agent", run=RunConfig(engine="numba"), signal=signal_at(20, 3))
    with pytest.raises(ValueError, match="size_frac"):
        simulate(df, signal_at(20, 3), rules=BarrierRules(size_frac=1.5))
    with pytest.raises(ValueError, match="horizon"):
        simulate(df, signal_at(20, 3), rules=BarrierRules(horizon=2.5))
    with pytest.raises(ValueError, match="outside"):
        simulate(df, signal_at(20, 3, p=1.2))


# --- parity with backtrader on the bundled samples ---------------------------------------------

def _assert_same(fast, ref):
    """Trades column by column (times and labels exact, floats rtol 1e-9), equity, position, stats."""
    assert list(fast.trades.columns) == list(TRADE_FIELDS) == list(ref.trades.columns)
    assert len(fast.trades) == len(ref.trades)
    for col in TRADE_FIELDS:
        a, b = fast.trades[col].to_numpy(), ref.trades[col].to_numpy()
        if col.endswith("_time"):
            assert (pd.DatetimeIndex(a) == pd.DatetimeIndex(b)).all(), col
        elif np.issubdtype(a.dtype, np.floating):
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=0, err_msg=col)
        else:
            assert (a == b).all(), col
    np.testing.assert_allclose(fast.equity.to_numpy(), ref.equity.to_numpy(), rtol=RTOL, atol=0)
    np.testing.assert_allclose(fast.position.to_numpy(), ref.position.to_numpy(), rtol=RTOL, atol=0)
    assert fast.equity.index.equals(ref.equity.index)
    for key, value in ref.stats.items():
        assert fast.stats[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key


# sample -> (window start, bars): windows keep each backtrader run to a second or two
WINDOWS = {
    "sp500": ("2007-01-01", 2000),
    "nasdaq": ("2000-06-01", 2000),
    "eurusd_1h": ("2017-08-01", 2000),
    "stoxx50_1d": (None, 512),
    "stoxx50fut_1m": ("2006-02-01", 3000),
}
# (seed, threshold, pt, sl, horizon, size_frac, commission, slippage)
CONFIGS = [
    (0, 0.6, 1.5, 1.5, 10, 1.0, 0.001, 0.0005),
    (1, 0.5, 0.7, 2.0, 4, 0.5, 0.0003, 0.002),
    (2, 0.55, 1.0, 0.5, 3, 1.0, 0.0, 0.0),
]


@pytest.fixture(scope="module", params=list(WINDOWS))
def sample(request):
    df = datafeeds.load_ohlcv(request.param)
    first, n_bars = WINDOWS[request.param]
    i0 = 0 if first is None else int(df.index.searchsorted(pd.Timestamp(first)))
    return request.param, df, df.index[i0], df.index[min(i0 + n_bars, len(df)) - 1]


@pytest.mark.parametrize("config", range(len(CONFIGS)))
def test_parity_with_backtrader_on_samples(sample, config):
    name, df, start, end = sample
    seed, threshold, pt, sl, horizon, size_frac, comm, slip = CONFIGS[config]
    rng = np.random.default_rng(seed)
    signal = rng.random(len(df))
    signal[rng.random(len(df)) < 0.1] = np.nan
    run = RunConfig(start=start, end=end, benchmark=config == 0)
    kw = dict(signal=signal, rules=BarrierRules(threshold=threshold, pt=pt, sl=sl, horizon=horizon,
                                                size_frac=size_frac), costs=Costs(commission=comm, slippage=slip))
    ref = run_backtest(df, "agent", run=run, **kw)
    fast = run_backtest(df, "agent", run=run.replace(engine="fast"), **kw)
    assert len(ref.trades) >= 20, f"{name}: too few trades to compare"
    assert set(ref.trades["exit_reason"]) >= {"stop_loss", "take_profit", "time_limit"}
    _assert_same(fast, ref)
    assert fast.config["params"] == ref.config["params"]
    assert fast.trades.dtypes.equals(ref.trades.dtypes)
    if config == 0:  # buy-and-hold benchmark through the kernel equals backtrader's BuyAndHold
        np.testing.assert_allclose(fast.benchmark_equity.to_numpy(), ref.benchmark_equity.to_numpy(),
                                   rtol=RTOL, atol=0)
        _assert_stats_close(fast.benchmark_stats, ref.benchmark_stats)


def _assert_stats_close(a: dict, b: dict, rel=1e-6) -> None:
    """Same keys; numbers equal to ``rel``, everything else (dates as text, None) exactly equal.
    (pytest.approx on a mapping that holds strings raises TypeError in pytest >= 9.)"""
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], (int, float)) and not isinstance(a[key], bool) and b[key] is not None:
            assert a[key] == pytest.approx(b[key], rel=rel), key
        else:
            assert a[key] == b[key], key


def test_parity_without_trades():
    df = datafeeds.load_ohlcv("stoxx50_1d")
    run = RunConfig(benchmark=False, end=df.index[60])
    kw = dict(signal=np.full(len(df), 0.3), rules=BarrierRules(threshold=0.5))
    fast = run_backtest(df, "agent", run=run.replace(engine="fast"), **kw)
    ref = run_backtest(df, "agent", run=run, **kw)
    pd.testing.assert_frame_equal(fast.trades, ref.trades)
    pd.testing.assert_series_equal(fast.equity, ref.equity)
    assert math.isclose(fast.equity.iloc[-1], 100_000.0)


# ---------------------------------------------------------------------------------------------- sweep


def test_sweep_gives_each_configuration_the_numbers_of_its_own_run():
    from engine.fastsim import SWEEP_STATS, sweep

    df = datafeeds.load_ohlcv("sp500")
    sig = pd.Series(np.random.default_rng(3).random(len(df)), index=df.index)
    grid = {"threshold": [0.55, 0.7, 0.9], "pt": [1.0, 2.5], "sl": [1.0, 2.0], "horizon": [5, 20],
            "size_frac": [0.5, 1.0]}
    costs = Costs(commission=0.001, slippage=0.0005)
    res, curves = sweep(df, sig, grid, costs=costs, run=RunConfig(start="2005-01-01", risk_free=0.02), equity=True)
    assert len(res) == 3 * 2 * 2 * 2 * 2 and curves.shape == (len(df.loc["2005-01-01":]), len(res))
    assert list(res.columns[:5]) == ["threshold", "pt", "sl", "horizon", "size_frac"]
    assert res["n_trades"].min() > 0 and res["total_return"].nunique() > 40
    for i in (0, 7, 18, 33, 47):
        row = res.iloc[i]
        one = run_backtest(df, "agent", signal=sig, costs=costs,
                           run=RunConfig(engine="fast", benchmark=False, start="2005-01-01", risk_free=0.02),
                           rules=BarrierRules(threshold=row.threshold, pt=row.pt, sl=row.sl,
                                              horizon=int(row.horizon), size_frac=row.size_frac))
        for name in SWEEP_STATS:
            want = one.stats[name]
            if want is None:
                assert np.isnan(row[name]), (i, name)
            else:
                assert row[name] == pytest.approx(want, rel=1e-9, abs=1e-12), (i, name)
        pd.testing.assert_series_equal(curves[i], one.equity, check_names=False, check_freq=False)


def test_sweep_takes_explicit_rows_and_refuses_unknown_or_bad_parameters():
    from engine.fastsim import sweep

    df = datafeeds.load_ohlcv("sp500").iloc[:1500]
    sig = np.random.default_rng(4).random(len(df))
    rows = pd.DataFrame({"threshold": [0.6, 0.8], "horizon": [10, 30]})
    res = sweep(df, sig, rows)
    assert list(res["horizon"]) == [10, 30] and list(res["pt"]) == [1.5, 1.5]  # defaults fill the rest
    with pytest.raises(ValueError, match="unknown parameter 'treshold' \\(did you mean 'threshold'\\?\\)"):
        sweep(df, sig, {"treshold": [0.5]})
    with pytest.raises(ValueError, match="configuration 1: horizon must be an integer >= 1"):
        sweep(df, sig, {"horizon": [5, 0]})
    # a float frame (np.array of a grid's product) holds whole horizons as 10.0: taken as the integers they are
    floats = sweep(df, sig, rows.astype(np.float64))
    pd.testing.assert_frame_equal(floats, res)
    with pytest.raises(ValueError, match="configuration 0: horizon must be an integer"):
        sweep(df, sig, pd.DataFrame({"horizon": [10.5]}))
