"""Primary models (labeling.primary): sides by hand, against pandas, causal (truncating the future changes no
side), their command-line spelling, and their sides as meta-label events."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from datafeeds import load_ohlcv
from labeling import triple_barrier_labels
from labeling.primary import MomentumRule, SmaCrossRule, parse_primary, primary_side

IDX = pd.date_range("2024-01-01", periods=7, freq="D")
HAND = pd.DataFrame({"close": [1.0, 2.0, 3.0, 4.0, 3.0, 2.0, 1.0]}, index=IDX)


def test_sides_by_hand():
    # smacross 1/3: t=2 3 > 2, t=3 4 > 3, t=4 3 < 3.33, t=5 2 < 3, t=6 1 < 2
    assert primary_side(HAND, SmaCrossRule(fast=1, slow=3)).tolist() == [1, 1, -1, -1, -1]
    # momentum 2: t=2 3-1, t=3 4-2 up; t=4 3-3 flat (no bet); t=5 2-4, t=6 1-3 down
    side = primary_side(HAND, MomentumRule(lookback=2))
    assert side.tolist() == [1, 1, -1, -1] and list(side.index) == list(IDX[[2, 3, 5, 6]])
    assert side.dtype == np.int8 and side.name == "side"


def test_sma_cross_is_the_sign_of_pandas_rolling_means():
    df = load_ohlcv("sp500")
    got = SmaCrossRule(fast=10, slow=30).sides(df["close"].to_numpy())
    diff = (df["close"].rolling(10).mean() - df["close"].rolling(30).mean()).to_numpy()
    clear = np.abs(np.nan_to_num(diff)) > 1e-9 * df["close"].to_numpy()  # not a tie to rounding
    want = np.sign(np.nan_to_num(diff)).astype(np.int8)
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(got[clear], want[clear])
    assert (got[:29] == 0).all()


@pytest.mark.parametrize("rule", [SmaCrossRule(), MomentumRule(lookback=5)])
def test_truncating_the_future_changes_no_side(rule):
    df = load_ohlcv("nasdaq").iloc[:2000]
    full = primary_side(df, rule)
    for cut in (100, 777, 1500):
        part = primary_side(df.iloc[:cut], rule)
        pd.testing.assert_series_equal(part, full[full.index < df.index[cut]])


def test_the_command_line_spelling():
    assert parse_primary("smacross:fast=5,slow=20") == SmaCrossRule(fast=5, slow=20)
    assert parse_primary("momentum") == MomentumRule() and parse_primary(" momentum: lookback=60 ").lookback == 60


@pytest.mark.parametrize("text, match", [
    ("smacros", "primary 'smacros' is unknown; did you mean 'smacross'"),
    ("momentum:lookbak=3", "'lookbak=3' is not a parameter; did you mean 'lookback'"),
    ("smacross:fast", "'fast' is not a parameter"),
    ("smacross:fast=x", "fast='x' is not a whole number"),
    ("smacross:fast=30,slow=20", "fast < slow"),
    ("momentum:lookback=0", "momentum lookback must be an integer >= 1"),
])
def test_bad_primaries_are_one_line(text, match):
    with pytest.raises(ValueError, match=match):
        parse_primary(text)


def test_the_sides_are_meta_label_events():
    df = load_ohlcv("sp500").iloc[-600:]
    side = primary_side(df, MomentumRule(lookback=20))
    labels = triple_barrier_labels(df, side=side)
    assert set(labels.index) <= set(side.index)
    assert (labels["side"] == side.reindex(labels.index)).all()
    assert (labels["label"] == (labels["barrier"] == labels["side"])).all()
    assert 0 < labels["label"].mean() < 1


def test_a_primary_makes_the_training_events_its_bets_and_their_meta_labels():
    from agents import TrainConfig
    from agents.data.prepare import prepare

    rule = "momentum:lookback=20"
    cfg = TrainConfig(data="sp500", start="2010-01-01", end="2014-12-31", seq_len=16, features=("log_ret",),
                      primary=rule)
    prep = prepare(cfg)
    df = load_ohlcv("sp500", start="2010-01-01", end="2014-12-31")
    fit = df.iloc[: len(df) - int(round(len(df) * cfg.holdout))]
    labels = triple_barrier_labels(fit, config=cfg.tbm, side=primary_side(fit, parse_primary(rule)))
    events = np.concatenate([prep.train_ends, prep.val_ends])
    assert set(fit.index[events]) <= set(labels.index)  # every event is a bet of the rule
    np.testing.assert_array_equal(prep.y[events], labels["label"].reindex(fit.index[events]).to_numpy(np.float32))
    # each bet's return, on its side, for the card's "primary alone" Sharpe
    side = labels["side"].reindex(fit.index[events]).to_numpy(np.float64)
    np.testing.assert_array_equal(prep.bet_ret[events], side * labels["ret"].reindex(fit.index[events]).to_numpy())
    plain = prepare(TrainConfig(data="sp500", start="2010-01-01", end="2014-12-31", seq_len=16, features=("log_ret",)))
    assert len(plain.train_ends) > len(prep.train_ends)  # every bar was an event without it
    assert plain.bet_ret is None


def test_the_primary_alone_baseline_by_hand():
    from agents.artifact.evaluation import primary_alone
    from agents.artifact.inspect import primary_line

    out = primary_alone("momentum", np.array([1.0, 0.0, 1.0, 1.0]), np.array([0.02, -0.01, 0.01, 0.02]))
    assert out["val_bets"] == 4 and out["val_precision"] == 0.75 and out["val_mean_return"] == pytest.approx(0.01)
    assert out["val_sharpe_per_bet"] == pytest.approx(0.01 / np.std([0.02, -0.01, 0.01, 0.02], ddof=1))
    assert primary_line(out, {"precision": 0.8}) == ("primary     momentum alone: precision 0.750 over 4 validation "
                                                     "bets, Sharpe per bet 0.707 (mean +1.000%, gross); the agent at "
                                                     "its threshold: 0.800")
    assert "val_sharpe_per_bet" not in primary_alone("momentum", np.array([1.0]))


def test_a_bad_primary_is_refused_when_the_config_is_built():
    from agents import TrainConfig

    with pytest.raises(ValueError, match="--primary: primary 'momentun' is unknown; did you mean 'momentum'"):
        TrainConfig(primary="momentun")
    with pytest.raises(ValueError, match="--primary momentum: meta-labels are built for one instrument"):
        from agents.data.prepare import prepare

        prepare(TrainConfig(data="us_daily", primary="momentum"))


def test_a_config_without_a_primary_records_what_it_did_before():
    from agents import TrainConfig

    assert "primary" not in TrainConfig().to_dict()
    cfg = TrainConfig(primary="smacross:fast=5,slow=20")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_dict(TrainConfig().to_dict()).primary is None


def test_both_trains_on_the_plain_direction_labels_and_bets_the_models_way():
    from agents import TrainConfig
    from agents.data.prepare import prepare
    from labeling import BothRule, direction_bets

    kw = dict(data="sp500", start="2010-01-01", end="2014-12-31", seq_len=16, features=("log_ret",))
    both, plain = prepare(TrainConfig(primary="both", **kw)), prepare(TrainConfig(**kw))
    np.testing.assert_array_equal(both.train_ends, plain.train_ends)  # every bar an event, as without a primary
    np.testing.assert_array_equal(both.y[both.train_ends], plain.y[plain.train_ends])
    assert parse_primary("both") == BothRule()
    with pytest.raises(ValueError, match="primary both has no sides of its own"):
        primary_side(HAND, BothRule())
    prob = pd.Series([0.7, np.nan, 0.2, 0.5], index=IDX[:4])
    p, side = direction_bets(prob)
    assert p.tolist()[0] == 0.7 and np.isnan(p.iloc[1]) and p.tolist()[2:] == [0.8, 0.5]
    assert side.to_dict() == {IDX[0]: 1, IDX[2]: -1, IDX[3]: 1}  # a coin flip (1/2) counts as up
