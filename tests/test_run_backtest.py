"""run_backtest.py: the main command works on a fresh install, and every user error is one line + exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pandas as pd
import pytest

from engine import backtest_cli as run_backtest
from agents.data.features import FeatureSpec
from agents.artifact.metadata import METADATA_KEY
from datafeeds import load_ohlcv

ROOT = Path(__file__).resolve().parents[1]


def _run(argv, capsys):
    code = run_backtest.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_main_command_on_the_shipped_agent_is_out_of_sample(tmp_path):
    plot, report = tmp_path / "eq.png", tmp_path / "r.json"
    done = subprocess.run(
        [sys.executable, "run_backtest.py", "--agent", "models/agent1.onnx", "--plot", str(plot),
         "--report", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "buy & hold" in done.stdout and "Sharpe" in done.stdout
    assert "IN-SAMPLE" not in done.stderr
    assert plot.stat().st_size > 20_000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rep = json.loads(report.read_text())
    meta = {p.key: p.value for p in onnx.load(str(ROOT / "models/agent1.onnx")).metadata_props}
    last_seen = json.loads(meta[METADATA_KEY])["dataset"]["last_bar_used"]
    assert rep["bars"]["datetime"][0] > last_seen  # out-of-sample by default
    assert rep["stats"]["n_trades"] == len(rep["trades"])
    assert len(rep["bars"]["equity"]) == len(rep["bars"]["signal"]) == len(rep["bars"]["datetime"])
    assert rep["benchmark_stats"]["n_trades"] == 1
    assert rep["config"]["commission"] == 0.0005


def test_report_round_trips_the_result(tiny_agent, tmp_path, capsys):
    path, _ = tiny_agent
    report = tmp_path / "r.json"
    code, out, err = _run(["--agent", str(path), "--report", str(report), "--no-plot", "--threshold", "0.3"], capsys)
    assert code == 0, err
    rep = json.loads(report.read_text())
    equity = pd.Series(rep["bars"]["equity"], index=pd.to_datetime(rep["bars"]["datetime"]))
    assert equity.iloc[-1] == pytest.approx(rep["stats"]["end_value"])
    assert rep["config"]["params"]["threshold"] == 0.3
    assert {t["exit_reason"] for t in rep["trades"]} <= {"take_profit", "stop_loss", "time_limit", "end_of_data"}


def test_in_sample_period_is_flagged(tiny_agent, capsys):
    code, out, err = _run(["--agent", str(tiny_agent[0]), "--start", "2012-01-01", "--end", "2012-12-31", "--no-plot"],
                          capsys)
    assert code == 0
    assert "IN-SAMPLE" in err


def test_live_mode_gives_the_same_trades_as_batch(tiny_agent, tmp_path, capsys):
    args = ["--agent", str(tiny_agent[0]), "--start", "2015-06-01", "--end", "2015-12-31", "--no-plot",
            "--threshold", "0.3"]
    assert run_backtest.main(args + ["--report", str(tmp_path / "b.json")]) == 0
    assert run_backtest.main(args + ["--live", "--report", str(tmp_path / "l.json")]) == 0
    batch, live = (json.loads((tmp_path / n).read_text()) for n in ("b.json", "l.json"))
    assert batch["trades"] and batch["trades"] == live["trades"]
    assert batch["bars"]["equity"] == live["bars"]["equity"]


def test_fast_engine_gives_the_backtrader_trades(tiny_agent, tmp_path):
    args = ["--agent", str(tiny_agent[0]), "--no-plot", "--threshold", "0.3", "--slippage", "0.0002"]
    assert run_backtest.main(args + ["--report", str(tmp_path / "bt.json")]) == 0
    assert run_backtest.main(args + ["--engine", "fast", "--report", str(tmp_path / "fast.json")]) == 0
    bt_rep, fast_rep = (json.loads((tmp_path / n).read_text()) for n in ("bt.json", "fast.json"))
    assert len(bt_rep["trades"]) > 5
    assert pd.DataFrame(fast_rep["trades"]).equals(pd.DataFrame(bt_rep["trades"]))
    assert fast_rep["bars"]["equity"] == pytest.approx(bt_rep["bars"]["equity"], rel=1e-9)


def _agent_needing_book(src: Path, dst: Path) -> Path:
    proto = onnx.load(str(src))
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            card = json.loads(prop.value)
            for feat in card["features"]["features"]:
                if feat["name"] == "obi":
                    feat["params"]["source"] = "book"
            card["warmup"] = FeatureSpec.from_dict(card["features"]).warmup + card["seq_len"] - 1  # stays consistent
            prop.value = json.dumps(card)
    onnx.save(proto, str(dst))
    return dst


@pytest.fixture
def short_csv(tmp_path):
    path = tmp_path / "short.csv"
    load_ohlcv("sp500", start="2017-01-01").iloc[:50].to_csv(path)  # after training, shorter than warm-up
    return path


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda a, d: ["--agent", str(d / "missing.onnx")], "agent file not found"),
        (lambda a, d: ["--agent", str(_junk(d))], "not an ONNX model"),
        (lambda a, d: ["--agent", str(_agent_needing_book(a, d / "book.onnx"))],
         "needs column(s) ['bid_size', 'ask_size']"),
        (lambda a, d: ["--agent", str(a), "--data", "sp5000"], "did you mean 'sp500'"),
        (lambda a, d: ["--agent", str(a), "--data", str(d / "short.csv")], "bars of warm-up"),
        (lambda a, d: ["--agent", str(a), "--start", "2030-01-01"], "need at least 2"),
        (lambda a, d: ["--agent", str(a), "--start", "yesterday-ish"], "not an ISO date"),
        (lambda a, d: ["--agent", str(a), "--start", "01/02/2016"], "--start: '01/02/2016' is not an ISO date"),
        (lambda a, d: ["--agent", str(a), "--end", "31/12/2016"], "--end: '31/12/2016' is not an ISO date"),
        (lambda a, d: ["--agent", str(a), "--size-frac", "1.5"], "--size-frac 1.5: must be in (0, 1] (no leverage)"),
        (lambda a, d: ["--agent", str(a), "--risk-free", "5"], "--risk-free 5.0: must be an annual rate"),
        (lambda a, d: ["--agent", str(a), "--fast", "5"], "--fast sets the smacross strategy"),
        (lambda a, d: ["--strategy", "smacross", "--fast", "30", "--slow", "10"],
         "--fast 30 must be shorter than --slow 10"),
        (lambda a, d: ["--strategy", "smacross", "--agent", str(a)], "--agent sets the agent strategy"),
        (lambda a, d: ["--agent", str(a), "--trades", str(d / "t.txt")], "--trades"),
        (lambda a, d: ["--agent", str(a), "--strategy", "smacros"], "did you mean 'smacross'"),
        (lambda a, d: ["--agent", str(a), "--cash", "-5"], "--cash -5.0: must be a positive finite amount"),
        (lambda a, d: ["--agent", str(a), "--threshold", "1.5"], "--threshold"),
        (lambda a, d: ["--agent", str(a), "--horizon", "0"], "--horizon"),
        (lambda a, d: ["--agent", str(a), "--commission", "-0.1"], "--commission"),
        (lambda a, d: ["--agent", str(a), "--plot", str(d / "x.jpg")], ".png"),
        (lambda a, d: ["--agent", str(a), "--cash", "inf"], "--cash inf"),
        (lambda a, d: ["--agent", str(a), "--live", "--engine", "fast"], "drop --engine fast"),
        (lambda a, d: ["--strategy", "buyhold", "--pt", "2"], "--pt sets the agent strategy"),
        (lambda a, d: ["--agent", str(a), "--data", "stoxx50_1d"], "before the agent's training data does"),
        (lambda a, d: ["--agent", "models/agent1.onnx", "--data", "eurusd_1h"],
         "--data eurusd_1h has a bar every 1 hour but agent models/agent1.onnx was trained on a bar every 1 day"),
        (lambda a, d: ["--agent", str(a), "--data", str(_weekly(d))], "has a bar every 1 week but agent"),
    ],
)
def test_user_errors_exit_2_with_one_line(tiny_agent, tmp_path, short_csv, capsys, make_args, message):
    code, out, err = _run(make_args(tiny_agent[0], tmp_path) + ["--no-plot"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err
    assert "Traceback" not in err


def test_any_frequency_runs_an_agent_on_bars_it_was_not_trained_on(tiny_agent, tmp_path, capsys):
    code, out, err = _run(["--agent", str(tiny_agent[0]), "--data", str(_weekly(tmp_path)), "--any-frequency",
                           "--no-plot", "--quiet"], capsys)
    assert code == 0, err
    assert "buy & hold" in out


def _weekly(d: Path) -> Path:
    path = d / "weekly.csv"
    df = load_ohlcv("sp500", start="2015-01-01")
    df.resample("W-FRI").agg({"open": "first", "high": "max", "low": "min", "close": "last",
                              "volume": "sum"}).to_csv(path)
    return path


def _junk(d: Path) -> Path:
    path = d / "junk.onnx"
    path.write_bytes(b"\x00garbage")
    return path


def test_unknown_option_is_a_usage_error():
    done = subprocess.run([sys.executable, "run_backtest.py", "--agnet", "x"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "unrecognized arguments" in done.stderr


def test_baselines_run_by_name_without_an_agent(tmp_path, capsys):
    code, out, err = _run(["--strategy", "buyhold", "--agent", str(tmp_path / "none.onnx"), "--data", "nasdaq",
                           "--start", "2018-01-01", "--no-plot"], capsys)
    assert code == 2 and "--agent sets the agent strategy" in err  # baselines take no agent
    code, out, err = _run(["--strategy", "smacross", "--data", "nasdaq", "--start", "2018-01-01", "--no-plot"], capsys)
    assert code == 0, err
    assert "smacross" in out and "buy & hold" in out


def test_unwritable_outputs_are_one_line_errors(tiny_agent, capsys):
    code, out, err = _run(["--agent", str(tiny_agent[0]), "--plot", "/proc/nowhere/x.png", "--quiet"], capsys)
    assert code == 2 and err.strip() == "error: cannot write /proc/nowhere/x.png: No such file or directory"


def test_other_data_defaults_to_after_the_training_period_too(tiny_agent, tmp_path, capsys):
    report = tmp_path / "r.json"
    code, out, err = _run(["--agent", str(tiny_agent[0]), "--data", "nasdaq", "--no-plot", "--report", str(report)],
                          capsys)
    assert code == 0 and "IN-SAMPLE" not in err
    last_seen = tiny_agent[1].card["dataset"]["last_bar_used"]
    assert json.loads(report.read_text())["bars"]["datetime"][0] > last_seen
    code, out, err = _run(["--agent", str(tiny_agent[0]), "--data", "nasdaq", "--start", "2010-01-01", "--no-plot"],
                          capsys)
    assert code == 0 and "IN-SAMPLE" in err and "on sp500" in err


@pytest.mark.parametrize("strategy", ["smacross", "buyhold"])
def test_baselines_never_touch_an_agent_and_default_to_the_whole_file(strategy, tmp_path, capsys, monkeypatch):
    # an old file of another market: the shipped agent's dates (trained to 2014) must play no part
    csv = tmp_path / "stoxx.csv"
    load_ohlcv("stoxx50_1d").to_csv(csv)
    monkeypatch.setattr(run_backtest, "DEFAULT_AGENT", str(tmp_path / "no_agent_here.onnx"))
    report = tmp_path / "r.json"
    code, out, err = _run(["--strategy", strategy, "--data", str(csv), "--no-plot", "--report", str(report)], capsys)
    assert code == 0, err
    assert err == ""  # no IN-SAMPLE warning, no note about an agent
    rep = json.loads(report.read_text())
    assert rep["bars"]["datetime"][0] == "2005-01-03 00:00:00" and rep["bars"]["datetime"][-1] == "2006-12-29 00:00:00"
    assert rep["config"]["agent"] is None
    assert out.startswith(f"{strategy} on stoxx.csv, 2005-01-03 .. 2006-12-29")


def test_smacross_windows_size_and_risk_free_reach_the_backtest(tmp_path, capsys):
    from engine import compute_stats, run_backtest as engine_run

    report, trades = tmp_path / "r.json", tmp_path / "t.csv"
    args = ["--strategy", "smacross", "--data", "nasdaq", "--start", "2010-01-01", "--end", "2014-12-31",
            "--fast", "5", "--slow", "20", "--size-frac", "0.5", "--risk-free", "0.03", "--no-plot",
            "--report", str(report), "--trades", str(trades)]
    code, out, err = _run(args, capsys)
    assert code == 0, err
    rep = json.loads(report.read_text())
    assert rep["config"]["params"] == {"size_frac": 0.5, "fast": 5, "slow": 20}
    assert rep["config"]["risk_free"] == 0.03 and rep["stats"]["risk_free"] == 0.03
    # the same run through the API, and its Sharpe at rf = 0 recomputed from the report's equity
    from engine import BarrierRules, RunConfig

    direct = engine_run(load_ohlcv("nasdaq", end="2014-12-31"), "smacross", rules=BarrierRules(size_frac=0.5),
                        run=RunConfig(start="2010-01-01", end="2014-12-31", risk_free=0.03), fast=5, slow=20)
    assert rep["stats"]["sharpe"] == pytest.approx(direct.stats["sharpe"], rel=1e-12)
    equity = pd.Series(rep["bars"]["equity"], index=pd.to_datetime(rep["bars"]["datetime"]))
    assert compute_stats(equity)["sharpe"] > rep["stats"]["sharpe"]  # 3% a year of hurdle lowers it
    # half of equity per entry: each entry's notional is about half of the equity at the signal
    first = rep["trades"][0]
    equity_at_entry = equity[pd.Timestamp(first["entry_time"])]
    assert first["size"] * first["entry_price"] == pytest.approx(0.5 * equity_at_entry, rel=0.02)
    # the CSV holds the report's trades
    csv = pd.read_csv(trades)
    assert len(csv) == len(rep["trades"]) > 10
    assert csv["pnl"].tolist() == pytest.approx([t["pnl"] for t in rep["trades"]], rel=1e-12)
    assert set(csv["exit_reason"]) <= {"signal_exit", "end_of_data"}


def test_returns_by_year_and_month_chain_to_the_total(tmp_path, capsys):
    report = tmp_path / "r.json"
    code, out, err = _run(["--strategy", "buyhold", "--data", "sp500", "--start", "2015-03-10", "--end", "2017-02-15",
                           "--no-plot", "--report", str(report)], capsys)
    assert code == 0, err
    rep = json.loads(report.read_text())
    yearly, monthly = rep["returns"]["yearly"], rep["returns"]["monthly"]
    assert [r["period"] for r in yearly] == ["2015", "2016", "2017"]
    assert len(monthly) == 10 + 12 + 2 and monthly[0]["period"] == "2015-03" and monthly[-1]["period"] == "2017-02"
    total = rep["stats"]["total_return"]
    for rows in (yearly, monthly):
        growth = 1.0
        for r in rows:
            growth *= 1.0 + r["strategy"]
        assert growth - 1.0 == pytest.approx(total, rel=1e-9)
    # 2016 by hand: last close-of-2016 equity over the last of 2015
    equity = pd.Series(rep["bars"]["equity"], index=pd.to_datetime(rep["bars"]["datetime"]))
    assert yearly[1]["strategy"] == pytest.approx(equity[:"2016"].iloc[-1] / equity[:"2015"].iloc[-1] - 1, rel=1e-12)
    assert "year" in out and "monthly returns (%)" in out and "2016" in out


def test_list_samples_names_every_bundled_sample(capsys):
    from datafeeds import list_samples

    code, out, err = _run(["--list-samples"], capsys)
    assert code == 0
    names = [line.split()[0] for line in out.strip().splitlines()[1:]]
    assert names == list_samples()
    listing = subprocess.run([sys.executable, "-m", "datafeeds"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and [ln.split()[0] for ln in listing.stdout.splitlines()[1:len(names) + 1]] == names


def test_output_into_a_closed_pipe_is_not_a_traceback():
    # `python run_backtest.py ... | head -2`: the reader goes away before we have written everything
    proc = subprocess.Popen([sys.executable, "run_backtest.py", "--list-samples"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the listing is written (importing datafeeds alone takes longer)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_default_picture_of_a_file_does_not_overwrite_the_bundled_samples(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    load_ohlcv("sp500", start="2018-01-01").to_csv(tmp_path / "data" / "sp500.csv")
    pictures = []
    for data in ("sp500", "data/sp500.csv"):
        code, out, err = _run(["--strategy", "buyhold", "--data", data, "--start", "2018-06-01"], capsys)
        assert code == 0, err
        pictures.append(next(line for line in out.splitlines() if line.startswith("plot: ")))
    assert pictures[0] == "plot: reports/buyhold_sp500.png"
    assert pictures[1].startswith("plot: reports/buyhold_sp500_") and len(pictures[1]) == len(pictures[0]) + 9
    assert len(list((tmp_path / "reports").glob("*.png"))) == 2
