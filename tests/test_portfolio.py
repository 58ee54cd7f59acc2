"""Portfolio backtests: allocation, calendars with gaps, causality, fast vs backtrader, one instrument = today."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from datafeeds import load_universe
from engine import BarrierRules, Costs, RunConfig, run_backtest, run_portfolio, sweep_portfolio

DAYS = pd.date_range("2020-01-01", periods=10, freq="D", name="datetime")


def _frame(opens, closes=None, lows=None, highs=None, index=None):
    """Bars with the given opens; close = open unless given, low/high bracketing both by 1 unless given."""
    index = DAYS[: len(opens)] if index is None else pd.DatetimeIndex(index, name="datetime")
    o = np.asarray(opens, dtype=float)
    c = o.copy() if closes is None else np.asarray(closes, dtype=float)
    lo = np.minimum(o, c) - 1 if lows is None else np.asarray(lows, dtype=float)
    hi = np.maximum(o, c) + 1 if highs is None else np.asarray(highs, dtype=float)
    df = pd.DataFrame({"open": o, "high": hi, "low": lo, "close": c, "volume": 1000.0}, index=index)
    df.attrs["source"] = "hand-made"
    return df


def _run(frames, sig, engine, *, max_positions, horizon=2, size_frac=None):
    signals = {s: pd.Series(v, index=frames[s].index, dtype=float) for s, v in sig.items()}
    atr = {s: pd.Series(1.0, index=frames[s].index) for s in frames}  # barriers in price units: pt/sl ATRs of 1
    rules = BarrierRules(pt=40, sl=40, horizon=horizon, size_frac=size_frac)
    return run_portfolio(frames, signals, atr=atr, rules=rules, costs=Costs(commission=0.0),
                         run=RunConfig(engine=engine, benchmark=False), max_positions=max_positions)


@pytest.mark.parametrize("engine", ["backtrader", "fast"])
def test_one_slot_goes_to_the_highest_probability_then_the_symbol_and_the_rest_are_skipped(engine):
    frames = {"A": _frame([50, 50, 50, 50, 50, 55]), "B": _frame([100, 100, 100, 110, 110, 110])}
    sig = {"A": [0.6, 0.7, 0.7, 0.8, np.nan, np.nan],  # day 3: A and B tie at 0.8: the name decides, A
           "B": [0.9, np.nan, np.nan, 0.8, np.nan, np.nan]}
    r = _run(frames, sig, engine, max_positions=1)
    t = r.trades
    assert list(t["symbol"]) == ["B", "A"]
    b, a = t.iloc[0], t.iloc[1]
    # B: decided at day 0's close, filled at day 1's open (100), out at the open of its 2nd bar held (day 3, 110)
    assert (b.signal_time, b.entry_time, b.exit_time, b.exit_reason) == (DAYS[0], DAYS[1], DAYS[3], "time_limit")
    assert (b.entry_price, b.exit_price) == (100.0, 110.0)
    units_b = 100_000 / 100 * (1 - 1e-9)
    assert b["size"] == pytest.approx(units_b, rel=1e-12)
    # A: decided at day 3 (slot free again after B's exit at that open), filled day 4 at 50, closed at the end at 55
    assert (a.signal_time, a.entry_time, a.exit_time, a.exit_reason) == (DAYS[3], DAYS[4], DAYS[5], "end_of_data")
    cash_after_b = 100_000 + units_b * 10
    units_a = cash_after_b / 50 * (1 - 1e-9)
    assert a["size"] == pytest.approx(units_a, rel=1e-12)
    assert r.equity.iloc[-1] == pytest.approx(cash_after_b + units_a * 5, rel=1e-12)
    # skipped: A on days 0, 1, 2 (no free slot), B on day 3 (lost the tie)
    assert r.contribution.loc["A", "skipped_signals"] == 3 and r.contribution.loc["B", "skipped_signals"] == 1
    assert r.stats["skipped_signals"] == 4 and r.stats["rejected_entries"] == 0
    assert r.contribution["pnl"].sum() == pytest.approx(r.equity.iloc[-1] - 100_000, rel=1e-9)


@pytest.mark.parametrize("engine", ["backtrader", "fast"])
def test_each_entry_commits_equity_over_k_capped_at_the_free_cash(engine):
    frames = {"A": _frame([10, 10, 20, 20, 20]), "B": _frame([10, 10, 10, 10, 10])}
    sig = {"A": [0.9, np.nan, np.nan, np.nan, np.nan], "B": [np.nan, np.nan, 0.9, np.nan, np.nan]}
    r = _run(frames, sig, engine, max_positions=2, horizon=10)
    a, b = r.trades.set_index("symbol").loc["A"], r.trades.set_index("symbol").loc["B"]
    assert a["size"] == pytest.approx(50_000 / 10 * (1 - 1e-9), rel=1e-12)  # equity / 2
    # at day 2's close A's half is worth 100,000 (doubled): equity 150,000, a half is 75,000, but only the
    # 50,000 of cash is free: B gets that
    assert b["size"] == pytest.approx(50_000 / 10 * (1 - 1e-9), rel=1e-9)
    assert r.stats["rejected_entries"] == 0


def _gappy():
    # A lists on day 1 (nothing on day 0); B has no bar on days 2 and 4 (holidays)
    a = _frame([50, 51, 52, 53, 54, 55, 56], index=DAYS[1:8])
    b_days = [DAYS[i] for i in (0, 1, 3, 5, 6, 7)]
    # B's day-3 bar (its entry's fill bar) has a low far below any stop: the fill bar is never worked, and
    # on day 4 (no B bar) the broker must not work that stale bar either
    b = _frame([100, 100, 100, 100, 100, 100], lows=[99, 99, 1, 99, 99, 99], index=b_days)
    return {"A": a, "B": b}


@pytest.mark.parametrize("engine", ["backtrader", "fast"])
def test_a_missing_bar_never_shifts_another_instrument(engine):
    frames = _gappy()
    sig = {"A": [0.8, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan],  # A's day 1
           "B": [np.nan, 0.9, np.nan, np.nan, np.nan, np.nan]}  # B's day 1
    r = _run(frames, sig, engine, max_positions=2, size_frac=0.5)
    t = r.trades.set_index("symbol")
    # A: decided day 1, fills day 2 (its next bar), time exit after 2 of its own bars: day 4
    assert (t.loc["A", "entry_time"], t.loc["A", "exit_time"],
            t.loc["A", "exit_reason"]) == (DAYS[2], DAYS[4], "time_limit")
    # B: decided day 1, no bar on day 2: fills at its next bar, day 3; its 2 bars held are days 3 and 5, out at day 6
    assert (t.loc["B", "entry_time"], t.loc["B", "exit_time"],
            t.loc["B", "exit_reason"]) == (DAYS[3], DAYS[6], "time_limit")
    assert (t.loc["B", "entry_bar"], t.loc["B", "exit_bar"], t.loc["B", "bars_held"]) == (2, 4, 2)  # B's own bars
    assert t.loc["A", "entry_price"] == 51.0 and t.loc["B", "exit_price"] == 100.0
    # the union calendar: 8 days; B's position is valued at its last close on its holidays
    assert list(r.equity.index) == list(DAYS[:8])
    assert r.positions.loc[DAYS[4], "B"] == t.loc["B", "size"]


@pytest.mark.parametrize("engine", ["backtrader", "fast"])
def test_an_instrument_whose_data_ends_early_is_sold_at_its_last_close(engine):
    frames = {"A": _frame([50, 50, 50, 60], index=DAYS[:4]), "B": _frame([10] * 7, index=DAYS[:7])}
    sig = {"A": [0.9, np.nan, np.nan, np.nan], "B": [np.nan] * 7}
    r = _run(frames, sig, engine, max_positions=1, horizon=10)
    a = r.trades.iloc[0]
    assert (a.symbol, a.exit_time, a.exit_reason, a.exit_price) == ("A", DAYS[3], "end_of_data", 60.0)
    assert r.equity.iloc[3] == pytest.approx(r.equity.iloc[-1], rel=1e-12)  # all cash from day 3 on
    assert r.positions["A"].iloc[3:].eq(0).all()


def _random_universe(seed, n=4, bars=300):
    rng = np.random.default_rng(seed)
    days = pd.date_range("2015-01-01", periods=bars, freq="D", name="datetime")
    frames, sig = {}, {}
    for k in range(n):
        keep = np.sort(rng.choice(bars, size=int(bars * rng.uniform(0.6, 0.95)), replace=False))
        idx = days[keep]
        c = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, len(idx))))
        o = c * np.exp(rng.normal(0, 0.01, len(idx)))
        hi = np.maximum(o, c) * np.exp(np.abs(rng.normal(0, 0.01, len(idx))))
        lo = np.minimum(o, c) * np.exp(-np.abs(rng.normal(0, 0.01, len(idx))))
        df = pd.DataFrame({"open": o, "high": hi, "low": lo, "close": c, "volume": 1e6}, index=idx)
        df.attrs["source"] = f"random {k}"
        frames[f"S{k}"] = df
        sig[f"S{k}"] = pd.Series(rng.random(len(idx)), index=idx)
    return frames, sig


def _assert_same(a, b):
    assert len(a.trades) == len(b.trades) > 0
    for col in a.trades.columns:
        x, y = a.trades[col], b.trades[col]
        if x.dtype.kind == "f":
            np.testing.assert_allclose(x.to_numpy(), y.to_numpy(), rtol=1e-9, err_msg=col)
        else:
            assert (x.astype(str) == y.astype(str)).all(), col
    np.testing.assert_allclose(a.equity.to_numpy(), b.equity.to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(a.positions.to_numpy(), b.positions.to_numpy(), rtol=1e-9)
    assert a.stats["skipped_signals"] == b.stats["skipped_signals"]
    assert a.stats["rejected_entries"] == b.stats["rejected_entries"]


@pytest.mark.parametrize("seed, k, size_frac, slippage, commission", [
    (0, 2, None, 0.0, 0.0005), (1, 1, None, 0.001, 0.001), (2, 3, 0.5, 0.0005, 0.0), (3, 4, 0.9, 0.0, 0.002),
])
def test_fast_equals_backtrader_on_random_calendars_and_signals(seed, k, size_frac, slippage, commission):
    frames, sig = _random_universe(seed)
    kw = dict(max_positions=k, costs=Costs(slippage=slippage, commission=commission),
              rules=BarrierRules(size_frac=size_frac, threshold=0.6, horizon=7, pt=1.0, sl=1.0))
    _assert_same(run_portfolio(frames, sig, **kw), run_portfolio(frames, sig, run=RunConfig(engine="fast"), **kw))


def test_sweep_portfolio_gives_each_configuration_the_numbers_of_its_own_run(universe):
    frames, sig = universe
    frames = {s: frames[s] for s in ("goog", "nvda", "yhoo")}
    rng = np.random.default_rng(3)
    sides = {"nvda": pd.Series(np.where(rng.random(len(frames["nvda"])) > 0.5, 1, -1), index=frames["nvda"].index)}
    grid = pd.DataFrame({"threshold": [0.6, 0.75, 0.8, 0.6], "pt": [1.0, 2.0, 1.5, 2.0], "sl": [1.0, 1.0, 2.0, 1.5],
                         "horizon": [10, 5, 20, 10], "sizing": ["fixed", "fixed", "probability", "probability"],
                         "size_step": [0.0, 0.0, 0.0, 0.1],
                         "size_frac": [None, 0.3, None, None]})  # None (equity / max_positions) held as NaN
    run = RunConfig(engine="fast", start="2012-01-01", end="2016-06-30", benchmark=False)
    grid["max_positions"] = [2, 2, 1, 3]
    kw = dict(sides=sides, run=run, costs=Costs(commission=0.001, slippage=0.0005, borrow=0.02))
    stats, curves = sweep_portfolio(frames, sig, grid, equity=True, **kw)
    assert list(stats.columns[:8]) == ["threshold", "pt", "sl", "horizon", "size_frac", "sizing", "size_step",
                                       "max_positions"]
    for i, row in enumerate(grid.to_dict("records")):
        row["size_frac"] = None if np.isnan(row["size_frac"]) else row["size_frac"]
        most = row.pop("max_positions")
        one = run_portfolio(frames, sig, rules=BarrierRules(**row), max_positions=most, **kw)
        np.testing.assert_array_equal(curves[i].to_numpy(), one.equity.to_numpy())
        assert curves[i].index.equals(one.equity.index)
        for key in ("total_return", "cagr", "sharpe", "sortino", "max_drawdown", "n_trades", "win_rate",
                    "profit_factor", "avg_trade_return", "exposure", "end_value", "rejected_entries"):
            want = np.nan if one.stats[key] is None else one.stats[key]
            # trades summed in the kernel's exit order rather than run_portfolio's (exit time, symbol): rounding
            np.testing.assert_allclose(stats.loc[i, key], want, rtol=1e-12, err_msg=key)
    assert stats["n_trades"].nunique() == len(grid)  # the rows differ: each ran its own rules
    with pytest.raises(ValueError, match="configuration 1"):
        sweep_portfolio(frames, sig, {"threshold": [0.5, 1.5]}, run=run)
    with pytest.raises(ValueError, match="max_positions"):
        sweep_portfolio(frames, sig, {"max_positions": [2, 0]}, run=run)
    by_name = sweep_portfolio("goog,nvda", {s: sig[s] for s in ("goog", "nvda")}, {"threshold": [0.7]}, run=run)
    assert by_name.loc[0, "n_trades"] > 0  # a universe's name, loaded as run_portfolio loads it


@pytest.fixture(scope="module")
def universe():
    frames = load_universe("us_daily")
    rng = np.random.default_rng(7)
    return frames, {s: pd.Series(rng.random(len(df)), index=df.index) for s, df in frames.items()}


@pytest.mark.parametrize("k, threshold, start", [(3, 0.7, "2010-01-01"), (2, 0.55, None)])
def test_fast_equals_backtrader_on_the_bundled_universe(universe, k, threshold, start):
    frames, sig = universe
    run = RunConfig(start=start)
    kw = dict(max_positions=k, rules=BarrierRules(threshold=threshold), costs=Costs(slippage=0.0005))
    bt_run = run_portfolio(frames, sig, run=run, **kw)
    _assert_same(bt_run, run_portfolio(frames, sig, run=run.replace(engine="fast"), **kw))
    assert set(bt_run.trades["symbol"]) == set(frames)  # every instrument traded
    assert bt_run.stats["skipped_signals"] > 0


def test_truncating_the_future_changes_nothing_before_the_cut(universe):
    frames, sig = universe
    cut = pd.Timestamp("2012-06-01")
    run = RunConfig(start="2008-01-01")
    kw = dict(max_positions=3, rules=BarrierRules(threshold=0.65))
    full = run_portfolio(frames, sig, run=run, **kw)
    short_frames = {s: df.loc[:cut] for s, df in frames.items()}
    short_sig = {s: v.loc[:cut] for s, v in sig.items()}
    for engine in ("backtrader", "fast"):
        short = run_portfolio(short_frames, short_sig, run=run.replace(engine=engine), **kw)
        before = short.equity.index < short.equity.index[-1]  # the last time closes positions: costs differ
        np.testing.assert_array_equal(short.equity[before].to_numpy(),
                                      full.equity.loc[short.equity.index[before]].to_numpy())
        done = full.trades[full.trades["exit_time"] < short.equity.index[-1]].reset_index(drop=True)
        mine = short.trades[short.trades["exit_reason"] != "end_of_data"].reset_index(drop=True)
        mine = mine[mine["exit_time"] < short.equity.index[-1]].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, done[mine.columns])


@pytest.mark.parametrize("engine", ["backtrader", "fast"])
def test_a_one_instrument_universe_is_todays_single_asset_backtest(universe, engine):
    frames, sig = universe
    kw = dict(rules=BarrierRules(threshold=0.6), costs=Costs(slippage=0.001),
              run=RunConfig(start="2009-01-01", engine=engine))
    for sym in ("nvda", "goog"):
        one = run_portfolio({sym: frames[sym]}, {sym: sig[sym]}, **kw)
        single = run_backtest(frames[sym], "agent", signal=sig[sym], **kw)
        np.testing.assert_array_equal(one.equity.to_numpy(), single.equity.to_numpy())
        pd.testing.assert_frame_equal(one.trades.drop(columns="symbol"), single.trades, check_dtype=False)
        assert one.stats["total_return"] == single.stats["total_return"]


def test_run_backtest_dispatches_a_universe_and_refuses_baselines(universe):
    frames, sig = universe
    r = run_backtest(frames, "agent", signal=sig, max_positions=2, rules=BarrierRules(threshold=0.7),
                     run=RunConfig(start="2012-01-01"))
    assert r.config["strategy"] == "PortfolioAgentStrategy" and r.config["params"]["max_positions"] == 2
    assert r.benchmark_stats is not None and "not rebalanced" in r.config["benchmark"]
    with pytest.raises(ValueError, match="agent strategy only"):
        run_backtest(frames, "buyhold")
    with pytest.raises(ValueError, match="max_positions must be an integer >= 1"):
        run_portfolio(frames, sig, max_positions=0)
    with pytest.raises(ValueError, match="no signal for"):
        run_portfolio(frames, {"nvda": sig["nvda"]})
