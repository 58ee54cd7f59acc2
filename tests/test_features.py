"""Feature registry: pinned values, causality on real data, warm-up, spec round-trip, errors."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import talib

from agents.data.features import (
    FEATURES,
    FeatureConfig,
    FeatureSpec,
    compute_features,
    fracdiff_weights,
)
from datafeeds import load_ohlcv, list_samples


def _frame(close, *, high=None, low=None, volume=None, **extra):
    close = np.asarray(close, dtype=np.float64)
    n = close.shape[0]
    return pd.DataFrame(
        {
            "open": close,
            "high": close + 1.0 if high is None else np.asarray(high, dtype=np.float64),
            "low": close - 0.5 if low is None else np.asarray(low, dtype=np.float64),
            "close": close,
            "volume": np.full(n, 100.0) if volume is None else np.asarray(volume, dtype=np.float64),
            **{k: np.asarray(v, dtype=np.float64) for k, v in extra.items()},
        },
        index=pd.date_range("2020-01-01", periods=n, freq="D"),
    )


def _one(df, name, **params):
    x, cols = compute_features(df, FeatureSpec((FeatureConfig(name, params),)))
    return x.astype(np.float64), cols


@pytest.fixture(scope="module")
def samples():
    return {name: load_ohlcv(name) for name in list_samples()}


def _nan_prefix(x):
    bad = np.isnan(x).any(axis=1)
    return int(np.argmin(bad)) if not bad.all() else len(bad)


# ---------------------------------------------------------------- pinned values


def test_log_ret_by_hand():
    x, cols = _one(_frame([100.0, 110.0, 99.0]), "log_ret")
    assert cols == ["log_ret"]
    assert np.isnan(x[0, 0])
    np.testing.assert_allclose(x[1:, 0], [math.log(1.1), math.log(0.9)], rtol=1e-6)


def _wilder_rsi(close, period):
    """Independent reference: Wilder RSI in [0, 100] seeded with plain means of the first gains."""
    diffs = np.diff(close)
    out = [math.nan] * len(close)
    gain = sum(d for d in diffs[:period] if d > 0) / period
    loss = sum(-d for d in diffs[:period] if d < 0) / period
    for t in range(period, len(close)):
        if t > period:
            d = diffs[t - 1]
            gain = (gain * (period - 1) + max(d, 0.0)) / period
            loss = (loss * (period - 1) + max(-d, 0.0)) / period
        out[t] = 100.0 * gain / (gain + loss) if gain + loss else 50.0
    return np.array(out)


def test_rsi_matches_wilder_loop_centred():
    close = np.array([44.0, 44.3, 44.1, 43.6, 44.3, 44.8, 45.1, 45.4, 45.8, 46.1, 45.9, 46.2, 45.6, 46.3])
    x, cols = _one(_frame(close), "rsi", period=5)
    assert cols == ["rsi_5"]
    ref = (_wilder_rsi(close, 5) - 50.0) / 50.0
    assert np.isnan(x[:5, 0]).all()
    np.testing.assert_allclose(x[5:, 0], ref[5:], rtol=0, atol=1e-6)
    # One value by hand: first 5 diffs are +.3 -.2 -.5 +.7 +.5 -> gain 1.5/5, loss .7/5.
    assert x[5, 0] == pytest.approx((1.5 - 0.7) / (1.5 + 0.7), abs=1e-6)


def test_rsi_flat_window_is_neutral_not_oversold():
    # TA-Lib reports RSI 0 for a window without movement; we report neutral (centred 0).
    x, _ = _one(_frame([5.0] * 8 + [6.0]), "rsi", period=3)
    np.testing.assert_array_equal(x[3:8, 0], 0.0)
    assert x[8, 0] == 1.0
    assert talib.RSI(np.full(8, 5.0), 3)[3] == 0.0


def test_rsi_equals_talib_on_real_data(samples):
    close = samples["sp500"]["close"].to_numpy()
    x, _ = _one(samples["sp500"], "rsi")
    ref = (talib.RSI(close, 14) - 50.0) / 50.0
    np.testing.assert_array_equal(np.isnan(x[:, 0]), np.isnan(ref))
    np.testing.assert_allclose(x[14:, 0], ref[14:], atol=1e-6)


def _ema(x, period, first):
    """Reference EMA: seeded at `first` with the mean of the `period` values ending there."""
    out = np.full(len(x), np.nan)
    out[first] = np.mean(x[first - period + 1 : first + 1])
    k = 2.0 / (period + 1)
    for i in range(first + 1, len(x)):
        out[i] = k * x[i] + (1 - k) * out[i - 1]
    return out


def test_macd_matches_independent_ema_and_talib():
    close = 50.0 + np.cumsum(np.sin(np.arange(40) * 0.7) + 0.1 * np.arange(40) % 3)
    fast, slow, signal = 3, 6, 4
    x, cols = _one(_frame(close), "macd", fast=fast, slow=slow, signal=signal)
    assert cols == ["macd_3_6_4_line", "macd_3_6_4_signal", "macd_3_6_4_hist"]
    # TA-Lib starts both EMAs on bar slow-1: the fast one is seeded from the `fast` closes ending there.
    line = _ema(close, fast, slow - 1) - _ema(close, slow, slow - 1)
    sig = _ema(line, signal, slow - 1 + signal - 1)
    warm = slow + signal - 2
    assert np.isnan(x[:warm]).all()
    ref = np.column_stack([line, sig, line - sig])[warm:] / close[warm:, None]
    np.testing.assert_allclose(x[warm:], ref, rtol=1e-5, atol=1e-9)
    talib_ref = np.column_stack(talib.MACD(close, fast, slow, signal)) / close[:, None]
    np.testing.assert_allclose(x[warm:], talib_ref[warm:], rtol=1e-5, atol=1e-9)


def test_macd_default_equals_talib_on_real_data(samples):
    df = samples["eurusd_1h"]
    close = df["close"].to_numpy()
    x, cols = _one(df, "macd")
    assert cols == ["macd_line", "macd_signal", "macd_hist"]
    ref = np.column_stack(talib.MACD(close, 12, 26, 9)) / close[:, None]
    np.testing.assert_array_equal(np.isnan(x), np.isnan(ref))
    np.testing.assert_allclose(x[33:], ref[33:], rtol=1e-5, atol=1e-9)


def test_atr_close():
    close = np.array([10.0, 11.0, 10.5, 12.0, 11.0, 11.5])
    high = close + np.array([0.5, 0.2, 0.9, 0.1, 0.4, 0.3])
    low = close - np.array([0.3, 0.6, 0.2, 0.8, 0.1, 0.5])
    x, cols = _one(_frame(close, high=high, low=low), "atr", period=2)
    assert cols == ["atr_close_2"]
    # True ranges from bar 1: max(h-l, |h-c_prev|, |l-c_prev|); first ATR is their mean over 2 bars.
    tr = [max(h - lo, abs(h - c), abs(lo - c)) for h, lo, c in zip(high[1:], low[1:], close[:-1])]
    atr = [math.nan, math.nan, (tr[0] + tr[1]) / 2]
    for t in range(3, 6):
        atr.append((atr[-1] * 1 + tr[t - 1]) / 2)
    np.testing.assert_allclose(x[:, 0], np.array(atr) / close, rtol=1e-6)
    np.testing.assert_allclose(x[:, 0], talib.ATR(high, low, close, 2) / close, rtol=1e-6)


def test_volume_z_raw_by_hand():
    vol = np.array([1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 10.0])
    x, cols = _one(_frame(np.arange(1.0, 8.0), volume=vol), "volume_z", window=3, log=False)
    assert cols == ["volume_z_3_raw"]
    assert np.isnan(x[:2, 0]).all()
    expected = [(vol[t] - vol[t - 2 : t + 1].mean()) / vol[t - 2 : t + 1].std(ddof=1) for t in (2, 3)]
    np.testing.assert_allclose(x[2:4, 0], expected, rtol=1e-6)
    # Constant window -> 0 (not NaN, not inf); the jump to 10 gives the bound (w-1)/sqrt(w).
    assert x[4, 0] == 0.0 and x[5, 0] == 0.0
    assert x[6, 0] == pytest.approx(2 / math.sqrt(3), rel=1e-6)


def test_volume_z_log_default_and_zero_volume():
    vol = np.array([0.0, 9.0, 99.0, 0.0, 0.0, 0.0])
    x, cols = _one(_frame(np.arange(1.0, 7.0), volume=vol), "volume_z", window=3)
    assert cols == ["volume_z_3"]
    lv = np.log1p(vol)
    w = lv[1:4]
    assert x[3, 0] == pytest.approx((lv[3] - w.mean()) / w.std(ddof=1), rel=1e-6)
    assert x[5, 0] == 0.0
    zero, _ = _one(_frame(np.arange(1.0, 31.0), volume=np.zeros(30)), "volume_z")
    assert np.isnan(zero[:19, 0]).all()
    np.testing.assert_array_equal(zero[19:, 0], 0.0)


def test_fracdiff_weights_by_hand():
    np.testing.assert_allclose(fracdiff_weights(0.5, 1e-3, 4), [1.0, -0.5, -0.125, -0.0625])
    np.testing.assert_allclose(fracdiff_weights(0.5, 1e-9, 6)[4:], [-0.0390625, -0.02734375])
    # d=1 is the plain first difference: the weight after -1 is exactly 0, below any threshold.
    np.testing.assert_array_equal(fracdiff_weights(1.0, 1e-5), [1.0, -1.0])
    # Uncapped window lengths at threshold 1e-5 (shared/NOTES.md).
    assert len(fracdiff_weights(0.4, 1e-5)) == 1458
    assert len(fracdiff_weights(0.1, 1e-5)) == 4076
    assert len(fracdiff_weights(0.4, 1e-5, 100)) == 100
    # The threshold binds first when it gives the shorter window.
    assert len(fracdiff_weights(0.5, 0.1, 100)) == 3


def test_fracdiff_value_by_hand():
    close = np.array([100.0, 102.0, 101.0, 105.0, 104.0])
    x, cols = _one(_frame(close), "fracdiff", d=0.5, threshold=1e-3, max_window=3)
    assert cols == ["fracdiff_0.5"]
    lp = np.log(close)
    assert np.isnan(x[:2, 0]).all()
    expected = [lp[t] - 0.5 * lp[t - 1] - 0.125 * lp[t - 2] for t in (2, 3, 4)]
    np.testing.assert_allclose(x[2:, 0], expected, rtol=1e-6)


def test_obi_book_by_hand():
    df = _frame([1.0, 2.0, 3.0, 4.0], bid_size=[3.0, 0.0, 0.0, 5.0], ask_size=[1.0, 0.0, 2.0, 5.0])
    for source in ("book", "auto"):
        x, cols = _one(df, "obi", source=source)
        assert cols == ["obi"]
        np.testing.assert_array_equal(x[:, 0], [0.5, 0.0, -1.0, 0.0])


def test_obi_bvc_by_hand():
    close = np.array([10.0, 10.5, 10.2, 10.2, 11.0, 10.1, 10.1, 10.1, 10.1])
    x, _ = _one(_frame(close), "obi", window=3)  # auto without size columns -> bvc
    bvc, _ = _one(_frame(close), "obi", source="bvc", window=3)
    np.testing.assert_array_equal(x, bvc)
    dp = np.diff(close, prepend=np.nan)
    assert np.isnan(x[:3, 0]).all()
    for t in range(3, 7):
        sigma = dp[t - 2 : t + 1].std(ddof=1)
        phi = 0.5 * (1.0 + math.erf(dp[t] / sigma / math.sqrt(2.0)))  # buy fraction
        assert x[t, 0] == pytest.approx(2.0 * phi - 1.0, abs=1e-6), t
    assert x[8, 0] == 0.0  # three flat bars: sigma 0 -> no imbalance
    assert x[4, 0] > 0 > x[5, 0]


# ---------------------------------------------------------------- causality and warm-up


def _causal_specs():
    return [
        FeatureSpec.default(),
        FeatureSpec(
            (
                FeatureConfig("fracdiff", {"d": 0.3, "max_window": None}),
                FeatureConfig("volume_z", {"window": 7, "log": False}),
                FeatureConfig("obi", {"source": "book"}),
            )
        ),
    ]


@pytest.mark.parametrize("name", ["sp500", "eurusd_1h"])
def test_every_feature_is_causal(samples, name):
    rng = np.random.default_rng(7)
    df = samples[name].copy()
    n = len(df)
    df["bid_size"] = rng.integers(0, 50, n).astype(np.float64)
    df["ask_size"] = rng.integers(0, 50, n).astype(np.float64)
    for spec in _causal_specs():
        full, _ = compute_features(df, spec)
        for cut in (0, 30, spec.warmup, 1500, n - 2):
            head, _ = compute_features(df.iloc[: cut + 1], spec)
            np.testing.assert_array_equal(head, full[: cut + 1], err_msg=f"{name} truncated at {cut}")
            garbage = df.copy()
            tail = n - cut - 1
            price = np.exp(rng.normal(0.0, 3.0, tail)) * 100.0
            garbage.iloc[cut + 1 :, :] = np.column_stack(
                [price, price * 1.5, price * 0.5, price, rng.random((tail, 3)) * 1e6]
            )
            mixed, _ = compute_features(garbage, spec)
            np.testing.assert_array_equal(
                mixed[: cut + 1], full[: cut + 1], err_msg=f"{name} garbage after {cut}"
            )
            assert not np.array_equal(mixed[cut + 1 :], full[cut + 1 :], equal_nan=True)


def test_warmup_matches_nan_prefix_per_feature(samples):
    df = samples["sp500"]
    configs = [FeatureConfig(name) for name in FEATURES] + [
        FeatureConfig("fracdiff", {"max_window": 250}),
        FeatureConfig("obi", {"source": "bvc", "window": 10}),
        FeatureConfig("macd", {"fast": 5, "slow": 35, "signal": 5}),
    ]
    for cfg in configs:
        spec = FeatureSpec((cfg,))
        x, _ = compute_features(df, spec)
        assert _nan_prefix(x) == spec.warmup == cfg.warmup, cfg
    spec = FeatureSpec.default()
    assert spec.warmup == 99  # fracdiff's 100-weight window
    assert _nan_prefix(compute_features(df, spec)[0]) == spec.warmup


@pytest.mark.parametrize("name", ["sp500", "nasdaq", "eurusd_1h", "stoxx50fut_1m", "stoxx50_1d"])
def test_default_features_finite_after_warmup(samples, name):
    df = samples[name]
    spec = FeatureSpec.default()
    x, cols = compute_features(df, spec)
    assert x.dtype == np.float32 and x.shape == (len(df), 9) and cols == list(spec.columns)
    assert np.isnan(x[: spec.warmup]).any(axis=1).all()
    assert np.isfinite(x[spec.warmup :]).all()
    j = {c: i for i, c in enumerate(cols)}
    assert np.abs(x[spec.warmup :, [j["rsi_14"], j["obi"]]]).max() <= 1.0
    assert np.abs(x[spec.warmup :, j["volume_z"]]).max() <= 19 / math.sqrt(20) + 1e-5
    if name == "stoxx50_1d":  # volume is 0 on every bar
        np.testing.assert_array_equal(x[spec.warmup :, j["volume_z"]], 0.0)


def test_short_frames_are_all_nan_not_errors():
    for n in (0, 1, 5, 40):
        x, cols = compute_features(_frame(np.linspace(10, 12, n)))
        assert x.shape == (n, 9) and x.dtype == np.float32
        assert np.isnan(x).any(axis=1).all()


# ---------------------------------------------------------------- spec


def test_default_spec_columns_and_requirements():
    spec = FeatureSpec.default()
    assert spec.columns == (
        "log_ret", "rsi_14", "macd_line", "macd_signal", "macd_hist",
        "atr_close", "volume_z", "fracdiff_0.4", "obi",
    )  # fmt: skip
    assert spec.required_columns == ("high", "low", "close", "volume")
    assert FeatureSpec.from_names(["obi"]).required_columns == ("close",)
    book = FeatureSpec((FeatureConfig("obi", {"source": "book"}),))
    assert book.required_columns == ("bid_size", "ask_size") and book.warmup == 0


def test_spec_json_round_trip_and_hashable():
    spec = FeatureSpec(
        (
            FeatureConfig("rsi", {"period": 7}),
            FeatureConfig("fracdiff", {"d": 0.25, "max_window": None}),
            FeatureConfig("obi", {"source": "bvc"}),
            FeatureConfig("log_ret"),
        )
    )
    text = json.dumps(spec.to_dict())
    back = FeatureSpec.from_dict(json.loads(text))
    assert back == spec and hash(back) == hash(spec)
    assert FeatureSpec.from_json(spec.to_json()) == spec
    assert back.to_dict()["features"][1]["params"] == {"d": 0.25, "threshold": 1e-5, "max_window": None}
    assert FeatureSpec.from_dict(FeatureSpec.default().to_dict()) == FeatureSpec.default()
    assert FeatureConfig("rsi") == FeatureConfig("rsi", {"period": 14})
    assert {FeatureSpec.default(): 1}[FeatureSpec.default()] == 1


def test_unknown_feature_name_suggests():
    with pytest.raises(ValueError, match=r"unknown feature 'rsii'; did you mean 'rsi'\?"):
        FeatureSpec.from_names(["log_ret", "rsii"])
    with pytest.raises(ValueError, match="did you mean 'fracdiff'"):
        FeatureSpec.from_dict({"features": [{"name": "frac_diff"}]})
    with pytest.raises(ValueError, match="unknown feature 'zzz'; known: atr, fracdiff"):
        FeatureConfig("zzz")


def test_bad_params_are_named():
    with pytest.raises(ValueError, match="unknown parameter 'peroid'; did you mean 'period'"):
        FeatureConfig("rsi", {"peroid": 3})
    with pytest.raises(ValueError, match="period must be an int"):
        FeatureConfig("rsi", {"period": 3.5})
    with pytest.raises(ValueError, match=r"fast \(26\) must be < slow \(12\)"):
        FeatureConfig("macd", {"fast": 26, "slow": 12})
    with pytest.raises(ValueError, match="source must be one of"):
        FeatureConfig("obi", {"source": "tape"})
    with pytest.raises(ValueError, match="d must be >= 0"):
        FeatureConfig("fracdiff", {"d": -0.1})
    with pytest.raises(ValueError, match="column 'rsi_14' is produced by both"):
        FeatureSpec.from_names(["rsi", "rsi"])
    with pytest.raises(ValueError, match="at least one feature"):
        FeatureSpec(())


def test_missing_and_bad_columns_are_named():
    df = _frame(np.linspace(10, 12, 30)).drop(columns="volume")
    with pytest.raises(ValueError, match=r"feature 'volume_z' .*needs column 'volume'"):
        compute_features(df)
    with pytest.raises(ValueError, match=r"feature 'obi' \(source='book'.*needs column 'bid_size'"):
        compute_features(df, FeatureSpec((FeatureConfig("obi", {"source": "book"}),)))
    bad = _frame(np.linspace(10, 12, 30))
    bad.iloc[5, bad.columns.get_loc("close")] = np.nan
    with pytest.raises(ValueError, match=r"column 'close' must be finite and > 0: 1 bad value\(s\).*row 5"):
        compute_features(bad)
    neg = _frame(np.linspace(10, 12, 30), volume=np.r_[np.ones(29), -1.0])
    with pytest.raises(ValueError, match="column 'volume' must be finite and >= 0"):
        compute_features(neg)
