"""Training on a universe: one calendar split for all instruments, statistics from the training bars,
an agent that records its universe and backtests on each member."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agents.training.config import TrainConfig
from agents.data.prepare import prepare_universe
from datafeeds import load_ohlcv

ROOT = Path(__file__).resolve().parents[1]
UNIVERSE = "sp500,nvda,goog"  # bundled samples; goog ends in 2013, nvda in 2014, sp500 in 2018
TINY = dict(data=UNIVERSE, start="2005-01-01", seq_len=16, d_model=16, n_heads=2, n_layers=1, epochs=1,
            batch_size=64, horizon=10)


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    return tmp_path_factory.mktemp("feature_store")


@pytest.fixture(scope="module")
def pooled(store_root):
    return prepare_universe(TrainConfig(**TINY), store_root=store_root)


def _ns(ts) -> int:
    return pd.Timestamp(ts).value


def test_every_instrument_is_cut_at_the_same_dates_with_purges(pooled):
    cfg = TrainConfig(**TINY)
    val_cut, holdout = _ns(pooled.cuts["validation"]), _ns(pooled.cuts["holdout"])
    st = pooled.store
    times = {s: np.asarray(st.time(s)) for s in st.symbols}
    # the holdout is the last 20% of all bars together, the validation the last 20% of the rest
    total = sum(len(t) for t in times.values())
    after = sum(int((t >= holdout).sum()) for t in times.values())
    assert after == pytest.approx(cfg.holdout * total, abs=len(times))  # ties at the cut date go after it
    before = total - after
    in_val = sum(int(((t >= val_cut) & (t < holdout)).sum()) for t in times.values())
    assert in_val == pytest.approx(cfg.val_fraction * before, abs=len(times))
    for which in ("train", "val"):
        for i, lo, hi in pooled.ranges[which]:
            sym = st.symbols[i]
            t, t1 = times[sym], np.asarray(st.t1(sym))
            v, h = int(np.searchsorted(t, val_cut)), int(np.searchsorted(t, holdout))
            assert lo >= st.spec.warmup + cfg.seq_len - 1  # a full window of finite features, inside the instrument
            if which == "train":  # labels end a purge before the validation cut
                assert t1[lo:hi].max() < v - cfg.horizon and t[hi - 1] < val_cut
            else:  # validation: from the cut, labels end a purge before the holdout
                assert t[lo] >= val_cut and t1[lo:hi].max() < h - cfg.horizon
            assert (t1[lo:hi] >= 0).all()  # every window end is a labelled bar
    # the card's per-instrument record agrees with the ranges
    for i, sym in enumerate(st.symbols):
        n = sum(hi - lo for j, lo, hi in pooled.ranges["train"] if j == i)
        assert pooled.symbols[sym]["train_events"] == n


def test_no_window_reads_another_instrument(pooled):
    ds = pooled.dataset("train", TINY["seq_len"])
    st = pooled.store
    ids = np.arange(0, len(ds), 97)
    x, y = ds.batch(ids)
    inst, end = ds.ends(ids)
    for k in range(0, len(ids), 7):
        sym = st.symbols[inst[k]]
        raw = np.asarray(st.features(sym)[end[k] - TINY["seq_len"] + 1: end[k] + 1], dtype=np.float64)
        np.testing.assert_allclose(x[k].numpy(), (raw - pooled.mean) / pooled.std, rtol=1e-5, atol=1e-5)
        assert y[k].item() == st.labels(sym)[end[k]]


def test_normalisation_comes_from_the_training_rows_pooled_or_per_symbol(pooled, store_root):
    st = pooled.store
    rows = {}
    for i, sym in enumerate(st.symbols):
        own = [(lo, hi) for j, lo, hi in pooled.ranges["train"] if j == i]
        lo, hi = min(a for a, _ in own) - TINY["seq_len"] + 1, max(b for _, b in own)
        rows[sym] = np.asarray(st.features(sym)[lo:hi], dtype=np.float64)
    allrows = np.concatenate(list(rows.values()))
    np.testing.assert_allclose(pooled.mean, np.nanmean(allrows, axis=0), rtol=1e-9)
    np.testing.assert_allclose(pooled.std, np.nanstd(allrows, axis=0), rtol=1e-6)
    per = prepare_universe(TrainConfig(**TINY, normalise="per-symbol"), store_root=store_root)
    for i, sym in enumerate(st.symbols):
        np.testing.assert_allclose(per.mean[i], np.nanmean(rows[sym], axis=0), rtol=1e-9)
    card = per.card_normalisation()
    assert card["mode"] == "per-symbol" and set(card["per_symbol"]) == set(st.symbols)
    assert card["per_symbol"]["nvda"]["sha256"] == load_ohlcv("nvda").attrs["sha256"]


@pytest.fixture(scope="module")
def universe_agent(tmp_path_factory):
    folder = tmp_path_factory.mktemp("universe_agent")
    out = folder / "u.onnx"
    args = [sys.executable, "-m", "agents.train", "--data", UNIVERSE, "--start", "2005-01-01", "--seq-len", "16",
            "--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--epochs", "1", "--batch-size", "64",
            "--horizon", "10", "--quiet", "--out", str(out), "--checkpoint-dir", str(folder / "ck")]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TBM_CACHE": str(folder / "cache")})
    assert done.returncode == 0, done.stderr
    return out, done.stdout


def test_universe_agent_records_its_instruments_and_prints_their_balance(universe_agent):
    from agents.artifact.runtime import OnnxAgent

    out, printed = universe_agent
    ds = OnnxAgent.load(out).meta["dataset"]
    assert ds["symbols"] == ["sp500", "nvda", "goog"] and set(ds["universe"]) == set(ds["symbols"])
    for sym, entry in ds["universe"].items():
        frame = load_ohlcv(sym, start="2005-01-01")
        assert entry["sha256"] == frame.attrs["sha256"] and entry["bars"] == len(frame)
        assert entry["first"] == str(frame.index[0]) and entry["last"] == str(frame.index[-1])
        assert entry["train_events"] > 100 and 0 < entry["train_positive_rate"] < 1
    assert ds["cuts"]["holdout"] == ds["holdout_start"] and ds["normalise"] == "pooled"
    assert ds["last_bar_used"] < ds["holdout_start"]
    for sym in ("sp500", "nvda", "goog"):
        assert f"\n            {sym:<14}" in printed  # the per-instrument table
    assert "verdict" in printed and "no skill" in printed
    card = subprocess.run([sys.executable, "-m", "agents.inspect", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert card.returncode == 0, card.stderr
    assert "\nuniverse    3 instruments, cut dates:" in card.stdout  # inspect lists the members too
    for sym in ("sp500", "nvda", "goog"):
        assert f"\n            {sym:<14}" in card.stdout


@pytest.mark.parametrize("symbol", ["sp500", "nvda", "goog"])
def test_the_universe_agent_backtests_on_each_member(universe_agent, symbol, tmp_path):
    out, _ = universe_agent
    report = tmp_path / "r.json"
    args = [sys.executable, "run_backtest.py", "--agent", str(out), "--data", symbol, "--start", "2012-01-01",
            "--engine", "fast", "--no-plot", "--quiet", "--report", str(report)]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # 2012 is before the universe's holdout cut: in-sample for every member, and said so
    assert "IN-SAMPLE" in done.stderr and "3 instruments (goog, nvda, sp500)" in done.stderr
    assert json.loads(report.read_text())["stats"]["n_trades"] >= 1


def test_a_per_symbol_agent_trades_its_members_with_their_statistics_and_refuses_others(tmp_path, monkeypatch):
    from agents.data.features import compute_features
    from agents.artifact.runtime import OnnxAgent
    from agents.training.trainer import train

    monkeypatch.setenv("TBM_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(**TINY, normalise="per-symbol")
    result = train(cfg, tmp_path / "p.onnx", checkpoint_dir=tmp_path / "ck", progress=False, exporter="torchscript")
    agent = OnnxAgent.load(tmp_path / "p.onnx")
    assert agent.symbols is not None and sorted(agent.symbols) == ["goog", "nvda", "sp500"]
    nvda = load_ohlcv("nvda", start="2012-01-01")
    stats = agent.meta["normalisation"]["per_symbol"]["nvda"]
    x, _ = compute_features(nvda, agent.spec)
    expected_x = ((x.astype(np.float64) - stats["mean"]) / stats["std"]).astype(np.float32)
    np.testing.assert_array_equal(agent._normalised_features(nvda), expected_x)
    assert np.isfinite(agent.predict_proba(nvda).to_numpy()[agent.warmup:]).all()
    i = result.prep.store.symbols.index("nvda")
    np.testing.assert_allclose(stats["mean"], result.prep.mean[i], rtol=1e-12)
    with pytest.raises(ValueError, match="per-symbol normalisation on goog, nvda, sp500 and trades only those"):
        agent.predict_proba(load_ohlcv("nasdaq"))
    with pytest.raises(ValueError, match="per-symbol"):  # streaming without a symbol chosen
        agent.update(nvda.iloc[0])
        for _, bar in nvda.iloc[1: agent.warmup + 2].iterrows():
            agent.update(bar)
    agent.reset()
    agent.select_symbol_for(nvda)
    probs = [agent.update(bar) for _, bar in nvda.iloc[: agent.warmup + 5].iterrows()]
    np.testing.assert_allclose(probs[-5:], agent.predict_proba(nvda.iloc[: agent.warmup + 5]).to_numpy()[-5:],
                               atol=1e-6)
    # a member selected does not make another file tradable: the file's own hash decides
    with pytest.raises(ValueError, match="trades only those"):
        agent.predict_proba(load_ohlcv("nasdaq"))
    with pytest.raises(ValueError, match="trades only those"):
        agent.select_symbol_for(load_ohlcv("orcl"))
    hand_made = nvda.iloc[:300].copy()
    hand_made.attrs = {}  # no file hash: the selected member's statistics
    np.testing.assert_array_equal(agent._normalised_features(hand_made), expected_x[:300])
