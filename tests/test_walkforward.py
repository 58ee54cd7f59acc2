"""Walk-forward tuning: end-to-end on real data, resume without recomputation, workers sharing a study."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest

from agents.artifact.runtime import OnnxAgent
from datafeeds import load_ohlcv
from engine import walkforward as wf
from engine.walkforward import cli as wf_cli  # the argument parser and main
from engine.walkforward import console as wf_console  # log lines, progress bars, Ctrl-C
from engine.walkforward import report as wf_report  # stitching, plots, summary, report files
from engine.walkforward import run as wfr  # the orchestration behind the CLI
from engine.walkforward import search as wf_search  # trial sampling and the per-fold trial total
from engine.walkforward import storage as wfs  # storage, fold results and the finalise claim
from engine.metrics import infer_periods_per_year

ROOT = Path(__file__).resolve().parents[1]
# tiny everything: a 1-layer d_model-8 model for 1 epoch per trial on 2008-2012
START, END = "2008-01-01", "2012-12-31"
TINY_ARGS = ["--start", START, "--end", END, "--epochs", "1", "--seq-len", "8", "--d-model", "8",
             "--n-heads", "1", "--batch-size", "256", "--search", "labels", "--quiet"]


def _trials(storage_url: str, name: str) -> list:
    return optuna.load_study(study_name=name, storage=storage_url).get_trials(deepcopy=False)


def _finished(trials) -> list:
    return [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]


# ------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("wf") / "out"
    out.mkdir()
    (out / ".fold1.0123abcd.onnx").write_bytes(b"half an export")  # left by a worker killed during its export
    args = TINY_ARGS + ["--folds", "2", "--trials", "2", "--study", "e2e", "--out", str(out)]
    calls = []  # (engine, first bar) of every backtest the run makes
    real = wfr.run_backtest

    def recording(*a, **kw):
        calls.append((kw["run"].engine, pd.Timestamp(kw["run"].start)))
        return real(*a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wfr, "run_backtest", recording)
        assert wf.main(args) == 0
    return out, args, calls


def test_run_writes_agents_plots_and_an_honest_report(first_run):
    out, _, _ = first_run
    report = json.loads((out / "report.json").read_text())
    for name in ("fold0.onnx", "fold1.onnx", "fold0_history.png", "fold1_history.png", "stitched_equity.png",
                 "fold0.json", "fold1.json", "stitched_equity.csv"):
        assert (out / name).stat().st_size > 0, name
    assert not [p.name for p in out.glob(".*")]  # no hidden temporaries, a killed worker's included
    url = f"sqlite:///{(out / 'optuna.db').resolve()}"
    n = sum(len(_finished(_trials(url, f"e2e_fold{k}"))) for k in range(2))
    assert n == 4 and report["configurations_tried"] == 4
    assert report["trials"]["complete"] + report["trials"]["pruned"] == 4
    assert report["new_trials_this_run"] == 4
    assert [f["this_run"] for f in report["folds"]] == ["finalised here", "finalised here"]
    # the folds by hand: 1,259 bars; test_frac 0.3 -> the last int(377.7) = 377 bars hold 2 test blocks of
    # 188 (bars 883..1070 and 1071..1258); each validation block (188 bars) ends a purge of 20 bars (the
    # longest searched horizon) before its test block: bars 675..862 and 863..1050
    df = load_ohlcv("sp500", start=START, end=END)
    assert len(df) == 1259
    for f, (val, test) in zip(report["folds"], [((675, 862), (883, 1070)), ((863, 1050), (1071, 1258))]):
        assert f["test"] == [str(df.index[test[0]]), str(df.index[test[1]])]
        assert f["validation"] == [str(df.index[val[0]]), str(df.index[val[1]])]


def test_stitched_equity_chains_the_fold_test_curves(first_run):
    out, _, _ = first_run
    report = json.loads((out / "report.json").read_text())
    folds = [json.loads((out / f"fold{k}.json").read_text()) for k in range(2)]
    stitched = pd.read_csv(out / "stitched_equity.csv", index_col=0, parse_dates=True)
    assert len(stitched) == sum(len(f["equity"]) for f in folds)
    growth = np.prod([f["equity"][-1] / 100_000 for f in folds])
    assert stitched["equity"].iloc[-1] == pytest.approx(100_000 * growth, rel=1e-12)
    # the second fold's curve is the first's end value times its own relative path
    k0 = len(folds[0]["equity"])
    np.testing.assert_allclose(stitched["equity"].to_numpy()[k0:],
                               np.asarray(folds[1]["equity"]) * folds[0]["equity"][-1] / 100_000, rtol=1e-12)
    assert report["stitched"]["stats"]["total_return"] == pytest.approx(growth - 1, rel=1e-9)
    assert report["stitched"]["stats"]["n_trades"] == sum(f["stats"]["n_trades"] for f in folds)
    # DSR from the stitched returns, N = 4 configurations (all folds), V = mean within-fold variance
    # of the trials' validation Sharpes (each fold's 2 trials share one validation period), by the formula
    var = np.mean([np.var(f["trial_val_sr"], ddof=1) for f in folds])
    d = report["deflated_sharpe"]
    assert d["var_trial_sharpe"] == pytest.approx(var, rel=1e-12)
    assert d["var_pooled_across_folds"] == pytest.approx(np.var([s for f in folds for s in f["trial_val_sr"]], ddof=1))
    assert "within-fold" in d["var_method"] and "conservative" in d["note"]
    assert d["n_trials"] == 4
    assert d["dsr"] == pytest.approx(_dsr_by_hand(stitched["equity"].pct_change().dropna().to_numpy(), 4, var),
                                     rel=1e-9)


def _dsr_by_hand(r: np.ndarray, n: int, var: float) -> float:
    """Bailey & Lopez de Prado's Deflated Sharpe Ratio, written out from the paper with scipy's moments."""
    from statistics import NormalDist

    from scipy import stats

    phi = NormalDist()
    sr = r.mean() / r.std(ddof=1)
    skew, kurt = stats.skew(r), stats.kurtosis(r, fisher=False)
    g = 0.5772156649015329
    sr0 = np.sqrt(var) * ((1 - g) * phi.inv_cdf(1 - 1 / n) + g * phi.inv_cdf(1 - 1 / (n * np.e)))
    return phi.cdf((sr - sr0) * np.sqrt(len(r) - 1) / np.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2))


def test_trials_use_the_fast_engine_and_test_blocks_backtrader(first_run):
    out, _, calls = first_run
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["engines"] == {"validation": "fast", "test": "backtrader"}
    val_starts = {pd.Timestamp(f["validation"][0]) for f in report["folds"]}
    test_starts = {pd.Timestamp(f["test"][0]) for f in report["folds"]}
    # 2 folds x 2 trials (1 epoch: never pruned) validated, then 2 test blocks
    assert sorted(e for e, start in calls if start in val_starts) == ["fast"] * 4
    assert sorted(e for e, start in calls if start in test_starts) == ["backtrader"] * 2
    assert len(calls) == 6


def test_exported_agents_never_saw_their_test_block(first_run):
    out, _, _ = first_run
    for k in range(2):
        fold = json.loads((out / f"fold{k}.json").read_text())
        agent = OnnxAgent.load(out / f"fold{k}.onnx")
        card = agent.meta
        assert card["walk_forward"]["fold"] == k and card["walk_forward"]["test"] == fold["test"]
        assert pd.Timestamp(card["dataset"]["last_bar_used"]) == pd.Timestamp(fold["validation"][1])
        assert pd.Timestamp(card["dataset"]["last_bar_used"]) < pd.Timestamp(fold["test"][0])
        assert card["tbm"]["horizon"] == fold["params"]["horizon"] == fold["execution"]["horizon"]
        # the threshold: the agent signals on its training bars (train + validation, refit) about as often
        # as their labels are positive
        df = load_ohlcv("sp500", start=START, end=END)
        p = agent.predict_proba(df.loc[:fold["validation"][1]]).dropna()
        rate = card["metrics"]["label_balance"]["train_positive_rate"]
        assert abs(float((p >= agent.threshold).mean()) - rate) < 0.03
        # refit epochs = the best trial's best epoch
        assert card["metrics"]["epochs_run"] == fold["best_epoch"] == 1


STRATEGY_ARGS = [a for a in TINY_ARGS if a not in ("--search", "labels")] + [
    "--search", "strategy", "--objective", "val_sharpe", "--folds", "1"]


def test_strategy_search_trains_once_and_scores_trial_batches_through_sweep(tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = {"fit": 0, "sweep": [], "backtest": []}
    fitted = {}
    real_fit, real_sweep, real_bt, real_fold = wfr.fit, wfr.sweep, wfr.run_backtest, wfr._fit_fold_model

    def fit(*a, **kw):
        calls["fit"] += 1
        return real_fit(*a, **kw)

    def sweep(*a, **kw):
        calls["sweep"].append(len(a[2]))
        return real_sweep(*a, **kw)

    def backtest(*a, **kw):
        calls["backtest"].append(kw["run"].engine)
        return real_bt(*a, **kw)

    def fold_model(ctx, fold, tcfg, on_epoch):
        fitted[fold.fold] = res = real_fold(ctx, fold, tcfg, on_epoch)
        return res

    for name, fn in (("fit", fit), ("sweep", sweep), ("run_backtest", backtest), ("_fit_fold_model", fold_model)):
        monkeypatch.setattr(wfr, name, fn)
    assert wf.main(STRATEGY_ARGS + ["--trials", "20", "--study", "st", "--out", str(out)]) == 0
    # one training for the 20 trials and one refit; 16 + 4 trials in two sweeps; backtrader for the test block
    assert calls["fit"] == 2 and calls["sweep"] == [16, 4] and calls["backtest"] == ["backtrader"]
    trials = _trials(f"sqlite:///{(out / 'optuna.db').resolve()}", "st_fold0")
    assert len(trials) == 20 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({(t.params["signal_rate"], t.params["exec_pt"]) for t in trials}) == 20

    # each trial's score is what backtrader gives for its parameters on the fold's validation block
    from engine import BarrierRules, Costs, RunConfig

    df = load_ohlcv("sp500", start=START, end=END)
    report = json.loads((out / "report.json").read_text())["folds"][0]
    first, last = (pd.Timestamp(d) for d in report["validation"])
    model = fitted[0]
    part = df.loc[:last]
    for t in (trials[0], trials[7], trials[19]):
        threshold = float(np.quantile(model.train_proba, 1.0 - t.params["signal_rate"]))
        assert t.user_attrs["threshold"] == pytest.approx(threshold, abs=1e-12)
        bt = real_bt(part, "agent", signal=model.val_signal,
                     rules=BarrierRules(threshold=threshold, pt=t.params["exec_pt"], sl=t.params["exec_sl"],
                                        horizon=report["execution"]["horizon"]),
                     costs=Costs(commission=0.0005),
                     run=RunConfig(engine="backtrader", cash=100_000.0, start=first, end=last,
                                   periods_per_year=infer_periods_per_year(df.index), benchmark=False))
        assert t.user_attrs["val_trades"] == bt.stats["n_trades"]
        assert t.user_attrs["val_return"] == pytest.approx(bt.stats["total_return"], abs=1e-9)
        per_bar = bt.equity.pct_change().dropna()
        if bt.stats["sharpe"] is None:
            assert t.value == 0.0 and t.user_attrs["val_sharpe"] is None and t.user_attrs["val_sr"] is None
        else:
            assert t.value == pytest.approx(bt.stats["sharpe"], rel=1e-9)
            assert t.user_attrs["val_sr"] == pytest.approx(per_bar.mean() / per_bar.std(ddof=1), rel=1e-9)
    assert report["best_value"] == max(t.value for t in trials)
    # each trial keeps its per-bar validation returns: they give its Sharpe, and the fold's PBO uses them
    n_val = len(df.loc[first:last])
    for t in trials:
        r = np.array(t.user_attrs["val_returns"])
        assert len(r) == n_val - 1
        if t.user_attrs["val_sharpe"] is not None:
            ppy_ = infer_periods_per_year(df.index)
            assert r.mean() / r.std(ddof=1) * np.sqrt(ppy_) == pytest.approx(t.user_attrs["val_sharpe"], rel=1e-9)
    assert 0.0 <= report["pbo"]["pbo"] <= 1.0 and report["pbo"]["n_trials"] == 20
    full = json.loads((out / "report.json").read_text())
    assert full["pbo"]["per_fold"] == [report["pbo"]["pbo"]]


def test_cpcv_retrains_the_selection_on_every_split_and_reports_its_paths(tmp_path, monkeypatch, capsys):
    from engine.walkforward import cpcv as wf_cpcv

    seen = []  # (train event bars) of every CPCV training
    real_fit = wf_cpcv.fit

    def fit(cfg, prep, **kw):
        seen.append((cfg, prep.train_ends.copy(), len(prep.val_ends)))
        return real_fit(cfg, prep, **kw)

    monkeypatch.setattr(wf_cpcv, "fit", fit)
    out = tmp_path / "out"
    assert wf.main([a for a in STRATEGY_ARGS if a != "--quiet"] + ["--trials", "2", "--study", "cv", "--out", str(out),
                                                                    "--cpcv", "4,2"]) == 0
    report = json.loads((out / "report.json").read_text())
    c = report["cpcv"]
    # C(4,2) = 6 trainings; each group is tested in C(3,1) = 3 splits: 3 paths
    assert len(seen) == 6 and c["n_splits"] == 6 and c["n_paths"] == 3 and len(c["path_sharpes"]) == 3
    assert c["params"] == report["folds"][-1]["params"]
    n = len(load_ohlcv("sp500", start=START, end=END))
    edges = [n * i // 4 for i in range(5)]  # 4 groups of ~n/4 bars, boundaries rounded down
    cfg0 = seen[0][0]
    horizon, embargo = cfg0.horizon, c["embargo"]
    assert c["purge"] == horizon and embargo >= cfg0.seq_len - 1
    tested = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    for (cfg, ends, n_val), groups in zip(seen, tested):
        assert n_val == 0 and cfg.epochs == report["folds"][-1]["best_epoch"]
        for g in groups:  # no training label starts within horizon before a test group, or in it, or in its embargo
            lo, hi = edges[g] - horizon, edges[g + 1] + embargo
            assert not ((ends >= lo) & (ends < hi)).any(), (groups, g)
    printed = capsys.readouterr().out
    assert "CPCV of the latest selection (4 groups, 2 tested; 6 trainings, 3 paths): path Sharpe median" in printed
    # a rerun reports the kept result: nothing retrained
    seen.clear()
    assert wf.main(STRATEGY_ARGS + ["--trials", "2", "--study", "cv", "--out", str(out), "--cpcv", "4,2"]) == 0
    assert seen == [] and json.loads((out / "report.json").read_text())["cpcv"] == c


# ------------------------------------------------------------------------------------ primary rules and sizing
# a momentum series (AR(1) returns): the meta-model of a momentum rule passes some of its shorts too
PRIMARY_ARGS = ["--epochs", "1", "--seq-len", "8", "--d-model", "8", "--n-heads", "1", "--batch-size", "256",
                "--folds", "1", "--quiet"]


@pytest.fixture(scope="module")
def ar1_csv(tmp_path_factory):
    from datafeeds.synthetic import ar1

    path = tmp_path_factory.mktemp("ar1") / "ar1.csv"
    ar1(1500, seed=1)[0].to_csv(path)
    return path


def test_a_primary_search_gives_each_trial_its_rule_its_meta_labels_and_its_sides(ar1_csv, tmp_path, monkeypatch,
                                                                                  capsys):
    from labeling import parse_primary, primary_side, triple_barrier_labels

    preps, backtests = [], []
    real_prep, real_bt = wfr.prepare_segments, wfr.run_backtest

    def prepare(tcfg, df, *a, **kw):
        preps.append((tcfg, real_prep(tcfg, df, *a, **kw)))
        return preps[-1][1]

    def backtest(data, *a, **kw):
        backtests.append((data, kw))
        return real_bt(data, *a, **kw)

    monkeypatch.setattr(wfr, "prepare_segments", prepare)
    monkeypatch.setattr(wfr, "run_backtest", backtest)
    out = tmp_path / "out"
    assert wf.main(PRIMARY_ARGS + ["--data", str(ar1_csv), "--search", "primary", "--primary", "momentum",
                                   "--trials", "2", "--study", "pm", "--out", str(out)]) == 0
    trials = _trials(f"sqlite:///{(out / 'optuna.db').resolve()}", "pm_fold0")
    specs = [t.user_attrs["primary"] for t in trials]
    assert specs == [f"momentum:lookback={t.params['primary_lookback']}" for t in trials] and len(set(specs)) == 2
    assert all(5 <= t.params["primary_lookback"] <= 60 for t in trials)
    report = json.loads((out / "report.json").read_text())
    fold = report["folds"][0]
    best = min(trials, key=lambda t: t.value)  # val_loss
    assert fold["primary"] == best.user_attrs["primary"]
    # each trial trained on its own rule's bets and their meta-labels; the refit on the best trial's rule
    assert [cfg.primary for cfg, _ in preps] == specs + [fold["primary"]]
    df = load_ohlcv(str(ar1_csv))
    labels = []
    for cfg, prep in preps[:2]:
        side = primary_side(df, parse_primary(cfg.primary))
        meta = triple_barrier_labels(df, config=cfg.tbm, side=side)
        bars = df.index[prep.train_ends]
        assert bars.isin(side.index).all()  # the events are the rule's bets
        np.testing.assert_array_equal(prep.y[prep.train_ends], meta["label"].reindex(bars).to_numpy(np.float32))
        labels.append(pd.Series(prep.y[prep.train_ends], index=bars))
    both = labels[0].index.intersection(labels[1].index)
    assert (labels[0][both] != labels[1][both]).any()  # another lookback, other meta-labels
    # every backtest (the trials' validation blocks, the fold's test block) trades its rule's sides, computed on
    # its own bars, sized by probability
    assert len(backtests) == 3 and backtests[-1][1]["run"].engine == "backtrader"
    for (data, kw), spec in zip(backtests, specs + [fold["primary"]]):
        pd.testing.assert_series_equal(kw["side"], primary_side(data, parse_primary(spec)))
        assert (kw["rules"].sizing, kw["rules"].size_step) == ("probability", 0.0)
    # the fold's test trades: each on the rule's side at its signal bar, shorts among them
    trades = pd.DataFrame(json.loads((out / "fold0.json").read_text())["trades"])
    side = primary_side(backtests[-1][0], parse_primary(fold["primary"]))
    assert (trades["side"].to_numpy() == side.reindex(pd.to_datetime(trades["signal_time"])).to_numpy()).all()
    assert (trades["side"] == -1).any() and (trades["side"] == 1).any()
    # recorded: the fold's rule and sizing, in the report, the agent's card and the summary
    assert (fold["execution"]["sizing"], fold["execution"]["size_step"]) == ("probability", 0.0)
    assert report["config"]["base"]["primary"] == "momentum"
    assert report["config"]["sizing"] == {"sizing": "probability", "size_step": 0.0}
    card = OnnxAgent.load(out / "fold0.onnx").meta
    assert card["train_config"]["primary"] == card["walk_forward"]["primary"] == fold["primary"]
    assert card["walk_forward"]["execution"]["sizing"] == "probability"
    assert f"traded: fold 0 {fold['primary']}, probability sizing (step 0)" in capsys.readouterr().out


def test_a_direction_model_trained_both_ways_is_traded_long_and_short(ar1_csv, tmp_path, monkeypatch):
    from labeling import direction_bets

    backtests = []
    real_bt = wfr.run_backtest

    def backtest(data, *a, **kw):
        backtests.append(kw)
        return real_bt(data, *a, **kw)

    monkeypatch.setattr(wfr, "run_backtest", backtest)
    out = tmp_path / "out"
    assert wf.main(PRIMARY_ARGS + ["--data", str(ar1_csv), "--primary", "both", "--sizing", "fixed", "--trials", "1",
                                   "--search", "labels", "--study", "both", "--out", str(out)]) == 0
    probs = wfr.OnnxAgent.load(out / "fold0.onnx").predict_proba(load_ohlcv(str(ar1_csv)))
    for kw in backtests:  # each backtest reads the probability both ways: the bet's own, on the model's side
        assert kw["signal"].dropna().min() >= 0.5
        assert kw["side"].index.equals(kw["signal"].dropna().index)
    test_signal, test_side = direction_bets(probs.loc[backtests[-1]["signal"].index])
    pd.testing.assert_series_equal(backtests[-1]["side"], test_side)  # the fold's test: the exported agent's bets
    trades = pd.DataFrame(json.loads((out / "fold0.json").read_text())["trades"])
    assert set(trades["side"]) == {1, -1}


def test_a_strategy_search_with_a_primary_sweeps_its_sides_and_searches_the_size_step(ar1_csv, tmp_path,
                                                                                       monkeypatch):
    from engine import BarrierRules, Costs, RunConfig
    from engine.walkforward import cpcv as wf_cpcv
    from engine.walkforward import space
    from labeling import SmaCrossRule, primary_side

    sweeps, fitted, cpcv_sides = [], {}, []
    real_sweep, real_fold, real_bt = wfr.sweep, wfr._fit_fold_model, wf_cpcv.run_backtest

    def sweep(data, signal, rows, **kw):
        sweeps.append((data, rows.copy(), kw))
        return real_sweep(data, signal, rows, **kw)

    def fold_model(ctx, fold, tcfg, on_epoch):
        fitted[fold.fold] = res = real_fold(ctx, fold, tcfg, on_epoch)
        return res

    def cpcv_backtest(data, *a, **kw):
        cpcv_sides.append((data, kw["side"], kw["rules"]))
        return real_bt(data, *a, **kw)

    monkeypatch.setattr(wfr, "sweep", sweep)
    monkeypatch.setattr(wfr, "_fit_fold_model", fold_model)
    monkeypatch.setattr(wf_cpcv, "run_backtest", cpcv_backtest)
    out = tmp_path / "out"
    assert wf.main(PRIMARY_ARGS + ["--data", str(ar1_csv), "--search", "strategy", "--objective", "val_sharpe",
                                   "--primary", "smacross", "--trials", "4", "--study", "ps", "--out", str(out),
                                   "--cpcv", "3,1"]) == 0
    (data, rows, kw), = sweeps  # 4 trials, one sweep
    pd.testing.assert_series_equal(kw["side"], primary_side(data, SmaCrossRule()))
    trials = _trials(f"sqlite:///{(out / 'optuna.db').resolve()}", "ps_fold0")
    steps = [t.params["size_step"] for t in trials]
    assert rows["sizing"].tolist() == ["probability"] * 4 and rows["size_step"].tolist() == steps
    assert set(steps) <= set(space.SIZE_STEPS) and len(set(steps)) > 1
    # each trial's score is what backtrader gives with the rule's sides and the trial's size step
    report = json.loads((out / "report.json").read_text())
    fold = report["folds"][0]
    first, last = (pd.Timestamp(d) for d in fold["validation"])
    part = data.loc[:last]
    model = fitted[0]
    for t in trials:
        threshold = float(np.quantile(model.train_proba, 1.0 - t.params["signal_rate"]))
        bt = real_bt(part, "agent", signal=model.val_signal, side=primary_side(part, SmaCrossRule()),
                     rules=BarrierRules(threshold=threshold, pt=t.params["exec_pt"], sl=t.params["exec_sl"],
                                        sizing="probability", size_step=t.params["size_step"]),
                     costs=Costs(commission=0.0005),
                     run=RunConfig(engine="backtrader", cash=100_000.0, start=first, end=last,
                                   periods_per_year=infer_periods_per_year(data.index), benchmark=False))
        assert t.user_attrs["val_trades"] == bt.stats["n_trades"]
        assert t.user_attrs["val_return"] == pytest.approx(bt.stats["total_return"], abs=1e-9)
    # a meta-model near 0.5 sizes its bets at a few percent: a coarse step rounds some of them to nothing
    assert any(t.user_attrs["val_trades"] > 0 for t in trials)
    best = max(trials, key=lambda t: t.value)
    assert fold["primary"] == "smacross"
    assert (fold["execution"]["sizing"], fold["execution"]["size_step"]) == ("probability", best.params["size_step"])
    # CPCV retrains the selection and trades the rule's sides on each test group, with its size step
    assert len(cpcv_sides) == 3
    for d, side, rules in cpcv_sides:
        pd.testing.assert_series_equal(side, primary_side(d, SmaCrossRule()))
        assert (rules.sizing, rules.size_step) == ("probability", best.params["size_step"])


def test_the_primary_group_suggests_the_rules_parameters_and_from_params_rebuilds_them():
    from engine.walkforward import space
    from labeling import PRIMARIES, SmaCrossRule, parse_primary

    assert set(space.PRIMARY_RANGES) == set(PRIMARIES) - {"both"}  # "both" has no parameters
    for name, ranges in space.PRIMARY_RANGES.items():  # every parameter searched, in a range the rule accepts
        assert list(ranges) == [f.name for f in dataclasses.fields(PRIMARIES[name])]
        PRIMARIES[name](**{k: lo for k, (lo, hi) in ranges.items()})
        PRIMARIES[name](**{k: hi for k, (lo, hi) in ranges.items()})
    fast, slow = space.PRIMARY_RANGES["smacross"]["fast"], space.PRIMARY_RANGES["smacross"]["slow"]
    assert fast[1] < slow[0]  # every draw has fast < slow
    parse = wf_cli.build_parser().parse_args
    cfg = wf.config_from_args(parse(["--search", "primary", "--primary", "smacross"]))
    trial = optuna.trial.FixedTrial({"primary_fast": 4, "primary_slow": 70})
    tcfg, execution = space.suggest(trial, cfg.search, cfg.base, cfg.execution)
    assert tcfg.primary == "smacross:fast=4,slow=70" and parse_primary(tcfg.primary) == SmaCrossRule(4, 70)
    assert dataclasses.replace(tcfg, primary=cfg.base.primary) == cfg.base  # nothing else changed
    assert execution == space.Execution(sizing="probability")
    assert space.from_params(trial.params, cfg.base, cfg.execution) == (tcfg, execution)
    # a parameter at its default is no value given; another one would be unused: refused (test below)
    assert wf.config_from_args(parse(["--search", "primary", "--primary", "smacross:fast=10"])).base.primary
    # the strategy group searches the size step when the sizing is by probability, and only then
    trial = optuna.trial.FixedTrial({"signal_rate": 0.3, "exec_pt": 2.0, "exec_sl": 1.5, "size_step": 0.25})
    _, execution = space.suggest(trial, ("strategy",), cfg.base, space.Execution(sizing="probability"))
    rules = execution.rules(cfg.base, 0.5)
    assert (rules.sizing, rules.size_step, rules.pt, rules.sl) == ("probability", 0.25, 2.0, 1.5)
    assert space.from_params(trial.params, cfg.base, space.Execution(sizing="probability"))[1] == execution
    trial = optuna.trial.FixedTrial({"signal_rate": 0.3, "exec_pt": 2.0, "exec_sl": 1.5})
    _, execution = space.suggest(trial, ("strategy",), cfg.base, space.Execution())
    assert "size_step" not in trial.params and execution.rules(cfg.base, 0.5).sizing == "fixed"


def test_sizing_is_by_probability_with_a_primary_and_fingerprinted_only_when_not_the_default():
    from engine.walkforward.space import Execution

    config = wf.config_from_args
    parse = wf_cli.build_parser().parse_args
    plain = config(parse([]))
    fp = plain.fingerprint("x")  # what studies made before sizing existed recorded: they resume
    assert plain.execution == Execution() and "primary" not in fp["base"]
    assert "sizing" not in fp and "size_step" not in fp
    meta = config(parse(["--primary", "momentum"]))
    assert meta.execution == Execution(sizing="probability") and meta.base.primary == "momentum"
    assert meta.fingerprint("x") == config(parse(["--primary", "momentum", "--sizing", "probability"])).fingerprint("x")
    assert meta.fingerprint("x")["sizing"] == {"sizing": "probability", "size_step": 0.0}
    assert config(parse(["--primary", "momentum", "--sizing", "fixed"])).execution == Execution()
    stepped = config(parse(["--sizing", "probability", "--size-step", "0.1"]))
    assert stepped.execution == Execution(sizing="probability", size_step=0.1)
    assert stepped.fingerprint("x")["sizing"] == {"sizing": "probability", "size_step": 0.1}


class _PruneOddTrials(optuna.pruners.BasePruner):
    """Prunes every odd-numbered trial at its first report."""

    def prune(self, study, trial) -> bool:
        return trial.number % 2 == 1


def test_pruned_trials_count_in_the_deflated_sharpe_and_val_auc_is_maximised(tmp_path, monkeypatch):
    monkeypatch.setattr(optuna.pruners, "MedianPruner", lambda **kw: _PruneOddTrials())
    out = tmp_path / "out"
    args = TINY_ARGS + ["--objective", "val_auc", "--epochs", "2", "--folds", "1", "--trials", "4", "--study", "pr",
                        "--out", str(out)]
    assert wf.main(args) == 0
    report = json.loads((out / "report.json").read_text())
    trials = _trials(f"sqlite:///{(out / 'optuna.db').resolve()}", "pr_fold0")
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE", "PRUNED", "COMPLETE", "PRUNED"]
    # N of the Deflated Sharpe Ratio: every configuration tried, 2 completed + 2 pruned
    assert report["trials"] == {"complete": 2, "pruned": 2, "failed": 0}
    assert report["deflated_sharpe"]["n_trials"] == 4 and report["configurations_tried"] == 4
    # val_auc: each trial scores its validation AUC, and the fold keeps the highest
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert all(t.value == t.user_attrs["val_auc"] for t in done)
    assert report["objective"] == {"name": "val_auc", "direction": "maximize"}
    assert report["folds"][0]["best_value"] == max(t.value for t in done)


def test_a_failing_sweep_fails_its_batch_instead_of_leaving_it_running(tmp_path, monkeypatch, capsys):
    def broken(*a, **kw):
        raise RuntimeError("planted failure in the sweep")

    monkeypatch.setattr(wfr, "sweep", broken)
    out = tmp_path / "out"
    assert wf.main(STRATEGY_ARGS + ["--trials", "3", "--study", "sf", "--out", str(out)]) == 1
    assert "planted failure in the sweep" in capsys.readouterr().err
    trials = _trials(f"sqlite:///{(out / 'optuna.db').resolve()}", "sf_fold0")
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 3


def test_on_a_random_walk_no_trial_scores_better_than_the_best_constant(tmp_path):
    # focal alpha/gamma are searched; against the training base rate these trials scored 0.74-0.98
    # ("skill") at validation AUCs of 0.45-0.52. Against the best constant for the validation labels
    # under each trial's own loss, recalibration wins nothing: 1 = no skill.
    from datafeeds.synthetic import random_walk

    df, _ = random_walk(2000, seed=1)
    csv = tmp_path / "rw.csv"
    df.to_csv(csv)
    out = tmp_path / "out"
    args = ["--data", str(csv), "--epochs", "2", "--batch-size", "256", "--search", "model", "--folds", "1",
            "--trials", "4", "--study", "rw", "--out", str(out), "--quiet"]
    assert wf.main(args) == 0
    trials = _trials(f"sqlite:///{(out / 'optuna.db').resolve()}", "rw_fold0")
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) >= 2
    assert min(t.value for t in done) > 0.99
    assert all(0.35 < t.user_attrs["val_auc"] < 0.65 for t in done)
    report = json.loads((out / "report.json").read_text())
    assert report["folds"][0]["best_value"] > 0.99


def test_identical_rerun_resumes_without_new_trials_or_refits(first_run, capsys):
    out, args, _ = first_run
    url = f"sqlite:///{(out / 'optuna.db').resolve()}"
    before = {k: [(t.number, t.state) for t in _trials(url, f"e2e_fold{k}")] for k in range(2)}
    mtimes = {k: (out / f"fold{k}.onnx").stat().st_mtime_ns for k in range(2)}
    stats = json.loads((out / "report.json").read_text())["stitched"]["stats"]
    capsys.readouterr()
    assert wf.main(args) == 0
    printed = capsys.readouterr().out
    assert "fold 0: already finished (2 trials), resumed from the study: nothing recomputed" in printed
    assert "fold 1: already finished" in printed and "new trials this run: 0" in printed
    assert {k: [(t.number, t.state) for t in _trials(url, f"e2e_fold{k}")] for k in range(2)} == before
    assert {k: (out / f"fold{k}.onnx").stat().st_mtime_ns for k in range(2)} == mtimes
    report = json.loads((out / "report.json").read_text())
    assert report["new_trials_this_run"] == 0 and report["stitched"]["stats"] == stats


def test_a_changed_setting_is_refused_on_resume(first_run, capsys):
    out, args, _ = first_run
    assert wf.main(args + ["--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "made with other settings" in err and "epochs" in err


# ------------------------------------------------------------------------------------ CLI errors
@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--search", "modle"], "did you mean 'model'?"),
        (["--objective", "val_los"], "did you mean 'val_loss'?"),
        (["--trails", "3"], "did you mean '--trials'?"),
        (["--scheme", "rollin"], "did you mean 'rolling'?"),
        (["--cpcv", "six"], "give N,K, e.g. 6,2"),
        (["--sizing", "fixd"], "did you mean 'fixed'?"),
        (["--search", "primery"], "did you mean 'primary'?"),
    ],
)
def test_misspelt_names_exit_2_with_one_line_and_a_suggestion(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        wf.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--folds", "0"], "--folds must be in 1..1,000"),
        (["--search", "strategy"], "--objective val_sharpe"),
        (["--storage", "not a url"], "not a database URL"),
        (["--data", "sp5000"], "did you mean 'sp500'?"),
        (["--cpcv", "4,4"], "--cpcv N,K needs 2 <= N <= 16 groups and 1 <= K < N"),
        (["--study", ".."], "--study '..': use letters"),  # reports/.. is the repository root
        (["--study", ".hidden"], "starting with a letter or digit"),
        (["--heartbeat", str(10**20)], "--heartbeat must be in 1..86,400"),  # overflowed a sleep
        (["--trials", str(10**7)], "--trials must be in 1..1,000,000"),
        (["--n-jobs", "100000"], "--n-jobs must be in 1..256"),
        (["--timeout", "1e300"], "--timeout must be in (0, 10,000,000] seconds"),
        (["--primary", "momentum:lookbak=20"], "--primary: primary momentum: 'lookbak=20' is not a parameter; did "
                                               "you mean 'lookback'?"),
        (["--primary", "momentun"], "did you mean 'momentum'?"),
        (["--search", "primary"], "--search primary searches the parameters of a primary rule: name one with "
                                  "--primary (momentum or smacross)"),
        (["--search", "primary", "--primary", "momentum:lookback=30"],
         "lookback is searched by --search primary; name the rule alone (--primary momentum)"),
        (["--size-step", "0.1"], "--size-step rounds the sizes of --sizing probability"),
        (["--primary", "momentum", "--size-step", "1"], "--size-step must be in [0, 1)"),
        (["--primary", "momentum", "--search", "strategy", "--objective", "val_sharpe", "--size-step", "0.1"],
         "--size-step is searched by --search strategy"),
    ],
)
def test_bad_values_exit_2_with_one_line(argv, needle, tmp_path, capsys):
    assert wf.main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_output_folder_that_cannot_be_made_exits_2_with_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert wf.main(TINY_ARGS + ["--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out ") and "cannot create the folder" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("option", ["--cash", "--commission", "--slippage", "--timeout", "--test-frac", "--lr",
                                    "--pt", "--sl", "--size-step"])
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_numbers_are_refused_before_anything_runs(option, value, capsys, monkeypatch):
    monkeypatch.setattr(wfr, "run_walk_forward", lambda *a, **k: pytest.fail("ran with a non-finite option"))
    assert wf.main(TINY_ARGS + [f"{option}={value}"]) == 2  # "=": argparse reads a bare -inf as an option
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert option.split("-")[-1] in err and f"got {value}" in err


@pytest.mark.parametrize("field", ["cash", "commission", "timeout"])
def test_config_refuses_infinity_itself(field):
    with pytest.raises(ValueError, match=f"--{field} must be a finite number, got inf"):
        wf.WalkForwardConfig(**{field: float("inf")})


@pytest.mark.parametrize(
    "argv, option, group",
    [
        (["--d-model", "32"], "--d-model", "model"),  # default --search model
        (["--n-heads", "4"], "--n-heads", "model"),
        (["--seq-len", "16"], "--seq-len", "model"),
        (["--lr", "0.01"], "--lr", "model"),
        (["--search", "labels", "--horizon", "10"], "--horizon", "labels"),
        (["--search", "model,labels", "--pt", "2"], "--pt", "labels"),
    ],
)
def test_a_base_option_of_a_searched_group_is_refused(argv, option, group, capsys):
    assert wf.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {option} is searched by --search {group}; drop it or remove {group!r} from --search")


def test_base_options_of_unsearched_groups_or_at_their_defaults_are_kept():
    parse = wf_cli.build_parser().parse_args
    cfg = wf.config_from_args(parse(["--search", "labels", "--d-model", "32", "--lr", "0.01"]))
    assert (cfg.base.d_model, cfg.base.lr) == (32, 0.01)
    cfg = wf.config_from_args(parse(["--d-model", "16", "--pt", "2.5"]))  # 16 is the default; labels not searched
    assert (cfg.base.d_model, cfg.base.pt) == (16, 2.5)
    # the strategy group searches execution pt/sl; the label pt/sl stay the base's
    cfg = wf.config_from_args(parse(["--search", "strategy", "--objective", "val_sharpe", "--pt", "2.5"]))
    assert cfg.base.pt == 2.5


def test_test_engine_is_chosen_and_recorded():
    assert wf.WalkForwardConfig(engine="fast").fingerprint("x")["engines"] == {"validation": "fast", "test": "fast"}
    assert wf.config_from_args(wf_cli.build_parser().parse_args([])).engine == "backtrader"
    with pytest.raises(ValueError, match="did you mean 'fast'"):
        wf.WalkForwardConfig(engine="fats")


def test_embargo_help_says_it_drops_out_of_sample_bars_and_understates_cagr():
    text = " ".join(wf_cli.build_parser().format_help().split())
    assert "only drops out-of-sample bars" in text and "CAGR" in text and "understates" in text
    assert "understates the return rate" in " ".join(wf.__doc__.split())


def test_report_files_go_through_write_atomic(tmp_path, monkeypatch):
    written = []
    real = wf_report.write_atomic
    monkeypatch.setattr(wf_report, "write_atomic",
                        lambda path, data: written.append(Path(path).name) or real(path, data))
    wf_report.write_json(tmp_path / "r.json", {"a": np.float64(1.5), "t": pd.Timestamp("2020-01-02")})
    frame = pd.DataFrame({"equity": [1.0, 2.0]}, index=pd.DatetimeIndex(["2020-01-01", "2020-01-02"], name="datetime"))
    wf_report.write_csv(tmp_path / "e.csv", frame)
    fig = wf_report.plt.figure()
    wf_report.save_figure(fig, tmp_path / "f.png")
    assert written == ["r.json", "e.csv", "f.png"]
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1.5, "t": "2020-01-02 00:00:00"}
    assert pd.read_csv(tmp_path / "e.csv", index_col=0)["equity"].tolist() == [1.0, 2.0]
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not wf_report.plt.fignum_exists(fig.number)  # closed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.csv", "f.png", "r.json"]  # no temp files left


# ------------------------------------------------------------------------------------ pieces
def test_stitch_equity_by_hand():
    idx = pd.date_range("2020-01-01", periods=6, freq="D")
    a = pd.Series([100.0, 110.0, 120.0], index=idx[:3])
    b = pd.Series([100.0, 90.0, 150.0], index=idx[3:])
    out = wf.stitch_equity([a, b], cash=100.0)
    np.testing.assert_allclose(out.to_numpy(), [100, 110, 120, 120, 108, 180])
    with pytest.raises(ValueError, match="overlap"):
        wf.stitch_equity([a, a], cash=100.0)


def _sample(trial):
    return trial.suggest_float("x", 0.0, 1.0) + trial.suggest_int("n", 1, 100)


def test_sampler_seeds_by_trial_number_not_by_process():
    studies = [optuna.create_study(sampler=wf_search.TrialSeededTPE(seed=3, n_startup_trials=10)) for _ in range(2)]
    for s in studies:
        s.optimize(_sample, n_trials=4)
    params = [[t.params for t in s.trials] for s in studies]
    assert params[0] == params[1]  # same seed, same trial numbers: reproducible
    assert len({tuple(sorted(p.items())) for p in params[0]}) == 4  # distinct trial numbers: distinct draws
    other = optuna.create_study(sampler=wf_search.TrialSeededTPE(seed=4, n_startup_trials=10))
    other.optimize(_sample, n_trials=1)
    assert other.trials[0].params != params[0][0]


def test_a_failed_trial_does_not_shift_the_draws_of_the_trials_after_it():
    # uninterrupted: trials 0, 1, 2. Interrupted: trial 1 fails, its slot is re-run as trial 2 (new
    # number, a new draw), trial 3 follows: the draws are seeded by position (trials before that did
    # not fail), so the resumed study draws what the uninterrupted one drew, in the same order
    clean = optuna.create_study(sampler=wf_search.TrialSeededTPE(seed=5, n_startup_trials=10))
    clean.optimize(_sample, n_trials=3)
    broken = optuna.create_study(sampler=wf_search.TrialSeededTPE(seed=5, n_startup_trials=10))
    broken.optimize(_sample, n_trials=1)

    def dies(trial):
        _sample(trial)
        raise RuntimeError("killed")

    broken.optimize(dies, n_trials=1, catch=(RuntimeError,))
    broken.optimize(_sample, n_trials=2)
    done = [t.params for t in broken.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done == [t.params for t in clean.trials]
    assert wf_search.position(broken, 3) == 2


def test_a_failure_while_later_trials_run_hands_out_no_draw_twice():
    # trials 0 and 1 run (two workers); trial 0 fails; trial 2 must not take trial 1's draw
    study = optuna.create_study(sampler=wf_search.TrialSeededTPE(seed=5, n_startup_trials=10))
    t0, t1 = study.ask(), study.ask()
    for t in (t0, t1):
        t.suggest_float("x", 0.0, 1.0)
    study.tell(t0, state=optuna.trial.TrialState.FAIL)
    t2 = study.ask()
    t2.suggest_float("x", 0.0, 1.0)
    draws = {t.number: t.system_attrs["draw_position"] for t in study.get_trials(deepcopy=False)}
    assert draws == {0: 0, 1: 1, 2: 2}
    assert t2.params["x"] != t1.params["x"]


def test_a_trial_beyond_the_total_is_refused():
    study = optuna.create_study()
    for _ in range(2):
        study.ask()  # two trials in flight elsewhere fill a total of 2
    third = study.ask()
    with pytest.raises(wf_search.SurplusTrial):
        wf_search.check_not_surplus(third, cap=2)
    assert third.user_attrs.get("surplus") is True
    wf_search.check_not_surplus(study.ask(), cap=5)  # room left: no error


def test_a_failed_trial_queued_twice_runs_once():
    # two workers failing the same stale trial at once can queue two copies of it
    study = optuna.create_study()
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING,
                                                  system_attrs={"failed_trial": 7}))
    first, second = study.ask(), study.ask()  # pops the queued copies in order
    wf_search.check_not_surplus(first, cap=5)
    with pytest.raises(wf_search.SurplusTrial, match="copy of failed trial 7"):
        wf_search.check_not_surplus(second, cap=5)


# ------------------------------------------------------------------------------------ workers
def start_worker(storage: str, study: str, out: Path, trials: int, extra=()) -> subprocess.Popen:
    """A `python -m engine.walkforward` worker process on one fold of the tiny setup."""
    args = [sys.executable, "-m", "engine.walkforward", *TINY_ARGS, "--folds", "1", "--trials", str(trials),
            "--study", study, "--storage", storage, "--out", str(out), "--heartbeat", "1", *extra]
    args.remove("--quiet")
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})


def check_shared_study(storage: str, study: str, trials: int, procs: list) -> list:
    """Both workers succeed; the finished trials total exactly `trials`, unique numbers and parameters,
    each run by one worker; one worker refit the fold. Returns the study's trials."""
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text
    all_trials = _trials(storage, f"{study}_fold0")
    done = _finished(all_trials)
    assert len(done) == trials
    numbers = [t.number for t in all_trials]
    assert len(numbers) == len(set(numbers))
    assert len({tuple(sorted(t.params.items())) for t in done}) == trials  # no configuration evaluated twice
    workers = {t.user_attrs["worker"] for t in done}
    assert workers <= {f"{os.uname().nodename}:{p.pid}" for p in procs}
    assert len(workers) == 2, f"only {workers} ran trials"  # the work was shared
    result = optuna.load_study(study_name=f"{study}_fold0", storage=storage).user_attrs["fold_result"]
    assert result["finalised_by"] in workers | {f"{os.uname().nodename}:{p.pid}" for p in procs}
    assert sum("finalised here" in text for text in outputs) == 1, outputs  # the refit ran once
    for text in outputs:  # not --quiet: one readable line per trial this worker ran, no logging prefixes
        assert re.search(r"^fold 0 trial \d+: val_loss \d\.\d{4}  \(AUC [\d.na/]+, Sharpe [-\d.na/]+, \d+ trades, "
                         r"\d+\.\d s\)  pt=[\d.]+ sl=[\d.]+ horizon=\d+$", text, re.M), text
        assert "INFO" not in text and "__main__" not in text and "Traceback" not in text, text
    return all_trials


def plant_dead_workers_trial(storage_url: str, study: str) -> optuna.trial.FrozenTrial:
    """A RUNNING trial with one heartbeat long ago: what a worker killed mid-trial leaves behind."""
    storage = wf.open_storage(storage_url, heartbeat=1)
    s = optuna.create_study(storage=storage, study_name=f"{study}_fold0", direction="minimize")
    trial = s.ask({"pt": optuna.distributions.FloatDistribution(1.0, 3.0)})  # drew one parameter, then died
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(s.study_name), trial.number))
    time.sleep(3.5)  # > grace period (3 heartbeats of 1 s)
    return s.trials[trial.number]


def test_a_run_killed_mid_fold_and_resumed_reports_what_an_uninterrupted_run_reports(tmp_path):
    def command(name):
        # 8 epochs: trials long enough (~1 s) to be killed in the middle of one
        return [sys.executable, "-m", "engine.walkforward", *TINY_ARGS, "--folds", "1", "--trials", "4", "--study",
                name, "--out", str(tmp_path / name), "--heartbeat", "1", "--epochs", "8"]

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    clean = subprocess.run(command("clean"), cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert clean.returncode == 0, clean.stderr
    # the same study, killed (SIGKILL: no clean-up) while its third trial runs
    proc = subprocess.Popen(command("killed"), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"sqlite:///{(tmp_path / 'killed' / 'optuna.db').resolve()}"
    # kill once the third (or a later) trial runs and has beaten once: optuna records a trial's first
    # heartbeat just after creating it, and a trial killed before that could never go stale
    running = ("SELECT t.number FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
               "WHERE t.state = 'RUNNING' AND t.number >= 2")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        time.sleep(0.02)
        try:
            # read-only: connecting must not create the file before the run does
            with sqlite3.connect(f"file:{tmp_path / 'killed' / 'optuna.db'}?mode=ro", uri=True, timeout=1) as db:
                if db.execute(running).fetchall():
                    break
        except sqlite3.Error:  # the database or its tables do not exist yet
            continue
    proc.kill()
    proc.wait(timeout=30)
    assert any(t.state == optuna.trial.TrialState.RUNNING for t in _trials(url, "killed_fold0"))
    time.sleep(3.5)  # the dead worker's heartbeat goes stale (3 heartbeats of 1 s)
    resumed = subprocess.run(command("killed"), cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "clean" / "report.json").read_text())
    b = json.loads((tmp_path / "killed" / "report.json").read_text())
    assert b["trials"]["failed"] == 1 and b["configurations_tried"] == a["configurations_tried"] == 4
    def done(url_, name):
        return sorted((t.params["horizon"], round(t.params["pt"], 12), round(t.value, 12))
                      for t in _finished(_trials(url_, name)))
    assert done(url, "killed_fold0") == done(f"sqlite:///{(tmp_path / 'clean' / 'optuna.db').resolve()}", "clean_fold0")
    assert (b["folds"][0]["params"] == a["folds"][0]["params"]
            and b["folds"][0]["best_value"] == a["folds"][0]["best_value"])
    assert b["stitched"]["stats"] == a["stitched"]["stats"]
    assert b["deflated_sharpe"]["dsr"] == a["deflated_sharpe"]["dsr"]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # the planted trial comes from ask()
def test_two_workers_share_one_study_and_retry_a_dead_workers_trial(tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    dead = plant_dead_workers_trial(storage, "tw")
    procs = [start_worker(storage, "tw", tmp_path / "out", trials=4) for _ in range(2)]
    all_trials = check_shared_study(storage, "tw", 4, procs)
    by_number = {t.number: t for t in all_trials}
    assert by_number[dead.number].state == optuna.trial.TrialState.FAIL
    retries = [t for t in _finished(all_trials) if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retries) == 1  # run again once, with the parameter it had drawn
    assert retries[0].params["pt"] == dead.params["pt"]


def test_a_sqlite_transaction_holds_the_write_lock_from_its_first_read(tmp_path):
    # optuna pops a queued trial by reading it WAITING and then writing RUNNING: atomic between two
    # workers only if the read already holds the lock (else both pop and run the same trial)
    import sqlite3

    path = tmp_path / "lock.db"
    storage = wf.open_storage(f"sqlite:///{path}", heartbeat=1)
    other = sqlite3.connect(path, timeout=0.05, isolation_level=None)  # another process's connection
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM trials").scalar() == 0
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")  # it cannot write until the transaction ends
    other.execute("BEGIN IMMEDIATE")  # now it can
    other.execute("ROLLBACK")
    assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)


# ------------------------------------------------------------------------------------ the finalise claim
def _claim_info(pid: int, **extra) -> dict:
    return {"worker": f"h:{pid}", "pid": pid, "pid_space": wfs.pid_space(), "pid_start": wfs._pid_start(pid),
            "token": "t0", "alive": time.time(), **extra}


def _stale(info, now=0.0, seen=None):
    return wfs._claim_is_stale(info, 3.0, here=wfs.pid_space(), now=now, seen={} if seen is None else seen, name="m.0")


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_a_live_process_on_this_host_keeps_its_claim_however_late_its_heartbeat(live_pid):
    # under load a live holder's heartbeat can be late by any amount: on this host only death makes a claim stale
    assert _stale(_claim_info(live_pid, alive=time.time() - 3600), now=1e9) is None


def test_a_dead_or_replaced_process_on_this_host_loses_its_claim_at_once(live_pid):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert _stale(_claim_info(dead.pid)) == f"its process {dead.pid} is gone"
    # the pid now names another process (started at another time)
    reused = _claim_info(live_pid, pid_start="1")
    assert _stale(reused) == f"its process {live_pid} is gone (the pid now names another process)"
    assert _stale(_claim_info(live_pid, released=True)) == "released by its worker"


def test_a_claim_from_another_host_is_stale_after_the_grace_period_of_silence_on_our_clock():
    info = {"worker": "other:7", "pid": 7, "pid_space": "another-host", "token": "t", "alive": 12345.0}
    seen = {}
    assert _stale(info, now=100.0, seen=seen) is None  # first sight: its age is not known (clocks differ)
    assert _stale(info, now=103.0, seen=seen) is None  # silent for exactly the grace: still held
    assert _stale(dict(info, alive=12346.0), now=103.5, seen=seen) is None  # a beat: silence counts anew
    assert _stale(dict(info, alive=12346.0), now=106.0, seen=seen) is None
    assert _stale(dict(info, alive=12346.0), now=107.0, seen=seen) == "no heartbeat for 4 s"
    # a marker whose worker died before writing who it is: the same rule
    assert _stale(None, now=0.0, seen=seen) is None
    assert _stale(None, now=3.5, seen=seen) == "no heartbeat for 4 s"


@pytest.fixture
def storage(tmp_path):
    return wf.open_storage(f"sqlite:///{tmp_path / 'claims.db'}", heartbeat=1)


def _plant_claim(storage, name: str, info: dict) -> None:
    wfs.optuna.create_study(storage=storage, study_name=name).set_user_attr("claim", info)


def test_one_claim_at_a_time_and_a_released_claim_is_taken_over(storage):
    first = wfs.take_claim(storage, "f_finalise", "me:1", heartbeat=1)
    assert first.name == "f_finalise.0" and wfs.holds_claim(storage, first)
    assert wfs.take_claim(storage, "f_finalise", "me:2", heartbeat=1) is None  # held by a live process
    wfs.release_claim(storage, first, finished=False)
    second = wfs.take_claim(storage, "f_finalise", "me:2", heartbeat=1)
    assert second.name == "f_finalise.1"
    assert wfs.holds_claim(storage, second) and not wfs.holds_claim(storage, first)
    wfs.release_claim(storage, second, finished=True)  # the fold is done: its markers go
    assert not [n for n in optuna.get_all_study_names(storage) if n.startswith("f_finalise")]


def test_two_workers_taking_over_a_dead_claim_at_once_get_one_claim(storage, monkeypatch):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _plant_claim(storage, "f_finalise.0", _claim_info(dead.pid))
    # both read the dead claim before either took it over
    top = wfs._top_generation(storage, "f_finalise")
    monkeypatch.setattr(wfs, "_top_generation", lambda *a: top)
    a = wfs.take_claim(storage, "f_finalise", "a:1", heartbeat=1)
    b = wfs.take_claim(storage, "f_finalise", "b:2", heartbeat=1)
    assert a is not None and a.generation == 1 and b is None
    assert wfs.holds_claim(storage, a)  # the loser did not delete the winner's claim


def _fold_ctx(storage, out: Path):
    out.mkdir(exist_ok=True)
    cfg = SimpleNamespace(heartbeat=1, out_dir=out)
    return SimpleNamespace(storage=storage, worker="me:1", cfg=cfg, progress=wf_console.Progress(False, trials=1))


def test_a_worker_that_claims_after_the_result_was_recorded_returns_it_without_refitting(storage, tmp_path,
                                                                                          monkeypatch):
    # the holder recorded the fold's result and exited between this worker's result check and its claim
    study = optuna.create_study(storage=storage, study_name="f_fold0")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _plant_claim(storage, "f_fold0_finalise.0", _claim_info(dead.pid))
    recorded = {"fold": 0, "finalised_by": f"h:{dead.pid}"}
    wfs.record_fold_result(study, recorded)
    monkeypatch.setattr(wfr, "_finalise", lambda *a, **k: pytest.fail("refit although the result was recorded"))
    assert wfr._finalise_claimed(_fold_ctx(storage, tmp_path / "out"), SimpleNamespace(fold=0), study) == recorded
    assert optuna.get_all_study_names(storage) == ["f_fold0"]  # claim markers cleaned up


def test_a_worker_whose_claim_was_taken_over_records_nothing(storage, tmp_path, monkeypatch, caplog):
    out = tmp_path / "out"
    study = optuna.create_study(storage=storage, study_name="f_fold0")

    def refit_while_silent(ctx, fold, study, onnx_tmp):
        onnx_tmp.write_bytes(b"mine")
        # meanwhile another host took the silent claim over, refit and exported
        _plant_claim(storage, "f_fold0_finalise.1", {"worker": "other:9", "pid": 9, "pid_space": "x", "token": "t9",
                                                     "alive": time.time()})
        (out / "fold0.onnx").write_bytes(b"theirs")
        return {"fold": 0, "finalised_by": "me:1"}

    monkeypatch.setattr(wfr, "_finalise", refit_while_silent)
    with caplog.at_level(logging.WARNING, logger="engine.walkforward"):
        assert wfr._finalise_claimed(_fold_ctx(storage, out), SimpleNamespace(fold=0), study) == "blocked"
    assert wfs.fold_result(study) is None
    assert (out / "fold0.onnx").read_bytes() == b"theirs"
    assert sorted(p.name for p in out.iterdir()) == ["fold0.onnx"]  # no fold0.json, no temporary export
    assert "another worker took over this fold's refit" in caplog.text


def test_the_winner_records_its_result_and_moves_its_agent_into_place(storage, tmp_path, monkeypatch):
    study = optuna.create_study(storage=storage, study_name="f_fold0")

    def refit(ctx, fold, study, onnx_tmp):
        onnx_tmp.write_bytes(b"mine")
        return {"fold": 0, "finalised_by": "me:1"}

    monkeypatch.setattr(wfr, "_finalise", refit)
    out = tmp_path / "out"
    result = wfr._finalise_claimed(_fold_ctx(storage, out), SimpleNamespace(fold=0), study)
    assert result == {"fold": 0, "finalised_by": "me:1"} == wfs.fold_result(study)
    assert (out / "fold0.onnx").read_bytes() == b"mine"
    assert json.loads((out / "fold0.json").read_text()) == result
    assert sorted(p.name for p in out.iterdir()) == ["fold0.json", "fold0.onnx"]
    assert optuna.get_all_study_names(storage) == ["f_fold0"]


def test_the_heartbeat_survives_a_deleted_marker_and_a_busy_database(storage, caplog, monkeypatch):
    import threading

    claim = wfs.take_claim(storage, "f_finalise", "me:1", heartbeat=1)
    real = storage.set_study_user_attr
    calls = []

    def busy_once(*a):
        calls.append(a)
        if len(calls) == 1:
            raise optuna.exceptions.StorageInternalError("database is locked")
        return real(*a)

    monkeypatch.setattr(storage, "set_study_user_attr", busy_once)
    stop = threading.Event()
    with caplog.at_level(logging.WARNING, logger="engine.walkforward"):
        # beat 1 fails (busy), beat 2 succeeds, then the marker is gone: the beat ends with a warning, no raise
        def delete_after_second_beat(*a):
            out = busy_once(*a)
            if len(calls) == 2:
                storage.delete_study(storage.get_study_id_from_name(claim.name))
            return out

        monkeypatch.setattr(storage, "set_study_user_attr", delete_after_second_beat)
        wfs._claim_heartbeat(storage, claim, 0.001, stop)
    assert len(calls) == 2
    assert "heartbeat of the claim f_finalise.0 failed (database is locked); retrying" in caplog.text
    assert "the claim f_finalise.0 was taken over by another worker" in caplog.text


# ------------------------------------------------------------------------------------ console
def test_trial_lines_round_parameters_and_name_the_scores():
    params = {"pt": 1.75, "sl": 2.0948085948112945, "horizon": 10, "d_model": 16, "lr": 0.000321456,
              "dropout": 0.0, "seq_len": 32}
    assert wf_console.format_params(params) == "pt=1.75 sl=2.095 horizon=10 d_model=16 lr=3.21e-04 dropout=0 seq_len=32"
    assert wf_console.format_params({"lr": 3.2e-4, "big": 123456.0, "x": 12.5}) == "lr=3.2e-04 big=1.23e+05 x=12.5"
    line = wf_console.trial_line(0, 3, "val_loss", 0.98712, {"auc": 0.51234, "sharpe": 0.3121, "trades": 42,
                                                              "seconds": 12.34}, {"pt": 1.75, "horizon": 10})
    assert line == "fold 0 trial 3: val_loss 0.9871  (AUC 0.512, Sharpe 0.31, 42 trades, 12.3 s)  pt=1.75 horizon=10"
    assert wf_console.trial_line(1, 0, "val_sharpe", -0.25, {"auc": None, "sharpe": None, "trades": 0,
                                                              "seconds": 1.0}, {}) == (
        "fold 1 trial 0: val_sharpe -0.2500  (AUC n/a, Sharpe n/a, 0 trades, 1.0 s)  ")
    assert wf_console.pruned_line(2, 5, 3, 1.02134, 8.06, {"pt": 2.0}) == (
        "fold 2 trial 5: pruned after epoch 3, val_loss 1.0213  (8.1 s)  pt=2")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bars_on_a_terminal_and_none_when_quiet():
    for enabled in (True, False):
        term = _Terminal()
        with wf_console.Progress(enabled, trials=5, file=term) as progress:
            progress.fold(0, 2)
            with progress.epochs("fold 0 trial 2", 3) as bar:
                bar.update(1)
            progress.fold(0, 3)
            progress.fold_done(0)
        text = term.getvalue()
        if enabled:
            assert "fold 0:  40%" in text and "fold 0:  60%" in text and "3/5" in text
            assert "fold 0 trial 2:   0%" in text and "0/3 [" in text  # the epoch bar of the trial
        else:
            assert text == ""
    term = _Terminal()  # several trials at once (--n-jobs): the fold bar alone
    with wf_console.Progress(True, trials=5, n_jobs=2, file=term) as progress:
        progress.fold(0, 1)
        with progress.epochs("fold 0 trial 1", 3) as bar:
            bar.update(1)
    assert "fold 0:  20%" in term.getvalue() and "trial" not in term.getvalue().replace("trial/s", "")


@pytest.mark.parametrize("quiet", [True, False])
def test_the_cli_draws_progress_bars_unless_quiet(quiet, monkeypatch):
    seen = {}

    def fake_run(cfg, *, command, progress):
        seen["progress"] = progress
        raise RuntimeError("stop here")

    monkeypatch.setattr(wfr, "run_walk_forward", fake_run)
    assert wf.main(TINY_ARGS[:-1] + (["--quiet"] if quiet else [])) == 1
    assert seen == {"progress": not quiet}


def test_console_lines_are_plain_and_warnings_say_so():
    fmt = wf_console._ConsoleFormatter()

    def record(level, msg):
        return logging.LogRecord("engine.walkforward", level, __file__, 1, msg, (), None)

    assert fmt.format(record(logging.INFO, "fold 0 trial 1: val_loss 0.9")) == "fold 0 trial 1: val_loss 0.9"
    assert fmt.format(record(logging.WARNING, "storage error")) == "warning: storage error"
    assert fmt.format(record(logging.ERROR, "boom")) == "error: boom"
    captured = "x.py:3: UserWarning: careful\n  warn('careful')\n"  # how logging.captureWarnings words one
    assert fmt.format(record(logging.WARNING, captured)) == "warning: x.py:3: UserWarning: careful\n  warn('careful')"


def test_ctrl_c_prints_one_line_exits_130_and_fails_the_running_trial(tmp_path):
    storage = f"sqlite:///{tmp_path / 'int.db'}"
    args = [sys.executable, "-m", "engine.walkforward", *TINY_ARGS[:-1], "--epochs", "30", "--folds", "1",
            "--trials", "2", "--study", "ci", "--storage", storage, "--out", str(tmp_path / "out")]
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
        deadline, running = time.time() + 180, None
        while running is None and time.time() < deadline and proc.poll() is None:
            try:
                running = next((t for t in _trials(storage, "ci_fold0") if t.state == optuna.trial.TrialState.RUNNING),
                               None)
            except KeyError:  # the study is not created yet
                pass
            time.sleep(0.05)
        assert running is not None, "no trial started"
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
    states = {t.number: t.state for t in _trials(storage, "ci_fold0")}
    assert states[running.number] == optuna.trial.TrialState.FAIL
    assert optuna.trial.TrialState.RUNNING not in states.values()


def test_ctrl_c_exits_130_even_when_it_landed_in_code_compiled_from_a_string(tmp_path):
    # CPython makes `python -m` die by SIGINT (-2) after a KeyboardInterrupt raised inside exec/eval of a
    # string (dataclasses, SQLAlchemy do that) even when it was caught: the exit status must still be 130
    (tmp_path / "interrupted_run.py").write_text(
        "import sys\n"
        "from engine import walkforward\n"
        "from engine.walkforward import run as wf_run\n"
        "wf_run.run_walk_forward = lambda *a, **k: exec('raise KeyboardInterrupt', {})\n"
        f"sys.exit(walkforward.main({TINY_ARGS + ['--out', str(tmp_path / 'out')]!r}))\n")
    proc = subprocess.run([sys.executable, "-m", "interrupted_run"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "\ninterrupted; finished trials are kept: rerun the same command to resume\n"


def test_a_ctrl_c_swallowed_by_a_finaliser_still_stops_the_run_and_prints_nothing(capsys):
    import threading

    class Finalised:
        def __del__(self):  # Ctrl-C while the garbage collector runs a finaliser: Python swallows the
            signal.raise_signal(signal.SIGINT)  # KeyboardInterrupt ('Exception ignored in ...')

    stop = threading.Event()
    with wf_console.stop_on_interrupt(stop):
        Finalised()
        assert stop.is_set()
        with pytest.raises(KeyboardInterrupt):  # the next epoch, trial or fold stops the run
            wf_console.check_stop(stop)
    assert capsys.readouterr().err == ""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # the other worker's trial comes from ask()
def test_a_trial_interrupted_before_its_objective_runs_is_failed_not_left_running(storage, monkeypatch):
    # Ctrl-C just after optuna created the trial and before its first heartbeat: optuna leaves it
    # RUNNING with no heartbeat, which no worker would ever fail, so every rerun would wait for it
    import threading

    study = optuna.create_study(storage=storage, study_name="i_fold0", sampler=wf_search.TrialSeededTPE(0, 1))
    other = optuna.load_study(study_name="i_fold0", storage=storage).ask()  # another worker's, in flight: left alone
    real = wf_search.TrialSeededTPE.before_trial

    def interrupted(self, study, trial):
        real(self, study, trial)
        raise KeyboardInterrupt

    monkeypatch.setattr(wf_search.TrialSeededTPE, "before_trial", interrupted)
    ctx = SimpleNamespace(cfg=SimpleNamespace(timeout=None, n_jobs=1, trials=5, search=("model",)), spent={},
                          storage=storage, progress=wf_console.Progress(False, trials=5), stop=threading.Event())
    with pytest.raises(KeyboardInterrupt):
        wfr._search(ctx, SimpleNamespace(fold=0), study, n_trials=1)
    states = [t.state for t in optuna.load_study(study_name="i_fold0", storage=storage).trials]
    assert states == [optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL]
    assert other.number == 0
