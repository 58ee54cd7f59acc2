"""engine.report: the main command's tables and files from small hand-made results, with known text."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from engine import report

T = pd.Timestamp


def _result(equity, bench=None, trades=None, signal=None, **stats):
    idx = pd.DatetimeIndex([T(t) for t in equity])
    return SimpleNamespace(
        equity=pd.Series(list(equity.values()), index=idx, dtype=float),
        benchmark_equity=None if bench is None else pd.Series(bench, index=idx, dtype=float),
        trades=pd.DataFrame(trades or [], columns=["exit_reason", "pnl"]),
        signal=None if signal is None else pd.Series(signal, index=idx),
        stats=stats, benchmark_stats={"total_return": 0.5, "n_trades": 1, "profit_factor": None},
        config={"strategy": "agent", "engine": "backtrader", "cash": 100.0},
    )


# three year-ends: 100 -> 110 (+10%) -> 99 (-10%); buy-and-hold 100 -> 100 -> 150
EQUITY = {"2019-12-31": 100.0, "2020-12-31": 110.0, "2021-12-31": 99.0}


def test_results_table_puts_the_strategy_beside_the_benchmark():
    res = _result(EQUITY, trades=[("take_profit", 1.0), ("stop_loss", -1.0), ("take_profit", 2.0)],
                  total_return=-0.01, sharpe=float("nan"), n_trades=3, end_value=99.0)
    lines = report.results_table(res, "agent1").splitlines()
    assert lines[0] == f"{'':<24}{'agent1':>12}  {'buy & hold':>12}"
    assert lines[1] == f"{'total return':<24}{'-1.00%':>12}  {'+50.00%':>12}"
    assert lines[4] == f"{'Sharpe':<24}{'n/a':>12}  {'n/a':>12}"  # NaN, and a missing key, are n/a
    assert lines[9] == f"{'trades':<24}{'3':>12}  {'1':>12}"
    assert lines[11] == f"{'profit factor':<24}{'n/a':>12}  {'n/a':>12}"
    assert lines[14] == f"{'final equity':<24}{'99':>12}  {'n/a':>12}"
    assert lines[-1] == "exits: take_profit 2, stop_loss 1"
    assert len(lines) == 1 + len(report.ROWS) + 1


def test_a_portfolio_table_blanks_the_trade_rows_of_a_benchmark_without_trades():
    res = _result(EQUITY, skipped_signals=4, rejected_entries=0)
    res.benchmark_stats = {"total_return": 0.5, "exposure": 1.0}  # computed without trades
    lines = report.portfolio_table(res, "agent1").splitlines()
    assert lines[0].split() == ["agent1", "equal", "weight"]
    assert next(ln for ln in lines if ln.startswith("exposure")).split() == ["exposure", "n/a", "n/a"]
    assert lines[-2:] == [f"{'skipped signals':<24}{'4':>12}  {'n/a':>12}",
                          f"{'rejected entries':<24}{'0':>12}  {'n/a':>12}"]


def test_returns_by_period_chain_and_print_as_tables():
    res = _result(EQUITY, bench=[100.0, 100.0, 150.0])
    returns = report.returns_by_period(res)
    assert [r["period"] for r in returns["yearly"]] == ["2019", "2020", "2021"]
    assert [r["strategy"] for r in returns["yearly"]] == pytest.approx([0.0, 0.1, -0.1])
    assert [r["buy_and_hold"] for r in returns["yearly"]] == pytest.approx([0.0, 0.0, 0.5])
    assert [r["period"] for r in returns["monthly"]] == ["2019-12", "2020-12", "2021-12"]
    text = report.returns_tables(returns, "agent1").splitlines()
    assert text[:4] == ["year     agent1  buy & hold", "2019     +0.00%      +0.00%", "2020    +10.00%      +0.00%",
                        "2021    -10.00%     +50.00%"]
    assert text[5] == "agent1 monthly returns (%)"
    assert text[6] == "year " + "".join(f"{m:>7}" for m in ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
                                                           "Sep", "Oct", "Nov", "Dec"))
    assert text[8] == "2020 " + " " * 7 * 11 + "  +10.0"  # only December has a bar
    no_bench = report.returns_by_period(_result(EQUITY))
    assert no_bench["yearly"][1]["buy_and_hold"] is None
    assert report.returns_tables(no_bench, "smacross").splitlines()[2] == "2020    +10.00%         n/a"


def test_header_lines_say_what_ran_with_which_costs():
    facts = dict(start="2015-01-02 00:00:00", end="2018-12-31 00:00:00", cash=100_000.0, commission=0.0005,
                 slippage=0.0)
    res = SimpleNamespace(equity=pd.Series(np.ones(1006)), config=dict(
        facts, risk_free=0.0, params={"size_frac": 1.0, "threshold": 0.54471}))
    assert report.header_line("agent1", "sp500", res) == (
        "agent1 on sp500, 2015-01-02 .. 2018-12-31 (1006 bars), cash 100,000, commission 0.0005, slippage 0, "
        "threshold 0.5447")
    res.config.update(risk_free=0.02, params={"size_frac": 0.5, "fast": 5, "slow": 20})
    assert report.header_line("smacross", "x.csv", res) == (
        "smacross on x.csv, 2015-01-02 .. 2018-12-31 (1006 bars), cash 100,000, commission 0.0005, slippage 0, "
        "size 0.5 of equity, SMA 5/20, risk-free 2.00%")
    res = _result(EQUITY)
    res.config.update(facts, risk_free=0.0, symbols=["a", "b"], sizing="equity / 3 per entry",
                      params={"max_positions": 3, "threshold": 0.5})
    assert report.portfolio_header_line("agent1", "us", res) == (
        "agent1 on us: 2 instruments (a, b), 2015-01-02 .. 2018-12-31 (3 times), at most 3 positions, "
        "equity / 3 per entry, cash 100,000, commission 0.0005, slippage 0, threshold 0.5000")


def _portfolio_result():
    idx = pd.DatetimeIndex([T("2020-01-01"), T("2020-01-02"), T("2020-01-03")])
    contribution = pd.DataFrame({"pnl": [30.0, -10.0], "return_contribution": [0.3, -0.1], "trades": [2.0, 1.0],
                                 "win_rate": [1.0, np.nan], "exposure": [0.5, 0.25], "skipped_signals": [0.0, 3.0],
                                 "rejected_entries": [0.0, 0.0]}, index=["aa", "b"])
    return SimpleNamespace(
        contribution=contribution, equity=pd.Series([100.0, 110.0, 120.0], index=idx), benchmark_equity=None,
        stats={"win_rate": 2 / 3, "exposure": 0.6, "total_return": 0.2}, benchmark_stats=None,
        trades=pd.DataFrame({"symbol": ["aa"], "pnl": [1.0]}),
        positions=pd.DataFrame({"aa": [0.0, 1.0, 1.0], "b": [0.0, 0.0, 2.0]}, index=idx),
        config={"symbols": ["aa", "b"], "cash": 100.0,
                "data": {"aa": {"bars": 3, "start": "2020-01-01 00:00:00", "end": "2020-01-03 00:00:00"},
                         "b": {"bars": 2, "start": "2020-01-02 00:00:00", "end": "2020-01-03 00:00:00"}}},
    )


def test_contribution_rows_and_table_add_up_to_a_total():
    res = _portfolio_result()
    rows = report.contribution_rows(res)
    assert [r["symbol"] for r in rows] == ["aa", "b", "total"]
    assert rows[1]["win_rate"] is None and rows[1]["skipped_signals"] == 3 and isinstance(rows[0]["trades"], int)
    assert rows[2] == {"symbol": "total", "bars": None, "first": None, "last": None, "pnl": 20.0,
                       "return_contribution": pytest.approx(0.2), "trades": 3, "win_rate": 2 / 3, "exposure": 0.6,
                       "skipped_signals": 3, "rejected_entries": 0}
    lines = report.contribution_table(rows).splitlines()
    assert lines[0] == ("instrument  bars             first .. last  pnl   return  trades  win rate  exposure  "
                        "skipped  rejected")
    assert lines[1] == ("aa             3  2020-01-01 .. 2020-01-03  +30  +30.00%       2    100.0%     50.0%  "
                        "      0         0")
    assert lines[2].split() == ["b", "2", "2020-01-02", "..", "2020-01-03", "-10", "-10.00%", "1", "n/a", "25.0%",
                                "3", "0"]
    assert lines[3] == "-" * len(lines[0])
    assert lines[4].split() == ["total", "+20", "+20.00%", "3", "66.7%", "60.0%", "3", "0"]
    assert lines[5].startswith("return: pnl / starting cash")
    assert report.benchmark_line(res) == (
        "benchmark: equal-weight buy-and-hold of the 2 instruments, 50 each (cash / 2) bought at each one's second "
        "bar's open and held to its last bar, not rebalanced, same costs")


def test_labels_are_safe_file_names(tmp_path):
    assert report.file_label("my data/2020 (v2)") == "my_data_2020_v2"
    assert report.file_label("..") == "data" and report.file_label("a+b-c.d") == "a+b-c.d"
    assert report.universe_label("us_daily", ["sp500"]) == "us_daily"  # a bundled universe: its name
    folder = tmp_path / "my stocks"
    folder.mkdir()
    assert report.universe_label(str(folder), ["x", "y"]) == "my_stocks"  # a folder: its name
    assert report.universe_label("a.csv,b.csv", ["a", "b"]) == "a+b"
    assert report.universe_label("*.csv", list("abcde")) == "5_instruments"


def test_the_json_report_holds_the_run_and_writes_without_nan(tmp_path):
    res = _result(EQUITY, bench=[100.0, 100.0, 150.0], signal=[0.2, np.nan, 0.9], trades=[("stop_loss", -1.0)],
                  sharpe=float("nan"), n_trades=1)
    returns = report.returns_by_period(res)
    rep = report.build_report(res, agent="models/a.onnx", data="sp500", engine="fast", notes=["note: x"],
                              returns=returns)
    assert list(rep) == ["config", "notes", "stats", "sides", "benchmark_stats", "returns", "trades", "bars"]
    # a trades frame without a side column is all long: one row for the long side, its pnl on the cash
    assert rep["sides"] == [{"side": "long", "trades": 1, "win_rate": 0.0, "pnl": -1.0, "return_contribution": -0.01,
                             "exits": {"stop_loss": 1}}]
    assert rep["config"] == {"strategy": "agent", "engine": "fast", "cash": 100.0, "agent": "models/a.onnx",
                             "data": "sp500"}  # the option's engine, in the config's own place
    assert rep["stats"]["sharpe"] is None and rep["bars"]["signal"] == [0.2, None, 0.9]
    assert rep["bars"]["datetime"][0] == "2019-12-31 00:00:00" and rep["trades"] == [{"exit_reason": "stop_loss",
                                                                                     "pnl": -1.0}]
    path = tmp_path / "r.json"
    report.write_report(path, rep)
    assert json.loads(path.read_text()) == rep
    with pytest.raises(ValueError):
        report.write_report(tmp_path / "nan.json", {"x": float("nan")})  # JSON has no NaN: refused, not written
    assert not (tmp_path / "nan.json").exists()
    report.write_trades(tmp_path / "t.csv", res.trades)
    assert (tmp_path / "t.csv").read_text() == "exit_reason,pnl\nstop_loss,-1.0\n"


def test_the_portfolio_report_holds_each_instrument():
    res = _portfolio_result()
    sig = pd.Series([0.1, 0.2, 0.3], index=res.equity.index)
    rows = report.contribution_rows(res)
    about = {"agent": "a.onnx", "universe": "us", "members": ["aa", "b", "c"], "left_out": ["c"]}
    rep = report.build_portfolio_report(res, about=about, notes=[], signals={"aa": sig, "b": sig.iloc[1:]}, returns={},
                                        contribution=rows)
    assert rep["config"]["members"] == ["aa", "b", "c"] and rep["config"]["left_out"] == ["c"]
    assert [r["symbol"] for r in rep["contribution"]] == ["aa", "b"] and rep["contribution_total"]["pnl"] == 20.0
    assert rep["benchmark"].startswith("equal-weight buy-and-hold of the 2 instruments")
    assert rep["bars"]["positions"] == {"aa": [0.0, 1.0, 1.0], "b": [0.0, 0.0, 2.0]}
    assert rep["bars"]["signals"]["b"] == [None, 0.2, 0.3]  # aligned to the portfolio's times
