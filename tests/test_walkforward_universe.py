"""Walk-forward over a universe: one calendar of folds, pooled training, portfolios; a universe of one is the
single-instrument walk-forward."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import optuna
import pandas as pd
import pytest
import torch

from agents import TransformerAgent
from datafeeds import load_ohlcv
from engine import walkforward as wf
from engine.walkforward import run as wfr
import test_walkforward as wt  # the single-instrument tests' worker helpers

ROOT = wt.ROOT

SAMPLES = Path(__file__).resolve().parents[1] / "datafeeds" / "samples"
TINY = ["--epochs", "1", "--seq-len", "8", "--d-model", "8", "--n-heads", "1", "--batch-size", "256",
        "--search", "labels", "--quiet"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TBM_CACHE", str(tmp_path / "cache"))  # the universe's feature store


def _trials(out: Path, study: str, fold: int) -> list:
    return optuna.load_study(study_name=f"{study}_fold{fold}", storage=f"sqlite:///{out}/optuna.db").get_trials()


def _untrained_fit(cfg, prep, *, checkpoint_dir=None, on_epoch=None, progress=False, **_):
    """The trainer replaced by its seeded initial model: a function of the config alone, whatever the batch
    order (the pooled and the single trainers draw their batches differently: PooledBatchSampler's keyed
    block permutation against torch.randperm), so the rest of the two pipelines can be compared."""
    torch.manual_seed(cfg.seed)
    model = TransformerAgent(cfg.model_config(len(prep.names)))
    return {"model": model.eval(), "state": {"best_val": 1.0, "best_epoch": 1, "history": []}}


def test_a_universe_of_one_is_the_single_instrument_walk_forward(tmp_path, monkeypatch):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(SAMPLES / "sp500.csv.gz", one / "sp500.csv.gz")
    monkeypatch.setattr(wfr, "fit", _untrained_fit)
    args = TINY + ["--start", "2010-01-01", "--end", "2012-12-31", "--folds", "2", "--trials", "2",
                   "--objective", "val_sharpe", "--study", "s"]
    runs = {}
    for name, data in (("single", str(one / "sp500.csv.gz")), ("universe", str(one))):
        out = tmp_path / name
        assert wf.main(args + ["--data", data, "--out", str(out)]) == 0
        runs[name] = (out, json.loads((out / "report.json").read_text()))
    (s_out, single), (u_out, uni) = runs["single"], runs["universe"]
    assert single["universe"] is None and uni["universe"]["symbols"] == ["sp500"]
    assert uni["config"]["folds_bars"] == single["config"]["folds_bars"]
    for fs, fu in zip(single["folds"], uni["folds"], strict=True):
        for block in ("train", "validation", "test"):
            assert fu[block] == fs[block]
        assert fu["params"] == fs["params"] and fu["best_trial"] == fs["best_trial"]
        # the same trials: parameters and objective (validation portfolio of one = the validation backtest)
        ts, tu = _trials(s_out, "s", fs["fold"]), _trials(u_out, "s", fs["fold"])
        assert [t.params for t in tu] == [t.params for t in ts]
        for a, b in zip(ts, tu):
            for key in ("val_trades", "val_sharpe", "val_return", "val_auc", "val_loss"):
                assert b.user_attrs[key] == a.user_attrs[key], key
            assert b.value == a.value
            # the threshold (a quantile of the training probabilities) differs in the 8th digit: the pooled
            # windows are normalised in float32 in place, a single file's in float64 then rounded, and the
            # statistics are one-pass sums against numpy's two-pass nanmean/nanstd
            assert b.user_attrs["threshold"] == pytest.approx(a.user_attrs["threshold"], rel=1e-6)
        # the same test trades (a portfolio of one with one position = the single backtest)
        trades_s = json.loads((s_out / f"fold{fs['fold']}.json").read_text())["trades"]
        trades_u = json.loads((u_out / f"fold{fu['fold']}.json").read_text())["trades"]
        assert len(trades_u) == len(trades_s) > 0
        for a, b in zip(trades_s, trades_u):
            assert b["symbol"] == "sp500"
            for key in ("entry_time", "exit_time", "exit_reason", "entry_price", "exit_price", "size", "pnl"):
                assert b[key] == a[key], key
        assert fu["stats"]["sharpe"] == fs["stats"]["sharpe"]
        assert fu["val_sharpe"] == fs["val_sharpe"]
    assert uni["stitched"]["stats"]["sharpe"] == single["stitched"]["stats"]["sharpe"]
    assert uni["deflated_sharpe"]["dsr"] == single["deflated_sharpe"]["dsr"]
    assert uni["deflated_sharpe"]["n_trials"] == single["deflated_sharpe"]["n_trials"] == 4


def test_a_universe_trains_pooled_and_trades_its_members_as_portfolios(tmp_path, capsys):
    # goog starts in 2004-08: it joins the calendar's folds late, at its own bars
    out = tmp_path / "out"
    args = TINY + ["--data", "sp500,goog", "--start", "2003-06-01", "--end", "2006-12-31", "--folds", "2",
                   "--trials", "2", "--normalise", "per-symbol", "--max-positions", "1", "--out", str(out)]
    assert wf.main(args) == 0
    printed = capsys.readouterr().out
    assert "universe of 2: sp500, goog" in printed and "at most 1 positions" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["universe"]["normalise"] == "per-symbol" and report["universe"]["max_positions"] == 1
    assert report["config"]["universe"]["symbols"] == ["sp500", "goog"]
    goog = load_ohlcv("goog", start="2003-06-01", end="2006-12-31")
    calendar = load_ohlcv("sp500", start="2003-06-01", end="2006-12-31").index.union(goog.index)
    for f in report["folds"]:
        assert set(f["symbols"]) == {"sp500", "goog"}
        assert f["trials"]["complete"] == 2 and f["val_sharpe"] is not None
        assert {c["symbol"] for c in f["contribution"]} == {"sp500", "goog"}
        assert pd.Timestamp(f["test"][0]) in calendar
        card = json.loads((out / f"fold{f['fold']}.json").read_text())
        assert card["stats"]["n_trades"] == len(card["trades"])
        # the test block's trades lie in it, one position at a time
        times = sorted((pd.Timestamp(t["entry_time"]), pd.Timestamp(t["exit_time"])) for t in card["trades"])
        assert all(pd.Timestamp(f["test"][0]) <= a and b <= pd.Timestamp(f["test"][1]) for a, b in times)
        assert all(b1 <= a2 for (_, b1), (a2, _) in zip(times, times[1:]))
    assert report["deflated_sharpe"]["n_trials"] == 4
    assert len(report["stitched"]["stats"]) and (out / "stitched_equity.csv").is_file()


@pytest.mark.parametrize("argv, needle", [
    (["--data", "sp500,goog", "--primary", "momentum"], "meta-labels are built for one instrument"),
    (["--data", "sp500,goog", "--max-positions", "3"], "--max-positions must be in 1..2"),
    (["--data", "sp500", "--normalise", "per-symbol"], "apply to a universe"),
    (["--data", "sp500,nosuch"], "nosuch"),
])
def test_bad_universe_input_is_one_line_and_exit_2(argv, needle, tmp_path, capsys):
    assert wf.main(TINY + argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and err.startswith("error: ")


def test_fold_data_from_the_whole_store_equals_that_of_data_cut_after_the_fold(tmp_path):
    # the feature store holds every bar; a fold's training and validation data must not depend on later bars
    from agents import TrainConfig
    from agents.data.prepare import prepare_universe_segments
    from agents.data.store import FeatureStore
    from datafeeds import load_universe

    cfg = TrainConfig(data="sp500,goog", seq_len=8, d_model=8, n_heads=1, horizon=10, normalise="per-symbol")
    full = dict(load_universe("sp500,goog", start="2003-01-01", end="2007-12-31"))
    calendar = full["sp500"].index.union(full["goog"].index)
    train_end, val_end = calendar[600], calendar[800]  # goog starts 2004-08-19, inside the training block
    cut = {s: f.loc[:val_end] for s, f in full.items()}
    preps = []
    for frames in (full, cut):
        store = FeatureStore.build_or_open(frames, cfg.feature_spec, cfg.tbm, root=tmp_path / "stores")
        segs = {}
        for s, f in frames.items():
            a, b = int(f.index.searchsorted(train_end, "right")), int(f.index.searchsorted(val_end, "right"))
            segs[s] = (range(0, a), range(a + cfg.horizon, b))
        preps.append(prepare_universe_segments(cfg, store, segs))
    whole, truncated = preps
    for which in ("train", "val"):
        assert np.array_equal(whole.ranges[which], truncated.ranges[which]) and len(whole.ranges[which])
        assert np.array_equal(whole.labels(which), truncated.labels(which))
        x_w, _ = whole.dataset(which, 8).batch(np.arange(len(whole.labels(which))))
        x_t, _ = truncated.dataset(which, 8).batch(np.arange(len(truncated.labels(which))))
        assert torch.equal(x_w, x_t)
    assert np.array_equal(whole.mean, truncated.mean) and np.array_equal(whole.std, truncated.std)
    assert whole.symbols["goog"]["train_events"] > 0


def test_a_universe_strategy_search_trains_one_model_per_fold(tmp_path, monkeypatch):
    calls = []
    real = wfr.fit

    def counting(cfg, prep, **kw):
        calls.append(cfg.seq_len)
        return real(cfg, prep, **kw)

    monkeypatch.setattr(wfr, "fit", counting)
    out = tmp_path / "out"
    args = [a for a in TINY if a not in ("--search", "labels")] + [
        "--data", "sp500,nasdaq", "--start", "2009-01-01", "--end", "2012-12-31", "--folds", "1", "--trials", "3",
        "--search", "strategy", "--objective", "val_sharpe", "--out", str(out)]
    assert wf.main(args) == 0
    assert len(calls) == 2  # the fold's model for its 3 trials, then the refit
    fold = json.loads((out / "report.json").read_text())["folds"][0]
    assert fold["trials"]["complete"] == 3 and set(fold["params"]) == {"signal_rate", "exec_pt", "exec_sl"}


# ------------------------------------------------------------------------------------ a universe run killed,
# shared, interrupted, and cut after a fold
# sp500 and goog, 2005-2007: one fold whose trials take about a second each
UNI_ARGS = ["--data", "sp500,goog", "--start", "2005-01-01", "--end", "2007-12-31", "--folds", "1", "--epochs", "1",
            "--seq-len", "8", "--d-model", "8", "--n-heads", "1", "--batch-size", "256", "--search", "labels"]


def _command(out: Path, study: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "engine.walkforward", *UNI_ARGS, "--study", study, "--out", str(out),
            "--heartbeat", "1", *extra]


def _env(**extra: str) -> dict:
    return {**os.environ, "PYTHONWARNINGS": "ignore", **extra}  # TBM_CACHE: the test's feature store (_cache)


def _wait_for_running_trial(db: Path, proc: subprocess.Popen, first: int) -> None:
    """Until a trial numbered >= ``first`` runs and has beaten once (optuna records a trial's first heartbeat
    just after creating it: one killed before that could never go stale)."""
    running = ("SELECT t.number FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
               f"WHERE t.state = 'RUNNING' AND t.number >= {first}")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
        try:  # read-only: connecting must not create the file before the run does
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
                if conn.execute(running).fetchall():
                    return
        except sqlite3.Error:  # the database or its tables do not exist yet
            continue
    raise AssertionError(f"no trial >= {first} ran (exit {proc.poll()})")


def test_a_universe_run_killed_mid_fold_and_resumed_reports_what_an_uninterrupted_run_reports(tmp_path):
    # 2 epochs: trials long enough to be killed in the middle of one
    extra = ("--epochs", "2", "--trials", "3", "--quiet")
    assert wf.main(_command(tmp_path / "clean", "u", *extra)[3:]) == 0  # uninterrupted (here: no imports twice)
    killed = tmp_path / "killed"
    env = _env(TBM_CACHE=str(tmp_path / "killed_cache"))  # the killed run builds its own feature store
    proc = subprocess.Popen(_command(killed, "u", *extra), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    _wait_for_running_trial(killed / "optuna.db", proc, first=1)
    proc.kill()  # SIGKILL: no clean-up
    proc.wait(timeout=30)
    url = f"sqlite:///{(killed / 'optuna.db').resolve()}"
    assert any(t.state == optuna.trial.TrialState.RUNNING for t in wt._trials(url, "u_fold0"))
    assert not (killed / "report.json").exists()
    time.sleep(3.5)  # the dead worker's heartbeat goes stale (3 heartbeats of 1 s)
    resumed = subprocess.run(_command(killed, "u", *extra), cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env=env)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "clean" / "report.json").read_text())
    b = json.loads((killed / "report.json").read_text())
    assert b["universe"] == a["universe"] and b["universe"]["symbols"] == ["sp500", "goog"]
    assert b["trials"]["failed"] == 1 and a["trials"]["failed"] == 0
    assert b["configurations_tried"] == a["configurations_tried"] == 3

    def done(url_):
        return sorted((t.params["horizon"], round(t.params["pt"], 12), round(t.params["sl"], 12), t.value,
                       t.user_attrs.get("val_sharpe"), t.user_attrs.get("val_trades"))
                      for t in wt._finished(wt._trials(url_, "u_fold0")))

    assert done(url) == done(f"sqlite:///{(tmp_path / 'clean' / 'optuna.db').resolve()}")
    fa, fb = a["folds"][0], b["folds"][0]
    for key in ("params", "best_value", "best_trial", "val_sharpe", "stats", "contribution", "execution"):
        assert fb[key] == fa[key], key
    trades_a = json.loads((tmp_path / "clean" / "fold0.json").read_text())["trades"]
    trades_b = json.loads((killed / "fold0.json").read_text())["trades"]
    assert trades_b == trades_a and {t["symbol"] for t in trades_a} == {"sp500", "goog"}
    assert b["stitched"]["stats"] == a["stitched"]["stats"]
    assert b["deflated_sharpe"]["dsr"] == a["deflated_sharpe"]["dsr"]


class UniverseWorker:
    """A `python -m engine.walkforward` worker on the one fold of sp500,goog (not --quiet: its trial lines),
    keeping what it printed."""

    def __init__(self, storage: str, study: str, out: Path, trials: int):
        self.proc = subprocess.Popen(_command(out, study, "--trials", str(trials), "--storage", storage), cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
        self.pid, self.text = self.proc.pid, None

    def communicate(self, timeout: float):
        self.text = self.proc.communicate(timeout=timeout)[0]
        return self.text, None

    @property
    def returncode(self):
        return self.proc.returncode


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # the planted trial comes from ask()
def test_two_universe_workers_share_one_study_refit_once_and_retry_a_dead_workers_trial(tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    dead = wt.plant_dead_workers_trial(storage, "tw")
    procs = [UniverseWorker(storage, "tw", tmp_path / "out", trials=4) for _ in range(2)]
    # (both build the universe's feature store at once, into one cache)
    all_trials = wt.check_shared_study(storage, "tw", 4, procs)  # trials split, none twice, one "finalised here"
    assert sum(p.text.count("fold 0: refitting trial") for p in procs) == 1  # one refit of the fold
    by_number = {t.number: t for t in all_trials}
    assert by_number[dead.number].state == optuna.trial.TrialState.FAIL
    retries = [t for t in wt._finished(all_trials) if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retries) == 1 and retries[0].params["pt"] == dead.params["pt"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["universe"]["symbols"] == ["sp500", "goog"]
    assert report["folds"][0]["trials"] == {"complete": 4, "pruned": 0, "failed": 1}  # failed: the dead worker's
    assert {c["symbol"] for c in report["folds"][0]["contribution"]} == {"sp500", "goog"}


def test_ctrl_c_of_a_universe_run_prints_one_line_exits_130_and_fails_the_running_trial(tmp_path):
    storage = f"sqlite:///{tmp_path / 'int.db'}"
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(_command(tmp_path / "out", "ci", "--epochs", "30", "--trials", "2", "--storage",
                                         storage), cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
                                env=_env())
        _wait_for_running_trial(tmp_path / "int.db", proc, first=0)
        running = next(t for t in wt._trials(storage, "ci_fold0") if t.state == optuna.trial.TrialState.RUNNING)
        before = err_path.stat().st_size  # stderr is written line by line
        proc.send_signal(signal.SIGINT)
        stdout = proc.communicate(timeout=120)[0]
    stderr = err_path.read_text()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stderr.rstrip("\n").endswith("\ninterrupted; finished trials are kept: rerun the same command to resume")
    assert len(stderr[before:].strip("\n").splitlines()) <= 3, stderr[before:]
    assert stdout == ""
    # the interrupted trial is failed at once, not left RUNNING (a rerun fills its slot)
    states = {t.number: t.state for t in wt._trials(storage, "ci_fold0")}
    assert states[running.number] == optuna.trial.TrialState.FAIL
    assert optuna.trial.TrialState.RUNNING not in states.values()


def test_a_universe_fold_on_data_cut_after_its_test_block_is_that_fold_on_all_the_data(tmp_path, monkeypatch):
    # Nothing of a fold (features, normalisation, labels, training, signals, the validation and test portfolios)
    # may read a bar after its test block: fold 1 of 3 of a run on 2003-06..2009-12 (a rolling training block
    # that goog joins, 2004-08; its test block ends in 2009, after the crash) against fold 1 of a run on the
    # same data cut at that block's last bar. Both runs cut the full calendar's folds (fewer bars would move the
    # cuts) and run fold 1 alone.
    real = wfr.walk_forward_folds
    cuts = {}

    def full_calendar_folds(n_bars, **kw):
        return cuts.setdefault("folds", real(n_bars, **kw))[1:2]  # the first call: the full calendar's folds

    monkeypatch.setattr(wfr, "walk_forward_folds", full_calendar_folds)
    args = TINY + ["--data", "sp500,goog", "--start", "2003-06-01", "--folds", "3", "--trials", "2",
                   "--objective", "val_sharpe", "--study", "cut"]
    runs = {}
    for name, end in (("full", "2009-12-31"), ("cut", None)):
        if end is None:  # the last bar of fold 1's test block
            end = str(pd.Timestamp(runs["full"][1]["folds"][0]["test"][1]).date())
        monkeypatch.setenv("TBM_CACHE", str(tmp_path / f"cache_{name}"))  # each its own feature store
        out = tmp_path / name
        assert wf.main(args + ["--end", end, "--out", str(out)]) == 0
        runs[name] = (out, json.loads((out / "report.json").read_text()))
    (f_out, full), (c_out, cut) = runs["full"], runs["cut"]
    fold = cuts["folds"][1]
    assert fold.fold == 1 and fold.train.start > 0 and [f["fold"] for f in full["folds"] + cut["folds"]] == [1, 1]
    assert cut["universe"]["calendar_bars"] == fold.test.stop  # the cut data ends with the test block
    assert full["universe"]["calendar_bars"] > fold.test.stop + 150  # and the full data goes on for 150+ bars
    assert cut["config"]["folds_bars"] == full["config"]["folds_bars"] == [
        [fold.train.start, fold.val.start, fold.test.start, fold.test.stop]]
    ff, fc = full["folds"][0], cut["folds"][0]
    for key in ("train", "validation", "test", "symbols", "params", "best_trial", "trial_val_sr", "execution",
                "contribution", "pbo"):
        assert fc[key] == ff[key], key
    assert pd.Timestamp(ff["train"][0]) < pd.Timestamp("2004-08-19") < pd.Timestamp(ff["train"][1])  # goog joins
    # annualised numbers too: a fold's bars per year are inferred from the bars up to its test block's end
    for key in ("stats", "benchmark_stats", "best_value", "val_sharpe"):
        assert fc[key] == ff[key], key
    # the same trials: parameters, objective, and every validation and training number
    tf, tc = _trials(f_out, "cut", 1), _trials(c_out, "cut", 1)
    assert len(tf) == len(tc) == 2 and [t.params for t in tc] == [t.params for t in tf]
    for a, b in zip(tf, tc):
        assert b.state == a.state and b.value == a.value
        for key in ("val_sharpe", "val_loss", "val_auc", "val_sr", "val_return", "val_trades", "val_returns",
                    "threshold", "best_epoch"):
            assert b.user_attrs[key] == a.user_attrs[key], key
        assert len(a.user_attrs["val_returns"]) == len(fold.val) - 1  # the validation portfolio, bar for bar
    # the same refit agent (its graph and weights; its card names the data's end) and the same test block:
    # its trades (both members) and its equity, bar for bar
    graph_f, graph_c = (onnx.load(out / "fold1.onnx").graph.SerializeToString() for out in (f_out, c_out))
    assert graph_c == graph_f
    card_f = json.loads((f_out / "fold1.json").read_text())
    card_c = json.loads((c_out / "fold1.json").read_text())
    assert card_c["trades"] == card_f["trades"] and {t["symbol"] for t in card_f["trades"]} == {"sp500", "goog"}
    for key in ("index", "equity", "benchmark_equity"):
        assert card_c[key] == card_f[key], key
    assert card_f["index"][-1] == ff["test"][1] and len(card_f["equity"]) == len(fold.test)
    assert cut["stitched"]["stats"] == full["stitched"]["stats"]
    assert cut["deflated_sharpe"] == full["deflated_sharpe"]


def test_cpcv_splits_of_a_universe_never_train_on_a_test_groups_bars(tmp_path):
    # nasdaq keeps every third bar: its windows span three calendar bars per bar, so an embargo counted in
    # calendar bars alone would let its first training windows after a test group read that group
    from agents import TrainConfig
    from datafeeds import load_universe
    from engine.walkforward.universe import Universe, prepare_blocks
    from labeling import cpcv_splits

    frames = dict(load_universe("sp500,nasdaq", start="2008-01-01", end="2011-12-31"))
    frames["nasdaq"] = frames["nasdaq"].iloc[::3]
    calendar = frames["sp500"].index.union(frames["nasdaq"].index)
    u = Universe(frames, calendar, 2, "x", store_root=str(tmp_path / "stores"))
    tcfg = TrainConfig(data="sp500,nasdaq", seq_len=8, d_model=8, n_heads=1, horizon=10, normalise="per-symbol")
    reach = tcfg.feature_spec.pinned(frames["sp500"].columns).warmup + tcfg.seq_len - 1  # rows a window reads
    splits = cpcv_splits(len(calendar), 4, 2, purge=tcfg.horizon, embargo=reach)
    checked = 0
    for sp in splits:
        prep = prepare_blocks(u, tcfg, sp, reach)
        test_times = [(calendar[r.start], calendar[r.stop - 1]) for r in sp.test]
        for i, a, b in prep.ranges["train"]:
            sym = list(prep.store.symbols)[i]
            idx = frames[sym].index
            t1 = np.asarray(prep.store.t1(sym))
            for e in range(a, b):  # every training event: from its window's first input to its label's end
                lo, hi = idx[max(0, e - reach)], idx[t1[e]]
                assert not any(lo <= t_hi and t_lo <= hi for t_lo, t_hi in test_times), (sym, e)
                checked += 1
        assert prep.symbols["nasdaq"]["train_events"] > 0
    assert checked > 1000


def test_cpcv_over_a_universe_reports_its_paths(tmp_path):
    out = tmp_path / "out"
    args = TINY + ["--data", "sp500,goog", "--start", "2005-01-01", "--end", "2008-12-31", "--folds", "1",
                   "--trials", "2", "--cpcv", "4,2", "--max-positions", "1", "--out", str(out)]
    assert wf.main(args) == 0
    c = json.loads((out / "report.json").read_text())["cpcv"]
    assert (c["n_splits"], c["n_paths"]) == (6, 3) and len(c["path_sharpes"]) == 3
    assert np.isfinite(c["path_sharpes"]).all() and c["test_trades"] > 0


def test_per_symbol_normalisation_with_a_member_absent_from_a_training_block_is_refused_up_front(tmp_path, capsys):
    # goog starts 2004-08-19: fold 0's training block (2001-01 to 2003-04) holds none of its bars
    out = tmp_path / "out"
    args = TINY + ["--data", "sp500,goog", "--start", "2001-01-01", "--end", "2005-06-30", "--folds", "2",
                   "--normalise", "per-symbol", "--out", str(out)]
    assert wf.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "goog has 0 bars in fold 0's training block" in err and "pooled" in err
    assert not (out / "optuna.db").exists()  # refused before any study


def test_members_contributions_add_up_to_the_stitched_return_and_are_drawn(tmp_path, capsys):
    from engine.walkforward.report import member_contributions

    out = tmp_path / "out"
    args = [a for a in TINY if a not in ("--search", "labels")] + [
        "--data", "sp500,nasdaq,goog", "--start", "2009-01-01", "--end", "2013-12-31", "--folds", "2",
        "--trials", "3", "--search", "strategy", "--objective", "val_sharpe", "--max-positions", "2",
        "--out", str(out)]
    assert wf.main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    rows = report["universe"]["contribution"]
    assert {r["symbol"] for r in rows} <= {"sp500", "nasdaq", "goog"} and rows
    assert sum(r["overall"] for r in rows) == pytest.approx(report["stitched"]["stats"]["total_return"], abs=1e-9)
    for f in report["folds"]:  # a fold's column is the member's pnl over that fold's starting cash
        for c in f["contribution"]:
            mine = next(r for r in rows if r["symbol"] == c["symbol"])
            assert mine[f"fold {f['fold']}"] == c["return_contribution"]
    assert sum(r["trades"] for r in rows) == report["stitched"]["stats"]["n_trades"]
    assert "members' share of each fold's return" in printed
    top = rows[0]
    assert any(line.split()[0] == top["symbol"] and f"{100 * top['overall']:+.1f}%" in line
               for line in printed.splitlines() if line.startswith("  "))
    # by hand: fold 1's pnl counts at the level fold 0 ended at
    results = [{"fold": 0, "equity": [100.0, 110.0], "contribution": [{"symbol": "a", "return_contribution": 0.1}],
                "trades": [{"symbol": "a", "pnl": 10.0, "exit_time": "2020-01-02"}]},
               {"fold": 1, "equity": [100.0, 95.0], "contribution": [{"symbol": "b", "return_contribution": -0.05}],
                "trades": [{"symbol": "b", "pnl": -5.0, "exit_time": "2020-02-03"}]}]
    table, curves = member_contributions(results, 100.0)
    assert table.loc["a", "overall"] == pytest.approx(0.10) and table.loc["b", "overall"] == pytest.approx(-0.055)
    assert np.isnan(table.loc["a", "fold 1"]) and table.loc["b", "fold 1"] == -0.05
    assert curves.loc[pd.Timestamp("2020-02-03")].tolist() == pytest.approx([0.10, -0.055])


def test_two_trial_threads_of_a_universe_share_its_feature_stores(tmp_path, monkeypatch):
    # --n-jobs 2: two trials at once in one process, each reading (or first building) its label setting's store
    builds = []
    from agents.data.store import FeatureStore

    real = FeatureStore._build.__func__

    def counting(cls, *a, **kw):
        builds.append(a[-1])  # the store key
        return real(cls, *a, **kw)

    monkeypatch.setattr(FeatureStore, "_build", classmethod(counting))
    out = tmp_path / "out"
    # --search model: every trial labels alike, so both threads ask for the same store at once
    args = ["--epochs", "1", "--batch-size", "256", "--search", "model", "--quiet", "--data", "sp500,goog",
            "--start", "2005-01-01", "--end", "2008-12-31", "--folds", "1", "--trials", "2", "--n-jobs", "2",
            "--out", str(out)]
    assert wf.main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["folds"][0]["trials"]["complete"] + report["folds"][0]["trials"]["pruned"] == 2
    assert report["folds"][0]["contribution"]
    assert len(builds) == 1  # built once, shared by both trials and the refit
    assert not [p for p in (tmp_path / "cache").rglob(".*tmp*")]  # no half-built store left behind


def test_per_symbol_normalisation_with_a_member_absent_from_a_cpcv_splits_training_is_refused_up_front(tmp_path,
                                                                                                     capsys):
    # goog cut to 2004-08..2006-12 inside 2003..2012: in the walk-forward's training block, but all of it in
    # CPCV groups 1 and 2 of 6: the split testing them leaves goog nothing to normalise by
    data = tmp_path / "data"
    data.mkdir()
    load_ohlcv("sp500", start="2003-01-01", end="2012-12-31").to_csv(data / "sp500.csv")
    load_ohlcv("goog", end="2006-12-31").to_csv(data / "goog.csv")
    out = tmp_path / "out"
    args = TINY + ["--data", str(data), "--folds", "1", "--cpcv", "6,2", "--normalise", "per-symbol",
                   "--out", str(out)]
    assert wf.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "goog has 0 bars in the training blocks of CPCV split" in err, err
    assert not (out / "optuna.db").exists()
