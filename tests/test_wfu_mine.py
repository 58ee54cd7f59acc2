"""(scratch: merged into test_walkforward_universe.py)"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from engine import walkforward as wf

TINY = ["--epochs", "1", "--seq-len", "8", "--d-model", "8", "--n-heads", "1", "--batch-size", "256",
        "--search", "labels", "--quiet"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TBM_CACHE", str(tmp_path / "cache"))  # the universe's feature store


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
    results = [{"fold": 0, "equity": [100.0, 110.0], "trades": [{"symbol": "a", "pnl": 10.0, "exit_time": "2020-01-02"}],
                "contribution": [{"symbol": "a", "return_contribution": 0.1}]},
               {"fold": 1, "equity": [100.0, 95.0], "trades": [{"symbol": "b", "pnl": -5.0, "exit_time": "2020-02-03"}],
                "contribution": [{"symbol": "b", "return_contribution": -0.05}]}]
    table, curves = member_contributions(results, 100.0)
    assert table.loc["a", "overall"] == pytest.approx(0.10) and table.loc["b", "overall"] == pytest.approx(-0.055)
    assert np.isnan(table.loc["a", "fold 1"]) and table.loc["b", "fold 1"] == -0.05
    assert curves.loc[pd.Timestamp("2020-02-03")].tolist() == pytest.approx([0.10, -0.055])
