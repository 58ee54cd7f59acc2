"""The baselines beside every agent: AUC by hand, the bootstrap interval of a difference, the
price-and-volume-only baseline, the gradient-boosting baseline's lagged rows, and what the card and
the console show."""

from __future__ import annotations

import numpy as np
import pytest

from agents.artifact.baseline import auc_difference, auc_of, fit_logistic, gbm_baseline, linear_baselines


def test_auc_by_hand_with_ties_counted_half():
    y = np.array([0, 0, 1, 1])
    # pairs (pos, neg): (0.35 vs 0.1) win, (0.35 vs 0.4) loss, (0.8 vs 0.1) win, (0.8 vs 0.4) win -> 3/4
    assert auc_of(y, np.array([0.1, 0.4, 0.35, 0.8]))[0] == 0.75
    # one tie among the four pairs: 0.5 for it -> (1 + 0.5 + 1 + 1) / 4
    assert auc_of(y, np.array([0.1, 0.4, 0.4, 0.8]))[0] == 0.875
    assert np.isnan(auc_of(np.array([1, 1]), np.array([0.2, 0.3]))[0])
    rows = auc_of(np.tile(y, (2, 1)), np.array([[0.1, 0.4, 0.35, 0.8], [0.8, 0.35, 0.4, 0.1]]))
    assert rows.tolist() == [0.75, 0.25]


def test_auc_difference_of_a_model_with_itself_is_exactly_zero():
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.4
    s = rng.random(500) + y * 0.3
    d = auc_difference(y, s, s, block=10)
    assert (d["value"], d["low"], d["high"]) == (0.0, 0.0, 0.0)
    assert d["n_boot"] == 1000 and d["block"] == 10 and d["level"] == 0.95


def test_auc_difference_interval_excludes_zero_only_for_a_real_gap():
    rng = np.random.default_rng(1)
    n = 2000
    y = rng.random(n) < 0.5
    strong = y + rng.normal(0, 1.0, n)  # AUC ~0.76
    weak = y + rng.normal(0, 3.0, n)  # AUC ~0.59
    d = auc_difference(y, strong, weak, block=20, seed=3)
    assert 0.1 < d["value"] < 0.25 and d["low"] > 0.05
    # two equally informative but different scores: the interval holds 0
    other = y + rng.normal(0, 1.0, n)
    d = auc_difference(y, strong, other, block=20, seed=3)
    assert d["low"] < 0 < d["high"]
    assert d["high"] - d["low"] < 0.1


def test_blocks_widen_the_interval_of_dependent_events():
    # each outcome repeated 20 times in a row (overlapping labels): resampling single events
    # pretends 20x the information; blocks of 20 do not
    rng = np.random.default_rng(2)
    y = np.repeat(rng.random(100) < 0.5, 20)
    a = np.repeat(rng.random(100), 20) + 0.3 * y
    b = np.repeat(rng.random(100), 20) + 0.3 * y
    single = auc_difference(y, a, b, block=1, seed=0)
    blocked = auc_difference(y, a, b, block=20, seed=0)
    assert blocked["high"] - blocked["low"] > 2.5 * (single["high"] - single["low"])


def test_the_price_volume_baseline_is_fitted_only_when_other_columns_feed_a_feature():
    rng = np.random.default_rng(4)
    n = 3000
    y = rng.random(n) < 0.5
    leak = y + rng.normal(0, 0.5, n)  # a book column that knows the label
    x = np.column_stack([rng.normal(size=n), leak]).astype(np.float32)
    names = ["log_ret", "obi"]
    tr, va = slice(0, 2000), slice(2000, n)
    book = {"log_ret": ("close",), "obi": ("bid_size", "ask_size")}
    out = linear_baselines(x[tr], y[tr], x[va], y[va], leak[va], names=names, sources=book, block=10)
    assert out["val_auc"] > 0.8
    assert out["price_volume"]["other_columns"] == ["ask_size", "bid_size"]
    assert out["price_volume"]["features"] == ["log_ret"]
    assert abs(out["price_volume"]["val_auc"] - 0.5) < 0.05
    bvc = {"log_ret": ("close",), "obi": ("close",)}
    assert linear_baselines(x[tr], y[tr], x[va], y[va], leak[va], names=names, sources=bvc,
                            block=10)["price_volume"] is None


def test_one_label_class_in_training_fits_nothing():
    x = np.zeros((10, 2), np.float32)
    out = linear_baselines(x, np.ones(10), x, np.array([0, 1] * 5), np.zeros(10), names=["a", "b"], sources={},
                           block=2)
    assert out["val_auc"] is None and "not fitted" in out["note"]


def _prepared(x, train_ends, val_ends):
    """A hand-made `Prepared` over feature rows ``x`` (daily bars from 2020-01-01)."""
    import pandas as pd

    from agents.data.prepare import Prepared

    n, f = x.shape
    return Prepared(x=x, y=np.zeros(n, np.float32), uniqueness=np.ones(n), names=[f"f{i}" for i in range(f)],
                    spec=None, mean=np.zeros(f), std=np.ones(f), train_ends=np.array(train_ends),
                    val_ends=np.array(val_ends), index=pd.date_range("2020-01-01", periods=n), holdout_start=None,
                    source="hand-made", sha256="")


def test_last_windows_are_the_last_k_bars_oldest_first_flattened():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)  # bar t holds (2t, 2t+1)
    prep = _prepared(x, [2, 4, 5], [5])
    assert prep.last_windows("train", 3).tolist() == [[0, 1, 2, 3, 4, 5], [4, 5, 6, 7, 8, 9], [6, 7, 8, 9, 10, 11]]
    assert prep.last_windows("train", 2, np.array([2, 0])).tolist() == [[8, 9, 10, 11], [2, 3, 4, 5]]
    assert prep.last_windows("val", 1).tolist() == [[10, 11]]  # k = 1: the last bar, as last_rows
    assert str(prep.end_times("train", np.array([2, 0]))[0]) == "2020-01-06T00:00:00.000000000"
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 3\]"):
        prep.last_windows("train", 4)  # bar 2's window would start before the first bar


class _Store:
    """What `PooledPrepared` reads of a feature store, over arrays in memory."""

    def __init__(self, features: dict, times: dict):
        self.symbols, self._x, self._t = list(features), features, times

    def features(self, s):
        return self._x[s]

    def labels(self, s):
        return np.zeros(len(self._x[s]), np.float32)

    def time(self, s):
        return self._t[s]

    def release(self):
        return 0


def test_pooled_last_windows_never_mix_instruments():
    from agents.data.prepare import PooledPrepared

    a = np.arange(10, dtype=np.float32).reshape(5, 2)  # instrument a, bar t: (2t, 2t+1)
    b = 100 + np.arange(8, dtype=np.float32).reshape(4, 2)  # instrument b: (100+2t, 101+2t)
    day = 86_400 * 10**9
    store = _Store({"a": a, "b": b}, {"a": np.arange(5, dtype=np.int64) * day,
                                      "b": np.arange(4, dtype=np.int64) * day + day // 2})
    ranges = {"train": np.array([[0, 2, 5], [1, 2, 4]]), "val": np.empty((0, 3), np.int64)}
    pooled = PooledPrepared(store=store, names=["f0", "f1"], spec=None, mode="pooled", mean=np.zeros(2),
                            std=np.ones(2), ranges=ranges, symbols={}, cuts={}, holdout_start=None, source="hand-made",
                            sha256="", seq_len=3)
    rows = pooled.last_windows("train", 3)
    # a's windows end at bars 2, 3, 4; b's first window ends at its bar 2 and reads b's bars 0..2 only
    assert rows.tolist() == [[0, 1, 2, 3, 4, 5], [2, 3, 4, 5, 6, 7], [4, 5, 6, 7, 8, 9],
                             [100, 101, 102, 103, 104, 105], [102, 103, 104, 105, 106, 107]]
    assert pooled.last_windows("train", 2, np.array([3, 2])).tolist() == [[102, 103, 104, 105], [6, 7, 8, 9]]
    # ids run instrument by instrument; their end times interleave the two calendars
    assert np.argsort(pooled.end_times("train", np.arange(5)), kind="stable").tolist() == [0, 3, 1, 4, 2]
    with pytest.raises(ValueError, match="k must be an integer"):
        pooled.last_windows("train", 4)  # more bars than a window has: it would reach the instrument before


def _lagged(x: np.ndarray, k: int) -> np.ndarray:
    """Row i: bars i .. i+k-1 of ``x`` (N, F), oldest first, flattened."""
    from numpy.lib.stride_tricks import sliding_window_view

    return sliding_window_view(x, k, axis=0).transpose(0, 2, 1).reshape(len(x) - k + 1, -1)


def test_gradient_boosting_sees_an_interaction_of_lags_a_linear_model_cannot():
    # the label is the product of the signs of the returns 1 and 3 bars before the window's last bar,
    # 10% of labels flipped: no feature, and no linear combination, carries it alone
    rng = np.random.default_rng(0)
    n, k = 4000, 16
    x = rng.normal(size=(n, 2)).astype(np.float32)
    ends = np.arange(k - 1, n)
    y = (np.sign(x[ends - 1, 0]) * np.sign(x[ends - 3, 0]) > 0) ^ (rng.random(len(ends)) < 0.1)
    rows = _lagged(x, k)
    tr, va = slice(0, 3000), slice(3000, None)
    out = gbm_baseline(rows[tr], y[tr], rows[va], y[va], rng.random(len(ends) - 3000), lags=k, block=5)
    assert out["val_auc"] > 0.85 and out["lags"] == 16 and out["train_rows"] == 3000 and out["stop_rows"] == 600
    assert 0 < out["n_estimators"] <= 300 and out["val_logloss"] < 0.5
    linear = fit_logistic(rows[tr], y[tr]).predict_proba(rows[va])[:, 1]
    assert abs(auc_of(y[va], linear)[0] - 0.5) < 0.05
    # validation in blocks scores the same as validation whole
    blocks = gbm_baseline(rows[tr], y[tr], iter([rows[3000:3500], rows[3500:]]), y[va], np.zeros(len(ends) - 3000),
                          lags=k, block=5)
    assert blocks["val_auc"] == out["val_auc"]


def test_gradient_boosting_weighs_rows_by_the_sample_weights():
    # even rows: y = x > 0; odd rows: the opposite. Weight 0 on the odd rows leaves the even rows' rule
    rng = np.random.default_rng(1)
    n = 4000
    x = rng.normal(size=(n, 1)).astype(np.float32)
    y = (x[:, 0] > 0) ^ (np.arange(n) % 2 == 1)
    xv = rng.normal(size=(1000, 1)).astype(np.float32)
    yv = xv[:, 0] > 0
    unweighted = gbm_baseline(x, y, xv, yv, np.zeros(1000), lags=1, block=1)
    even_only = gbm_baseline(x, y, xv, yv, np.zeros(1000), lags=1, block=1, weight=(np.arange(n) % 2 == 0) * 2.0)
    assert abs(unweighted["val_auc"] - 0.5) < 0.1
    assert even_only["val_auc"] > 0.95


def test_one_label_class_before_the_stopping_slice_fits_no_gbm():
    x = np.zeros((10, 2), np.float32)
    y = np.array([0] * 8 + [1] * 2)  # the last 20% (the early-stopping slice) holds the only positives
    out = gbm_baseline(x, y, x, np.array([0, 1] * 5), np.zeros(10), lags=1, block=2)
    assert out["val_auc"] is None and out["n_estimators"] is None and "not fitted" in out["note"]


def test_the_tiny_agent_card_holds_the_baseline_and_inspect_shows_it(tiny_agent):
    import subprocess
    import sys

    from agents.artifact.runtime import OnnxAgent

    path, result = tiny_agent
    meta = OnnxAgent.load(path).meta
    lin = meta["metrics"]["linear_baseline"]
    assert 0.0 <= lin["val_auc"] <= 1.0 and lin["val_logloss"] > 0
    d = lin["auc_difference"]
    assert d["low"] <= d["value"] <= d["high"]
    # the difference is the agent's validation AUC minus the baseline's
    assert d["value"] == pytest.approx(meta["metrics"]["val_auc"] - lin["val_auc"], abs=1e-9)
    assert meta["feature_sources"]["obi"] == ["close"]  # bulk-volume classification on closes: no book
    assert meta["feature_sources"]["atr_close"] == ["high", "low", "close"]
    done = subprocess.run([sys.executable, "-m", "agents.inspect", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"linear      validation AUC {lin['val_auc']:.3f}" in done.stdout
    gbm = meta["metrics"]["gbm_baseline"]
    assert gbm["lags"] == 16 and gbm["train_rows"] == len(result.prep.labels("train"))
    assert 0.0 <= gbm["val_auc"] <= 1.0 and gbm["val_logloss"] > 0 and 1 <= gbm["n_estimators"] <= 300
    d = gbm["auc_difference"]
    assert d["value"] == pytest.approx(meta["metrics"]["val_auc"] - gbm["val_auc"], abs=1e-9)
    assert (f"gbm         validation AUC {gbm['val_auc']:.3f}, log-loss {gbm['val_logloss']:.4f} (gradient boosting "
            "(LightGBM") in done.stdout
    assert f"agent minus it {d['value']:+.3f} (95% CI {d['low']:+.3f}..{d['high']:+.3f})" in done.stdout
    assert "obi (close)" in done.stdout


def test_book_columns_that_encode_the_future_are_flagged_as_look_ahead(tmp_path):
    # a random walk whose bid/ask sizes at bar t encode the return of bar t+1: the obi feature reads
    # them, the agent "predicts" the walk, and the verdict says where to look
    from agents.training.config import TrainConfig
    from agents.training.trainer import train
    from agents.artifact.verdict import verdict
    from datafeeds.synthetic import random_walk

    df, _ = random_walk(2500, seed=5)
    nxt = np.log(df["close"]).diff().shift(-1).fillna(0.0).to_numpy()
    df["bid_size"] = np.round(1000 * np.exp(40 * nxt))
    df["ask_size"] = np.round(1000 * np.exp(-40 * nxt))
    csv = tmp_path / "book.csv"
    df.to_csv(csv)
    cfg = TrainConfig(data=str(csv), holdout=0.2, seq_len=8, d_model=16, n_heads=2, n_layers=1, epochs=3,
                      patience=5, batch_size=64, horizon=5, lr=1e-3, dropout=0.1)
    res = train(cfg, tmp_path / "a.onnx", checkpoint_dir=tmp_path / "ckpt", progress=False)
    m = res.card["metrics"]
    assert res.card["feature_sources"]["obi"] == ["bid_size", "ask_size"]
    pv = m["linear_baseline"]["price_volume"]
    assert pv["other_columns"] == ["ask_size", "bid_size"] and "obi" not in pv["features"]
    assert abs(pv["val_auc"] - 0.5) < 0.08  # price and volume of a random walk: nothing
    assert m["val_auc"] > pv["val_auc"] + 0.1
    assert verdict(m).startswith("CHECK FOR LOOK-AHEAD in your data columns (ask_size, bid_size)")
