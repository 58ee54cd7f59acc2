"""agents.training.compare: the agent against its baselines across CPCV paths, and that no test group is trained on."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from agents.training import compare
from agents.training.config import TrainConfig
from conftest import TINY
from datafeeds import load_ohlcv


def test_inner_split_keeps_the_tail_for_stopping_and_purges_before_it():
    ends = np.arange(0, 100, 2)  # 50 events, every other bar
    inner, stop = compare._inner_split(ends, horizon=5)
    assert stop.tolist() == list(range(80, 100, 2))  # the last 20%: 10 events
    assert inner.tolist() == list(range(0, 75, 2))  # 76 and 78 would label into bar 80: purged
    assert inner.max() + 5 < stop.min()


def test_test_ends_need_a_full_finite_window_and_a_label():
    x = np.ones((20, 2), np.float32)
    x[5, 1] = np.nan  # windows of 3 that hold bar 5 are out: ends 5, 6, 7
    y = np.ones(20, np.float32)
    y[12] = np.nan  # no label
    prep = type("P", (), {"x": x, "y": y})()
    assert compare._test_ends(prep, 3, range(3, 14)).tolist() == [3, 4, 8, 9, 10, 11, 13]


def test_summarise_medians_and_shares():
    paths = [{"auc": {"agent": a, "logistic": lo, "gbm": g}, "agent_minus_logistic": a - lo, "agent_minus_gbm": a - g,
              "agent_minus_best": a - max(lo, g)}
             for a, lo, g in [(0.60, 0.50, 0.55), (0.52, 0.54, 0.50), (0.56, 0.51, 0.58)]]
    s = compare.summarise(paths)
    assert s["auc_agent"] == {"median": 0.56, "min": 0.52, "max": 0.60}
    assert s["agent_minus_logistic"]["median"] == pytest.approx(0.05)
    assert s["agent_minus_logistic"]["share_positive"] == pytest.approx(2 / 3)
    assert s["agent_minus_gbm"]["min"] == pytest.approx(-0.02)
    assert s["agent_minus_best"]["share_positive"] == pytest.approx(1 / 3)
    assert compare.summarise([])["agent_minus_gbm"] is None


@pytest.fixture(scope="module")
def compared(monkeypatch_module):
    """A 3-group, 2-tested comparison on real sp500 bars with a tiny agent; every fit's events recorded."""
    import agents.training.trainer as trainer

    seen, real_fit = [], trainer.fit

    def recording_fit(cfg, prep, **kw):
        seen.append((prep.train_ends.copy(), prep.val_ends.copy()))
        return real_fit(cfg, prep, **kw)

    monkeypatch_module.setattr(trainer, "fit", recording_fit)
    tiny = {k: v for k, v in TINY.items() if k not in ("data", "start", "end", "holdout")}
    cfg = TrainConfig(**{**tiny, "epochs": 1})
    df = load_ohlcv("sp500", start="2005-01-01", end="2012-12-31")
    return cfg, df, compare.compare_cpcv(cfg, df, 3, 2), seen


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_compare_cpcv_paths_are_the_mean_of_their_groups(compared):
    cfg, df, res, _ = compared
    assert res["n_splits"] == comb(3, 2) and res["n_paths"] == comb(2, 1)
    by_split = {r["split"]: r for r in res["splits"]}
    for p in res["paths"]:
        assert sorted(g for g, _ in p["groups"]) == [0, 1, 2]  # every group once
        for m in compare.MODELS:
            aucs = [by_split[s]["groups"][g]["auc"][m] for g, s in p["groups"]]
            assert p["auc"][m] == pytest.approx(np.mean(aucs))
            assert all(0.3 < a < 0.7 for a in aucs)
        assert p["agent_minus_gbm"] == pytest.approx(p["auc"]["agent"] - p["auc"]["gbm"])
    assert res["summary"]["agent_minus_logistic"]["median"] == pytest.approx(
        np.median([p["agent_minus_logistic"] for p in res["paths"]]))


def test_compare_cpcv_never_trains_or_stops_on_a_test_group(compared):
    cfg, df, res, seen = compared
    assert len(seen) == res["n_splits"]
    from labeling import cpcv_splits

    splits = cpcv_splits(len(df), 3, 2, purge=res["purge"], embargo=res["embargo"])
    for sp, (train, stop) in zip(splits, seen):
        for r in sp.test:
            for ends in (train, stop):  # no window ends in a test group, no label (horizon bars) reaches one
                assert not np.any((ends + cfg.horizon >= r.start) & (ends < r.stop))
                after = ends[ends >= r.stop]  # nor does a later window hold a test bar
                assert np.all(after - cfg.seq_len + 1 >= r.stop)
        assert train.max() + cfg.horizon < stop.min()
        rec = res["splits"][sp.split]
        assert rec["inner_train_events"] == len(train) and rec["stop_events"] == len(stop)


def test_compare_cpcv_rejects_too_few_bars():
    tiny = {k: v for k, v in TINY.items() if k not in ("data", "start", "end", "holdout")}
    df = load_ohlcv("sp500", start="2010-01-01", end="2010-06-30")
    with pytest.raises(ValueError, match="bars|groups|events"):
        compare.compare_cpcv(TrainConfig(**tiny), df, 6, 2)

