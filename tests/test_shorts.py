"""Short positions: hand-worked short paths in every engine, borrow and margin by hand, and parity of backtrader
(BarrierBroker and the stock orders) with the fast simulator on mixed sides, single and portfolio."""

import numpy as np
import pandas as pd
import pytest

import datafeeds
import labeling
from engine import BarrierRules, Costs, RunConfig, run_backtest, run_portfolio
from engine.fastsim import simulate, sweep
from strategies.base import CASH_EPS

from conftest import flat_bars, signal_at

CASH = 100_000.0
COMM = 0.001
ENGINES = ["native", "stock", "fast"]


def _run(df, engine, *, side=-1, atr=1.0, horizon=10, costs=None, run=None, rules=None):
    run = (run or RunConfig(cash=CASH, benchmark=False))
    run = run.replace(engine="fast") if engine == "fast" else run.replace(native_barriers=engine == "native")
    return run_backtest(df, "agent", signal=signal_at(len(df), 3), side=side, atr=np.full(len(df), atr),
                        rules=rules or BarrierRules(horizon=horizon), costs=costs or Costs(commission=COMM), run=run)


def _short_size(fill_open, value=CASH, margin=1.0):
    """A short is sized at the (unslipped) open: equity / (open / leverage + commission per unit)."""
    return value / (fill_open * margin + fill_open * COMM) * (1 - CASH_EPS)


def _only(res):
    assert len(res.trades) == 1, res.trades
    return res.trades.iloc[0]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("bar, exit_bar, exit_price, reason", [
    # signal at bar 3, short entry at bar 4's open 100.0, ATR 1: take-profit 98.5 below, stop 101.5 above
    ((100.0, 100.2, 98.0, 98.6), 6, 98.5, "take_profit"),  # the low reaches the take-profit: out there
    ((98.0, 98.3, 97.5, 98.0), 6, 98.0, "take_profit"),  # a gap below the take-profit fills at the open
    ((100.0, 101.5, 99.8, 101.0), 6, 101.5, "stop_loss"),  # the high touches the stop exactly: out at the stop
    ((102.0, 102.5, 101.9, 102.2), 6, 102.0, "stop_loss"),  # a gap through the stop fills at the (worse) open
    ((100.0, 101.6, 98.4, 100.0), 6, 101.5, "stop_loss"),  # both barriers within one bar: the stop is assumed first
    ((100.0, 101.5 - 1e-9, 98.5 + 1e-9, 100.0), 14, 100.0, "time_limit"),  # a hair inside both: the horizon
])
def test_hand_worked_short_paths_in_every_engine(engine, bar, exit_bar, exit_price, reason):
    df = flat_bars(overrides={6: bar})
    t = _only(_run(df, engine))
    size = _short_size(100.0)
    assert (t["side"], t["exit_reason"], t["entry_bar"], t["exit_bar"]) == (-1, reason, 4, exit_bar)
    assert t["entry_price"] == 100.0 and t["exit_price"] == pytest.approx(exit_price, rel=1e-12)
    assert t["size"] == pytest.approx(size, rel=1e-12)
    assert t["pnl"] == pytest.approx(-size * (exit_price - 100.0) - COMM * size * (100.0 + exit_price), rel=1e-9)
    assert t["ret"] == pytest.approx(t["pnl"] / (size * 100.0), rel=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_short_position_is_negative_and_its_equity_moves_against_the_price(engine):
    df = flat_bars(overrides={5: (100.0, 100.5, 99.5, 99.0)})  # the close falls by 1 while short
    res = _run(df, engine)
    size = _short_size(100.0)
    assert res.position.iloc[4] == pytest.approx(-size, rel=1e-12)
    # equity at bar 5's close: cash after the entry's commission, plus the short's gain of size x 1.0
    assert res.equity.iloc[5] == pytest.approx(CASH - COMM * size * 100.0 + size * 1.0, rel=1e-12)
    assert res.equity.iloc[-1] == pytest.approx(CASH + res.trades["pnl"].sum(), rel=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_short_held_to_the_end_is_bought_back_at_the_close_slipped_up(engine):
    df = flat_bars(n=10)
    costs = Costs(commission=COMM, slippage=0.001)
    t = _only(_run(df, engine, horizon=50, costs=costs))
    # entry: sold at the open slipped down (100 * 0.999, within the low 99.8); exit: the close slipped up to 100.1,
    # within the high 100.2
    assert t["exit_reason"] == "end_of_data" and t["entry_price"] == pytest.approx(99.9, rel=1e-12)
    assert t["exit_price"] == pytest.approx(100.1, rel=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_borrow_is_charged_per_calendar_day_on_the_entry_value_and_booked_with_the_exit(engine):
    # entered Friday 2021-01-08 (bar 4), taken out by the time limit on bar 9, Friday 2021-01-15: 7 calendar days
    df = flat_bars()
    costs = Costs(commission=COMM, borrow=0.0365)  # 0.01% a day
    t = _only(_run(df, engine, horizon=5, costs=costs))
    size = _short_size(100.0)
    borrow = 7 * (0.0365 / 365.0) * size * 100.0
    assert t["exit_bar"] == 9 and t["exit_price"] == 100.0
    assert t["commission"] == pytest.approx(COMM * size * 200.0 + borrow, rel=1e-9)
    assert t["pnl"] == pytest.approx(-COMM * size * 200.0 - borrow, rel=1e-9)
    free = _only(_run(df, engine, horizon=5))
    assert free["pnl"] - t["pnl"] == pytest.approx(borrow, rel=1e-9)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_margin_of_one_half_doubles_the_units_of_a_short_and_of_a_long(engine):
    df = flat_bars()
    run = RunConfig(cash=CASH, benchmark=False, margin=0.5)
    short = _only(_run(df, engine, run=run))
    long = _only(_run(df, engine, run=run, side=1))
    assert short["size"] == pytest.approx(_short_size(100.0, margin=0.5), rel=1e-12)
    assert long["size"] == pytest.approx(short["size"], rel=1e-12)  # no slippage: the same units either way
    assert short["size"] == pytest.approx(2 * _only(_run(df, engine))["size"], rel=1e-3)


def test_bad_margin_and_sides_are_one_line_refusals():
    with pytest.raises(ValueError, match=r"margin must be in \(0, 10\]"):
        RunConfig(margin=0)
    df = flat_bars()
    bad = pd.Series([1, 2], index=df.index[[3, 5]])
    with pytest.raises(ValueError, match=r"side: side at 2021-01-1\d 00:00:00 is 2; a side is \+1 \(long\) or -1"):
        run_backtest(df, "agent", signal=signal_at(20, 3), side=bad, run=RunConfig(benchmark=False))
    with pytest.raises(ValueError, match="trades long at a fixed size"):
        run_backtest(df, "smacross", side=-1, run=RunConfig(benchmark=False))
    with pytest.raises(ValueError, match="borrow must be in"):
        Costs(borrow=1.5)


def _mixed():
    df = datafeeds.load_ohlcv("nasdaq", start="2012-01-01", end="2016-12-31")
    prob = pd.Series(np.random.default_rng(0).random(len(df)), index=df.index)
    side = labeling.primary_side(df, labeling.parse_primary("momentum:lookback=10"))
    return df, prob, side


@pytest.mark.parametrize("case", ["plain", "costs", "margin", "sizing"])
def test_mixed_sides_are_bit_equal_in_backtrader_both_brokers_and_the_fast_simulator(case):
    df, prob, side = _mixed()
    rules = BarrierRules(threshold=0.6, horizon=10)
    costs = Costs(commission=COMM)
    run = RunConfig(benchmark=False)
    if case in ("costs", "margin"):
        costs = Costs(commission=COMM, slippage=0.0005, borrow=0.05)
    if case == "margin":
        run = run.replace(margin=0.5)
    if case == "sizing":
        rules, costs = BarrierRules(threshold=0.6, sizing="probability", size_step=0.1), Costs(borrow=0.1)
    kw = dict(signal=prob, side=side, rules=rules, costs=costs)
    native = run_backtest(df, "agent", run=run, **kw)
    stock = run_backtest(df, "agent", run=run.replace(native_barriers=False), **kw)
    fast = run_backtest(df, "agent", run=run.replace(engine="fast"), **kw)
    t = native.trades
    assert (t["side"] == -1).sum() > 40 and (t["side"] == 1).sum() > 40
    # each trade's bet size: the entry size multiple at its signal bar (1 with fixed sizing)
    sizes = pd.Series(labeling.entry_sizes(prob.to_numpy(), labeling.event_sides(side, df.index), rules), df.index)
    np.testing.assert_array_equal(t["bet_size"], sizes.loc[pd.DatetimeIndex(t["signal_time"])].to_numpy())
    assert (t["bet_size"] < 1).all() if case == "sizing" else (t["bet_size"] == 1).all()
    assert {"take_profit", "stop_loss"} <= set(t.loc[t["side"] == -1, "exit_reason"])
    for other in (stock, fast):
        pd.testing.assert_frame_equal(t, other.trades, check_exact=True, check_dtype=False)
        pd.testing.assert_series_equal(native.equity, other.equity, check_exact=True)
        pd.testing.assert_series_equal(native.position, other.position, check_exact=True)


def test_sweep_scores_each_configuration_as_its_own_run_with_sides():
    df, prob, side = _mixed()
    grid = {"threshold": [0.55, 0.7], "sizing": ["fixed", "probability"], "size_step": [0.0, 0.25]}
    costs = Costs(commission=COMM, borrow=0.02)
    res = sweep(df, prob, grid, side=side, costs=costs, run=RunConfig(benchmark=False))
    for row in res.itertuples():
        rules = BarrierRules(threshold=row.threshold, sizing=row.sizing, size_step=row.size_step)
        one = simulate(df, prob, side=side, rules=rules, costs=costs, run=RunConfig(benchmark=False))
        assert row.n_trades == len(one.trades)
        assert row.end_value == one.equity.iloc[-1]


def test_long_only_reads_no_side_and_equals_an_explicit_long_side():
    df, prob, _ = _mixed()
    kw = dict(signal=prob, rules=BarrierRules(threshold=0.6), run=RunConfig(benchmark=False))
    implicit = run_backtest(df, "agent", **kw)
    explicit = run_backtest(df, "agent", side=pd.Series(1, index=df.index), **kw)
    assert (implicit.trades["side"] == 1).all()
    pd.testing.assert_frame_equal(implicit.trades, explicit.trades, check_exact=True)
    pd.testing.assert_series_equal(implicit.equity, explicit.equity, check_exact=True)


@pytest.mark.parametrize("costs", [Costs(commission=COMM), Costs(commission=COMM, slippage=0.0005, borrow=0.05)])
def test_portfolio_with_mixed_sides_is_trade_for_trade_equal_in_both_engines(costs):
    frames = {s: f.loc["2015":"2019"] for s, f in datafeeds.load_universe("us_daily").items()
              if len(f.loc["2015":"2019"]) > 100}
    rng = np.random.default_rng(1)
    prob = {s: pd.Series(rng.random(len(f)), index=f.index) for s, f in frames.items()}
    rule = labeling.parse_primary("smacross:fast=5,slow=20")
    sides = {s: labeling.primary_side(f, rule) for s, f in frames.items()}
    kw = dict(sides=sides, rules=BarrierRules(threshold=0.6, horizon=10), costs=costs, max_positions=2)
    bt_ = run_portfolio(frames, prob, run=RunConfig(benchmark=False), **kw)
    fast = run_portfolio(frames, prob, run=RunConfig(benchmark=False, engine="fast"), **kw)
    assert (bt_.trades["side"] == -1).sum() > 40
    pd.testing.assert_frame_equal(bt_.trades, fast.trades, check_exact=True, check_dtype=False)
    pd.testing.assert_series_equal(bt_.equity, fast.equity, check_exact=True)
    pd.testing.assert_frame_equal(bt_.positions, fast.positions, check_exact=True)


def test_entry_sizes_average_the_open_bets_and_read_no_future():
    prob = np.array([0.6, 0.7, np.nan, 0.55, 0.9, 0.8])
    side = np.array([1.0, 1.0, 1.0, -1.0, 0.0, -1.0])
    rules = BarrierRules(horizon=2, sizing="probability")
    sizes = labeling.entry_sizes(prob, side, rules)
    m = labeling.bet_size(pd.Series(prob), pd.Series(np.where(side == 0, 1, side))).to_numpy()
    assert sizes[0] == pytest.approx(m[0])
    assert sizes[1] == pytest.approx((m[0] + m[1]) / 2)  # two long bets open
    assert sizes[2] == 0.0  # no probability: no bet
    assert sizes[3] == pytest.approx(-m[3])  # the short bet alone (bar 2 had none), read on its own side
    assert sizes[4] == 0.0  # no side: no bet
    # bar 5: its short bet and nothing else open (bar 4 had no side): positive on the short side
    assert sizes[5] == pytest.approx(-m[5])
    assert labeling.entry_sizes(prob, side, BarrierRules()).tolist() == [1.0] * 6  # fixed sizing
    # a long bet while the open bets lean short takes nothing
    lean = labeling.entry_sizes(np.array([0.9, 0.55]), np.array([-1.0, 1.0]), rules)
    assert lean[1] == 0.0
    # a bet the model expects to lose is passed (size 0), not a bet the other way: it only dilutes the average
    passed = labeling.entry_sizes(np.array([0.3, 0.9]), np.array([1.0, 1.0]), rules)
    m9 = labeling.bet_size(pd.Series([0.9])).iloc[0]
    assert passed[0] == 0.0 and passed[1] == pytest.approx(m9 / 2)
    for cut in range(1, len(prob)):  # truncating the future changes nothing before the cut
        assert labeling.entry_sizes(prob[:cut], side[:cut], rules).tolist() == sizes[:cut].tolist()
    stepped = labeling.entry_sizes(prob, side, rules.replace(size_step=0.25))
    assert set(np.round(stepped / 0.25, 9)) <= {0.0, 1.0, 2.0, 3.0, 4.0}


def _sides_file(tmp_path, bad=None):
    df = datafeeds.load_ohlcv("sp500", start="2014-01-01")
    df["side"] = np.random.default_rng(0).choice([1.0, -1.0, 0.0, np.nan], len(df))
    if bad is not None:
        df.iloc[5, df.columns.get_loc("side")] = bad
    path = tmp_path / "sides.csv"
    df.to_csv(path)
    return path


def test_the_main_command_trades_a_side_column_and_refuses_bad_sides_in_one_line(tmp_path, capsys):
    from engine.backtest_cli import main

    path = _sides_file(tmp_path)
    assert main(["--data", str(path), "--side", "side", "--no-plot", "--borrow", "0.02", "--margin", "0.5",
                 "--trades", str(tmp_path / "t.csv")]) == 0
    out = capsys.readouterr().out
    assert ", margin 0.5, borrow 2.00%/yr" in out and "\nshort: " in out and "\nlong: " in out
    trades = pd.read_csv(tmp_path / "t.csv")
    assert set(trades["side"]) == {1, -1}
    df = pd.read_csv(path, index_col=0, parse_dates=True)
    # every trade was signalled on a bar whose column says its side
    assert (df.loc[pd.DatetimeIndex(trades["signal_time"]), "side"].to_numpy() == trades["side"].to_numpy()).all()
    cases = [
        (["--data", str(_sides_file(tmp_path, bad=2.0)), "--side", "side"], "row 2014-01-09 00:00:00: 2 is not a side"),
        (["--data", str(path), "--side", "sid"], "has no column 'sid' (its other columns: side)"),
        (["--margin", "0"], "--margin 0.0: must be in (0, 10]"),
        (["--strategy", "smacross", "--side", "side"], "--side sets the agent strategy"),
        (["--sizing", "probability", "--live"], "--live streams bars one at a time; sizing by probability"),
    ]
    for argv, message in cases:
        assert main([*argv, "--no-plot"]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)


def test_borrow_counts_the_same_days_in_both_engines_on_intraday_bars():
    # hourly bars with weekends: backtrader charges a short's borrow per calendar day; the fast kernel must count
    # the same days (frames are tz-naive: datafeeds refuses others)
    df = datafeeds.load_ohlcv("eurusd_1h").iloc[:2000]
    prob = pd.Series(np.random.default_rng(2).random(len(df)), index=df.index)
    kw = dict(signal=prob, side=-1, rules=BarrierRules(threshold=0.6, horizon=30),
              costs=Costs(commission=COMM, borrow=0.5))
    bt_ = run_backtest(df, "agent", run=RunConfig(benchmark=False), **kw)
    fast = run_backtest(df, "agent", run=RunConfig(benchmark=False, engine="fast"), **kw)
    free = run_backtest(df, "agent", run=RunConfig(benchmark=False, engine="fast"), **{**kw, "costs": Costs(COMM)})
    assert (bt_.trades["commission"] > free.trades["commission"]).sum() > 10  # borrow really charged
    pd.testing.assert_frame_equal(bt_.trades, fast.trades, check_exact=True, check_dtype=False)
    pd.testing.assert_series_equal(bt_.equity, fast.equity, check_exact=True)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_short_past_twice_its_entry_is_marked_at_its_loss(engine):
    # backtrader's BackBroker takes abs() of a short's value (shortcash off), which flips its sign once the price
    # passes twice the entry; our brokers (strategies.broker.ShortValue) and the kernels mark it at its loss
    df = flat_bars(n=12, overrides={**{i: (250.0, 250.2, 249.8, 250.0) for i in range(6, 12)},
                                    5: (100.0, 250.0, 99.8, 250.0)})
    res = _run(df, engine, atr=1.0, horizon=4, rules=BarrierRules(sl=1000.0, horizon=4, size_frac=0.2))
    units = _short_size(100.0, value=0.2 * CASH)
    entry_cost = COMM * units * 100.0
    assert res.equity.iloc[5] == pytest.approx(CASH - entry_cost - units * 150.0, rel=1e-12)
    t = _only(res)
    assert (t["exit_reason"], t["exit_bar"], t["exit_price"]) == ("time_limit", 8, 250.0)
    assert res.equity.iloc[-1] == pytest.approx(CASH + t["pnl"], rel=1e-12)
