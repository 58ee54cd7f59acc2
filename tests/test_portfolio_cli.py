"""run_backtest.py --data <universe>: a portfolio backtest end to end (tables, benchmark, contribution, PNG,
JSON, CSV), its refusals in one line, the IN-SAMPLE warning per member, per-symbol agents, the picture."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine import backtest_cli as run_backtest
from agents.artifact.runtime import OnnxAgent
from datafeeds import load_ohlcv

ROOT = Path(__file__).resolve().parents[1]
AGENT1 = str(ROOT / "models" / "agent1.onnx")  # pooled normalisation: trades any instrument


def _run(argv, capsys):
    code = run_backtest.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def us_daily_run(tmp_path_factory):
    """The README's command, with every output: exit code, stdout, stderr and the output paths."""
    folder = tmp_path_factory.mktemp("portfolio_cli")
    paths = {"plot": folder / "p.png", "report": folder / "r.json", "trades": folder / "t.csv"}
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_backtest.main(["--agent", AGENT1, "--data", "us_daily", "--max-positions", "3",
                                  "--plot", str(paths["plot"]), "--report", str(paths["report"]),
                                  "--trades", str(paths["trades"])])
    return code, out.getvalue(), err.getvalue(), paths


def test_portfolio_prints_stats_beside_the_benchmark_and_the_contribution(us_daily_run):
    code, out, err, _ = us_daily_run
    assert code == 0, err
    # agent1 saw data up to 2014-12-31: goog, nvda and orcl end by then, and are left out, named
    assert out.startswith("agent1 on us_daily: 3 instruments (nasdaq, sp500, yhoo), 2015-01-02 .. 2018-12-31")
    assert "at most 3 positions, equity / 3 per entry" in out.splitlines()[0]
    assert "left out" in err and all(s in err for s in ("goog", "nvda", "orcl"))
    assert "IN-SAMPLE" not in err
    lines = out.splitlines()
    assert lines[1].split() == ["agent1", "equal", "weight"]
    for row in ("total return", "Sharpe", "max drawdown", "trades", "final equity", "skipped signals",
                "rejected entries"):
        assert any(line.startswith(row) for line in lines), row
    bench = next(line for line in lines if line.startswith("benchmark:"))
    assert "equal-weight buy-and-hold" in bench and "not rebalanced" in bench and "same costs" in bench
    head = next(i for i, line in enumerate(lines) if line.startswith("instrument"))
    assert lines[head].split() == ["instrument", "bars", "first", "..", "last", "pnl", "return", "trades", "win",
                                   "rate", "exposure", "skipped", "rejected"]
    assert [line.split()[0] for line in lines[head + 1: head + 4]] == ["nasdaq", "sp500", "yhoo"]
    assert lines[head + 5].startswith("total")
    assert "year" in out and "monthly returns (%)" in out


def test_portfolio_report_csv_and_picture_agree(us_daily_run):
    code, out, err, paths = us_daily_run
    assert code == 0, err
    png = paths["plot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 30_000
    rep = json.loads(paths["report"].read_text())
    csv = pd.read_csv(paths["trades"])
    # trades: the CSV (with its symbol column) is the report's, and the stats count them
    assert list(csv.columns)[0] == "symbol" and set(csv["symbol"]) <= {"nasdaq", "sp500", "yhoo"}
    assert rep["stats"]["n_trades"] == len(rep["trades"]) == len(csv) > 50
    assert csv["pnl"].tolist() == pytest.approx([t["pnl"] for t in rep["trades"]], rel=1e-12)
    # contribution: per symbol from the trades, summing to the total pnl
    contribution = {r["symbol"]: r for r in rep["contribution"]}
    assert list(contribution) == ["nasdaq", "sp500", "yhoo"]
    for sym, row in contribution.items():
        mine = csv[csv["symbol"] == sym]
        assert row["trades"] == len(mine) and row["pnl"] == pytest.approx(mine["pnl"].sum(), rel=1e-9)
    total_pnl = rep["stats"]["end_value"] - rep["config"]["cash"]
    assert sum(r["pnl"] for r in contribution.values()) == pytest.approx(total_pnl, rel=1e-9)
    assert rep["contribution_total"]["pnl"] == pytest.approx(total_pnl, rel=1e-9)
    assert rep["contribution_total"]["trades"] == len(csv)
    # the benchmark: described, and its equity ends at its stats' final value
    assert "equal-weight buy-and-hold" in rep["benchmark"] and "not rebalanced" in rep["benchmark"]
    assert rep["benchmark_stats"]["end_value"] == pytest.approx(rep["bars"]["benchmark_equity"][-1], rel=1e-12)
    # config: what ran, what was left out, out-of-sample by default
    cfg = rep["config"]
    assert cfg["params"]["max_positions"] == 3 and cfg["params"]["size_frac"] is None
    assert cfg["sizing"] == "equity / 3 per entry" and cfg["symbols"] == ["nasdaq", "sp500", "yhoo"]
    assert cfg["left_out"] == ["goog", "nvda", "orcl"] and cfg["data"]["yhoo"]["end"].startswith("2015-12-31")
    last_seen = OnnxAgent.load(AGENT1).meta["dataset"]["last_bar_used"]
    assert rep["bars"]["datetime"][0] > last_seen
    n = len(rep["bars"]["datetime"])
    assert len(rep["bars"]["equity"]) == len(rep["bars"]["benchmark_equity"]) == n
    assert all(len(v) == n for v in rep["bars"]["positions"].values())
    # returns by year chain to the total return
    growth = np.prod([1.0 + r["strategy"] for r in rep["returns"]["yearly"]])
    assert growth - 1.0 == pytest.approx(rep["stats"]["total_return"], rel=1e-9)
    # the printed table shows the report's numbers
    assert f"{rep['stats']['end_value']:,.0f}" in out and f"{rep['benchmark_stats']['end_value']:,.0f}" in out


def test_max_positions_and_size_frac_reach_the_portfolio(tmp_path, capsys):
    report = tmp_path / "r.json"
    code, out, err = _run(["--agent", AGENT1, "--data", "sp500,nasdaq", "--start", "2016-01-01", "--end", "2016-12-31",
                           "--max-positions", "1", "--size-frac", "0.5", "--no-plot", "--report", str(report)], capsys)
    assert code == 0, err
    rep = json.loads(report.read_text())
    assert rep["config"]["params"]["max_positions"] == 1 and rep["config"]["sizing"] == "0.5 x equity per entry"
    assert rep["stats"]["skipped_signals"] > 0  # both signal on the same days: one slot
    equity = pd.Series(rep["bars"]["equity"], index=pd.to_datetime(rep["bars"]["datetime"]))
    times = equity.index
    for t in rep["trades"][:5]:  # about half the equity at the decision, one position at a time
        decided = times[times.get_loc(pd.Timestamp(t["signal_time"]))]
        assert t["size"] * t["entry_price"] == pytest.approx(0.5 * equity[decided], rel=0.05)
    spans = sorted((pd.Timestamp(t["entry_time"]), pd.Timestamp(t["exit_time"])) for t in rep["trades"])
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    # default: a slot per instrument traded
    code, out, err = _run(["--agent", AGENT1, "--data", "sp500,nasdaq", "--start", "2016-01-01", "--end", "2016-12-31",
                           "--no-plot", "--report", str(report)], capsys)
    assert code == 0, err
    assert json.loads(report.read_text())["config"]["params"]["max_positions"] == 2
    assert "at most 2 positions, equity / 2 per entry" in out


def test_in_sample_warning_names_the_members_overlapping_the_training_period(tmp_path, capsys):
    late = tmp_path / "late.csv"  # a member whose whole period is after agent1's training data
    load_ohlcv("sp500", start="2015-03-01", end="2016-06-30").to_csv(late)
    code, out, err = _run(["--agent", AGENT1, "--data", f"nvda,{late}", "--start", "2014-06-02", "--no-plot",
                           "--quiet"], capsys)
    assert code == 0, err
    warning = next(line for line in err.splitlines() if "IN-SAMPLE" in line)
    assert warning.startswith("warning: for nvda (1 of 2 instruments) the period overlaps the agent's training "
                              "period (1999-01-04 .. 2014-12-31, on sp500)")
    assert "late" not in warning
    assert "the first 81 bars of late are the agent's warm-up" in err  # it has no earlier history


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--strategy", "smacross", "--data", "us_daily"], "--strategy smacross trades one instrument"),
        (["--strategy", "buyhold", "--data", "sp500,nasdaq"], "--strategy buyhold trades one instrument"),
        (["--agent", AGENT1, "--data", "us_daily", "--max-positions", "0"],
         "--max-positions 0: must be a whole number of positions in 1..100,000"),
        (["--agent", AGENT1, "--data", "us_daily", "--max-positions", "-2"], "--max-positions -2"),
        (["--agent", AGENT1, "--data", "sp500", "--max-positions", "2"], "--data sp500 is one instrument"),
        (["--agent", AGENT1, "--data", "us_daily", "--live"], "--live streams one instrument"),
        (["--agent", AGENT1, "--data", "us_daily", "--start", "2030-01-01"], "need at least 2"),
        (["--agent", AGENT1, "--data", "us_daily", "--size-frac", "1.5"], "--size-frac 1.5"),
    ],
)
def test_portfolio_user_errors_exit_2_with_one_line(argv, message, capsys):
    code, out, err = _run(argv + ["--no-plot"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err
    assert out == ""


def test_default_plot_path_names_the_agent_and_the_universe(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(["--agent", AGENT1, "--data", "sp500,nasdaq", "--start", "2016-01-01", "--end",
                           "2016-06-30", "--quiet"], capsys)
    assert code == 0, err
    assert (tmp_path / "reports" / "agent1_sp500+nasdaq.png").stat().st_size > 20_000
    folder = tmp_path / "my stocks"  # a directory universe: named after the directory, made safe for a file name
    folder.mkdir()
    for sym in ("nvda", "orcl"):
        load_ohlcv(sym, start="2013-01-01", end="2014-12-31").to_csv(folder / f"{sym}.csv")
    code, out, err = _run(["--agent", AGENT1, "--data", str(folder), "--start", "2014-06-02"], capsys)
    assert code == 0, err
    assert out.startswith("agent1 on my_stocks: 2 instruments (nvda, orcl), 2014-06-02 .. 2014-12-31")
    assert "plot: reports/agent1_my_stocks.png" in out and (tmp_path / "reports" / "agent1_my_stocks.png").is_file()


def test_fast_engine_gives_the_backtrader_portfolio(tmp_path, capsys):
    args = ["--agent", AGENT1, "--data", "us_daily", "--start", "2013-01-01", "--end", "2015-12-31",
            "--max-positions", "2", "--slippage", "0.0002", "--no-plot"]
    for eng in ("backtrader", "fast"):
        code, out, err = _run(args + ["--engine", eng, "--report", str(tmp_path / f"{eng}.json")], capsys)
        assert code == 0, err
    bt_rep, fast_rep = (json.loads((tmp_path / f"{e}.json").read_text()) for e in ("backtrader", "fast"))
    assert fast_rep["config"]["engine"] == "fast" and bt_rep["config"]["engine"] == "backtrader"
    assert len(bt_rep["trades"]) > 20 and bt_rep["stats"]["skipped_signals"] > 0
    bt_trades, fast_trades = pd.DataFrame(bt_rep["trades"]), pd.DataFrame(fast_rep["trades"])
    assert fast_trades.drop(columns=["pnl", "ret", "commission", "entry_price", "exit_price", "size", "atr"]).equals(
        bt_trades.drop(columns=["pnl", "ret", "commission", "entry_price", "exit_price", "size", "atr"]))
    assert fast_trades["pnl"].tolist() == pytest.approx(bt_trades["pnl"].tolist(), rel=1e-9, abs=1e-6)
    assert fast_rep["bars"]["equity"] == pytest.approx(bt_rep["bars"]["equity"], rel=1e-9)
    assert fast_rep["contribution"] == bt_rep["contribution"] or all(
        f["trades"] == b["trades"] for f, b in zip(fast_rep["contribution"], bt_rep["contribution"]))


# ---------------------------------------------------------------------------------------- per-symbol agent

@pytest.fixture(scope="module")
def per_symbol_agent(tmp_path_factory):
    """A tiny agent trained on sp500, nvda, goog with per-symbol normalisation (seconds on 2 cores)."""
    from agents.training.config import TrainConfig
    from agents.training.trainer import train

    folder = tmp_path_factory.mktemp("per_symbol_agent")
    cfg = TrainConfig(data="sp500,nvda,goog", start="2005-01-01", seq_len=16, d_model=16, n_heads=2, n_layers=1,
                      epochs=1, batch_size=64, horizon=10, normalise="per-symbol")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TBM_CACHE", str(folder / "cache"))
        train(cfg, folder / "ps.onnx", checkpoint_dir=folder / "ck", progress=False, exporter="torchscript")
    return folder / "ps.onnx"


def test_a_per_symbol_agent_trades_its_universe_with_each_members_statistics(per_symbol_agent, tmp_path, capsys):
    report = tmp_path / "r.json"
    # no --data: the agent's own universe, after its training data (goog ends before: left out)
    code, out, err = _run(["--agent", str(per_symbol_agent), "--no-plot", "--report", str(report)], capsys)
    assert code == 0, err
    assert "IN-SAMPLE" not in err and "goog" in err
    rep = json.loads(report.read_text())
    assert rep["config"]["symbols"] == ["nvda", "sp500"] and rep["config"]["universe"] == "sp500,nvda,goog"
    assert rep["bars"]["datetime"][0] > OnnxAgent.load(per_symbol_agent).meta["dataset"]["last_bar_used"]
    times = pd.to_datetime(rep["bars"]["datetime"])
    for sym in ("nvda", "sp500"):  # each member's signal with its own statistics, as a fresh agent computes it
        expected = OnnxAgent.load(per_symbol_agent).predict_proba(load_ohlcv(sym)).reindex(times)
        got = pd.Series(rep["bars"]["signals"][sym], index=times, dtype=np.float64)
        np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-6, atol=1e-7)


def test_a_per_symbol_agent_refuses_non_members_and_warns_in_sample(per_symbol_agent, capsys):
    code, out, err = _run(["--agent", str(per_symbol_agent), "--data", "sp500,nvda,nasdaq", "--no-plot"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "per-symbol normalisation on goog, nvda, sp500 and trades only those, not nasdaq" in err
    code, out, err = _run(["--agent", str(per_symbol_agent), "--start", "2012-01-01", "--end", "2013-12-31",
                           "--no-plot", "--quiet"], capsys)
    assert code == 0, err
    assert "for goog, nvda, sp500 (3 of 3 instruments)" in err and "on 3 instruments (goog, nvda, sp500)" in err
    assert "IN-SAMPLE" in err


# ---------------------------------------------------------------------------------------- the picture

@pytest.fixture(scope="module")
def small_portfolio():
    from engine.portfolio import run_portfolio

    frames = {s: load_ohlcv(s, start="2014-06-01", end="2015-12-31") for s in ("sp500", "nasdaq", "yhoo")}
    signals = {s: pd.Series(0.4 + 0.2 * np.sin(np.arange(len(f)) / 3.0 + k), index=f.index)
               for k, (s, f) in enumerate(frames.items())}
    from engine import RunConfig

    return run_portfolio(frames, signals, max_positions=2, run=RunConfig(start="2015-01-01"))


def test_portfolio_figure_has_the_four_panels(small_portfolio):
    from engine.plotting import portfolio_figure

    res = small_portfolio
    fig = portfolio_figure(res, "test title", label="mine")
    eq, dd, pos, con = fig.axes
    assert "test title" in fig._suptitle.get_text() and "at most 2 positions" in fig._suptitle.get_text()
    legend = [t.get_text() for t in eq.get_legend().get_texts()]
    assert legend[1].startswith("mine") and legend[2].startswith("equal weight")
    assert legend[2].split()[-1] == "3"  # one buy-and-hold trade per sleeve
    assert dd.get_ylabel() == "drawdown %"
    assert [t.get_text() for t in pos.get_yticklabels()] == ["yhoo", "sp500", "nasdaq", "open (0..2)"]
    assert [t.get_text() for t in con.get_yticklabels()] == ["nasdaq", "sp500", "yhoo"]
    texts = [t.get_text() for t in con.texts]
    for sym, row in res.contribution.iterrows():
        assert any(t.startswith(f"{row['pnl']:+,.0f}") and f"{int(row['trades'])} trades" in t for t in texts), sym
    widths = sorted(p.get_width() for p in con.patches)
    assert widths == pytest.approx(sorted(res.contribution["pnl"]))


def test_plot_portfolio_writes_a_png_atomically(small_portfolio, tmp_path):
    from engine.plotting import plot_portfolio

    path = plot_portfolio(small_portfolio, tmp_path / "sub" / "p.png", "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["p.png"]  # no temporary file left
    with pytest.raises(ValueError, match=".png"):
        plot_portfolio(small_portfolio, tmp_path / "p.jpg")


def test_the_picture_title_names_only_the_instruments_traded(tmp_path, capsys, monkeypatch):
    import engine.plotting

    titles = []
    monkeypatch.setattr(engine.plotting, "plot_portfolio", lambda result, path, title, label: titles.append(title))
    # goog's data ends in 2014, before the out-of-sample period: it is left out
    code, out, err = _run(["--agent", AGENT1, "--data", "sp500,goog,nasdaq", "--end", "2015-06-30", "--quiet",
                           "--plot", str(tmp_path / "p.png")], capsys)
    assert code == 0, err
    assert "left out" in err and "goog" in err
    assert titles == ["agent1 on nasdaq+sp500 (1 of 3 instruments left out)"]  # in symbol order, as the tables
