"""The linear baseline beside every agent: AUC by hand, the bootstrap interval of a difference,
the price-and-volume-only baseline, and what the card and the console show."""

from __future__ import annotations

import numpy as np
import pytest

from agents.baseline import auc_difference, auc_of, linear_baselines


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


def test_the_tiny_agent_card_holds_the_baseline_and_inspect_shows_it(tiny_agent):
    import subprocess
    import sys

    from agents.runtime import OnnxAgent

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
    assert "obi (close)" in done.stdout


def test_book_columns_that_encode_the_future_are_flagged_as_look_ahead(tmp_path):
    # a random walk whose bid/ask sizes at bar t encode the return of bar t+1: the obi feature reads
    # them, the agent "predicts" the walk, and the verdict says where to look
    from agents.config import TrainConfig
    from agents.train import train
    from agents.verdict import verdict
    from datafeeds.synthetic import random_walk

    df, _ = random_walk(2500, seed=5)
    nxt = np.log(df["close"]).diff().shift(-1).fillna(0.0).to_numpy()
    df["bid_size"] = np.round(1000 * np.exp(40 * nxt))
    df["ask_size"] = np.round(1000 * np.exp(-40 * nxt))
    csv = tmp_path / "book.csv"
    df.to_csv(csv)
    cfg = TrainConfig(data=str(csv), holdout=0.2, seq_len=8, d_model=16, n_heads=2, n_layers=1, epochs=3,
                      patience=5, batch_size=64, horizon=5)
    res = train(cfg, tmp_path / "a.onnx", checkpoint_dir=tmp_path / "ckpt", progress=False)
    m = res.card["metrics"]
    assert res.card["feature_sources"]["obi"] == ["bid_size", "ask_size"]
    pv = m["linear_baseline"]["price_volume"]
    assert pv["other_columns"] == ["ask_size", "bid_size"] and "obi" not in pv["features"]
    assert abs(pv["val_auc"] - 0.5) < 0.08  # price and volume of a random walk: nothing
    assert m["val_auc"] > pv["val_auc"] + 0.1
    assert verdict(m).startswith("CHECK FOR LOOK-AHEAD in your data columns (ask_size, bid_size)")
