"""Walk-forward tuning: end-to-end on real data, resume without recomputation, workers sharing a study."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from agents.runtime import OnnxAgent
from datafeeds import load_ohlcv
from engine import walkforward as wf
from engine.deflated_sharpe import deflated_sharpe_ratio, mean_within_group_variance
from labeling import walk_forward_folds

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
    args = TINY_ARGS + ["--folds", "2", "--trials", "2", "--study", "e2e", "--out", str(out)]
    calls = []  # (engine, first bar) of every backtest the run makes
    real = wf.run_backtest

    def recording(*a, **kw):
        calls.append((kw.get("engine", "backtrader"), pd.Timestamp(kw["start"])))
        return real(*a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wf, "run_backtest", recording)
        assert wf.main(args) == 0
    return out, args, calls


def test_run_writes_agents_plots_and_an_honest_report(first_run):
    out, _, _ = first_run
    report = json.loads((out / "report.json").read_text())
    for name in ("fold0.onnx", "fold1.onnx", "fold0_history.png", "fold1_history.png", "stitched_equity.png",
                 "fold0.json", "fold1.json", "stitched_equity.csv"):
        assert (out / name).stat().st_size > 0, name
    url = f"sqlite:///{(out / 'optuna.db').resolve()}"
    n = sum(len(_finished(_trials(url, f"e2e_fold{k}"))) for k in range(2))
    assert n == 4 and report["configurations_tried"] == 4
    assert report["trials"]["complete"] + report["trials"]["pruned"] == 4
    assert report["new_trials_this_run"] == 4
    assert [f["this_run"] for f in report["folds"]] == ["finalised here", "finalised here"]
    # folds follow each other: test blocks are the walk-forward splits of the loaded bars, in order
    df = load_ohlcv("sp500", start=START, end=END)
    splits = walk_forward_folds(len(df), n_folds=2, purge=20)  # label search: horizons up to 20 bars
    for f, s in zip(report["folds"], splits):
        assert f["test"] == [str(df.index[s.test.start]), str(df.index[s.test.stop - 1])]
        assert f["validation"] == [str(df.index[s.val.start]), str(df.index[s.val.stop - 1])]


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
    # of the trials' validation Sharpes (each fold's 2 trials share one validation period)
    var = np.mean([np.var(f["trial_val_sr"], ddof=1) for f in folds])
    dsr = deflated_sharpe_ratio(stitched["equity"].pct_change().dropna(),
                                [s for f in folds for s in f["trial_val_sr"]], n_trials=4, var_trial_sharpe=var)
    d = report["deflated_sharpe"]
    assert d["var_trial_sharpe"] == pytest.approx(var, rel=1e-12)
    assert d["var_trial_sharpe"] == pytest.approx(mean_within_group_variance([f["trial_val_sr"] for f in folds])[0])
    assert d["var_pooled_across_folds"] == pytest.approx(np.var([s for f in folds for s in f["trial_val_sr"]], ddof=1))
    assert "within-fold" in d["var_method"] and "conservative" in d["note"]
    assert d["dsr"] == pytest.approx(dsr["dsr"], rel=1e-9)
    assert d["n_trials"] == 4


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
        assert agent.threshold == pytest.approx(fold["execution"]["threshold"])
        # refit epochs = the best trial's best epoch
        assert card["metrics"]["epochs_run"] == fold["best_epoch"] == 1


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
        (["--folds", "0"], "--folds must be >= 1"),
        (["--search", "strategy"], "--objective val_sharpe"),
        (["--storage", "not a url"], "not a database URL"),
        (["--data", "sp5000"], "did you mean 'sp500'?"),
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
                                    "--pt", "--sl"])
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_numbers_are_refused_before_anything_runs(option, value, capsys, monkeypatch):
    monkeypatch.setattr(wf, "run_walk_forward", lambda *a, **k: pytest.fail("ran with a non-finite option"))
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
    parse = wf._parser().parse_args
    cfg = wf.config_from_args(parse(["--search", "labels", "--d-model", "32", "--lr", "0.01"]))
    assert (cfg.base.d_model, cfg.base.lr) == (32, 0.01)
    cfg = wf.config_from_args(parse(["--d-model", "16", "--pt", "2.5"]))  # 16 is the default; labels not searched
    assert (cfg.base.d_model, cfg.base.pt) == (16, 2.5)
    # the strategy group searches execution pt/sl; the label pt/sl stay the base's
    cfg = wf.config_from_args(parse(["--search", "strategy", "--objective", "val_sharpe", "--pt", "2.5"]))
    assert cfg.base.pt == 2.5


def test_test_engine_is_chosen_and_recorded():
    assert wf.WalkForwardConfig(engine="fast").fingerprint("x")["engines"] == {"validation": "fast", "test": "fast"}
    assert wf.config_from_args(wf._parser().parse_args([])).engine == "backtrader"
    with pytest.raises(ValueError, match="did you mean 'fast'"):
        wf.WalkForwardConfig(engine="fats")


def test_embargo_help_says_it_drops_out_of_sample_bars_and_understates_cagr():
    text = " ".join(wf._parser().format_help().split())
    assert "only drops out-of-sample bars" in text and "CAGR" in text and "understates" in text
    assert "understates the return rate" in " ".join(wf.__doc__.split())


def test_report_files_go_through_write_atomic(tmp_path, monkeypatch):
    written = []
    real = wf.write_atomic
    monkeypatch.setattr(wf, "write_atomic", lambda path, data: written.append(Path(path).name) or real(path, data))
    wf._write_json(tmp_path / "r.json", {"a": np.float64(1.5), "t": pd.Timestamp("2020-01-02")})
    frame = pd.DataFrame({"equity": [1.0, 2.0]}, index=pd.DatetimeIndex(["2020-01-01", "2020-01-02"], name="datetime"))
    wf._write_csv(tmp_path / "e.csv", frame)
    fig = wf.plt.figure()
    wf._save_figure(fig, tmp_path / "f.png")
    assert written == ["r.json", "e.csv", "f.png"]
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1.5, "t": "2020-01-02 00:00:00"}
    assert pd.read_csv(tmp_path / "e.csv", index_col=0)["equity"].tolist() == [1.0, 2.0]
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not wf.plt.fignum_exists(fig.number)  # closed
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
    studies = [optuna.create_study(sampler=wf._TrialSeededTPE(seed=3, n_startup_trials=10)) for _ in range(2)]
    for s in studies:
        s.optimize(_sample, n_trials=4)
    params = [[t.params for t in s.trials] for s in studies]
    assert params[0] == params[1]  # same seed, same trial numbers: reproducible
    assert len({tuple(sorted(p.items())) for p in params[0]}) == 4  # distinct trial numbers: distinct draws
    other = optuna.create_study(sampler=wf._TrialSeededTPE(seed=4, n_startup_trials=10))
    other.optimize(_sample, n_trials=1)
    assert other.trials[0].params != params[0][0]


def test_a_trial_beyond_the_total_is_refused():
    study = optuna.create_study()
    for _ in range(2):
        study.ask()  # two trials in flight elsewhere fill a total of 2
    third = study.ask()
    with pytest.raises(wf._SurplusTrial):
        wf._check_not_surplus(third, cap=2)
    assert third.user_attrs.get("surplus") is True
    wf._check_not_surplus(study.ask(), cap=5)  # room left: no error


def test_a_failed_trial_queued_twice_runs_once():
    # two workers failing the same stale trial at once can queue two copies of it
    study = optuna.create_study()
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING,
                                                  system_attrs={"failed_trial": 7}))
    first, second = study.ask(), study.ask()  # pops the queued copies in order
    wf._check_not_surplus(first, cap=5)
    with pytest.raises(wf._SurplusTrial, match="copy of failed trial 7"):
        wf._check_not_surplus(second, cap=5)


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
