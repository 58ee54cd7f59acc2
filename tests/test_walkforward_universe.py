"""Walk-forward over a universe: one calendar of folds, pooled training, portfolios; a universe of one is the
single-instrument walk-forward."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from agents import TransformerAgent
from datafeeds import load_ohlcv
from engine import walkforward as wf
from engine.walkforward import run as wfr

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
    (["--data", "sp500,goog", "--cpcv", "4,2"], "--cpcv is not offered for a universe"),
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
    import numpy as np

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
