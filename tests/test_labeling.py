"""Tests for labeling.atr and labeling.tbm: hand-made cases, invariants, references on real data."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import talib

from datafeeds import load_ohlcv
from labeling import TBMConfig, atr, label_spans, triple_barrier_labels
from labeling.tbm import _triple_barrier_nb


@pytest.fixture(scope="module", params=["sp500", "eurusd_1h"])
def bars(request):
    return load_ohlcv(request.param)


# ---------------------------------------------------------------- ATR


def _atr_loop(h, lo, c, period):
    """Plain-python Wilder ATR, written from the definition."""
    n = len(c)
    tr = [None] + [max(h[i] - lo[i], abs(h[i] - c[i - 1]), abs(lo[i] - c[i - 1])) for i in range(1, n)]
    out = [float("nan")] * n
    if n > period:
        out[period] = sum(tr[1 : period + 1]) / period
        for i in range(period + 1, n):
            out[i] = (out[i - 1] * (period - 1) + tr[i]) / period
    return np.array(out)


def test_atr_hand_computed():
    h = [10.0, 11.0, 12.0, 11.0, 13.0]
    lo = [9.0, 10.0, 10.0, 9.0, 11.0]
    c = [9.5, 10.5, 11.0, 10.0, 12.0]
    # TR[1..4] = 1.5, 2, 2, 3 -> ATR[3] = 5.5/3, ATR[4] = (5.5/3*2 + 3)/3 = 20/9
    got = atr(np.array(h), np.array(lo), np.array(c), period=3)
    assert np.isnan(got[:3]).all()
    assert got[3] == pytest.approx(5.5 / 3, rel=1e-15)
    assert got[4] == pytest.approx(20 / 9, rel=1e-15)
    np.testing.assert_allclose(got, _atr_loop(h, lo, c, 3), rtol=1e-15, equal_nan=True)


def test_atr_matches_python_loop_on_random_walk():
    rng = np.random.default_rng(1)
    c = 100 + np.cumsum(rng.normal(size=300))
    h = c + rng.uniform(0, 2, size=300)
    lo = c - rng.uniform(0, 2, size=300)
    for period in (1, 2, 7, 14):
        np.testing.assert_allclose(atr(h, lo, c, period), _atr_loop(h, lo, c, period), rtol=1e-13, equal_nan=True)


@pytest.mark.parametrize("period", [1, 14, 30])
def test_atr_equals_talib(bars, period):
    got = atr(bars["high"], bars["low"], bars["close"], period)
    ref = talib.ATR(bars["high"].to_numpy(float), bars["low"].to_numpy(float), bars["close"].to_numpy(float),
                    timeperiod=period)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    assert np.isnan(got[:period]).all() and not np.isnan(got[period:]).any()
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0, equal_nan=True)


def test_atr_series_and_arrays_agree_and_short_input_is_nan():
    h, lo, c = pd.Series([2.0, 3.0, 4.0]), pd.Series([1.0, 2.0, 3.0]), pd.Series([1.5, 2.5, 3.5])
    np.testing.assert_array_equal(atr(h, lo, c, 2), atr(h.to_numpy(), lo.to_numpy(), c.to_numpy(), 2))
    assert np.isnan(atr(h, lo, c, 3)).all()  # n <= period: no value yet
    assert atr(h, lo, c, 2)[2] == pytest.approx(1.5)  # TR = 1.5, 1.5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(period=0), "period"),
        (dict(period=2.5), "period"),
        (dict(period=True), "period"),
        (dict(low=[1.0, np.nan, 1.0]), "low"),
        (dict(close=[1.0, 1.0, np.inf]), "close"),
        (dict(high=[1.0, 2.0]), "equal lengths"),
        (dict(high=np.ones((3, 1))), "high"),
        (dict(high=["a", "b", "c"]), "high"),
    ],
)
def test_atr_rejects_bad_input(kwargs, match):
    args = dict(high=[2.0, 2.0, 2.0], low=[1.0, 1.0, 1.0], close=[1.5, 1.5, 1.5], period=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        atr(**args)


# ---------------------------------------------------------------- TBMConfig


def test_config_defaults_round_trip_and_frozen():
    cfg = TBMConfig()
    assert cfg.to_dict() == {"pt": 1.5, "sl": 1.5, "horizon": 20, "atr_period": 14}
    cfg2 = TBMConfig(pt=2, sl=np.float64(0.5), horizon=np.int64(5), atr_period=3)
    assert TBMConfig.from_dict(json.loads(json.dumps(cfg2.to_dict()))) == cfg2
    assert isinstance(cfg2.pt, float) and type(cfg2.horizon) is int
    assert TBMConfig.from_dict({"horizon": 7}) == TBMConfig(horizon=7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.pt = 2.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pt=0.0), "pt"),
        (dict(sl=-1.0), "sl"),
        (dict(pt=float("nan")), "pt"),
        (dict(sl=float("inf")), "sl"),
        (dict(pt="1"), "pt"),
        (dict(horizon=0), "horizon"),
        (dict(horizon=2.5), "horizon"),
        (dict(atr_period=0), "atr_period"),
        (dict(atr_period=True), "atr_period"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TBMConfig(**kwargs)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown key"):
        TBMConfig.from_dict({"pt": 1.0, "horizn": 3})


# ---------------------------------------------------------------- kernel, hand-made paths


def _path(n=4, **bars):
    """Flat bars around 100 (high 100.5, low 99.5) with per-bar overrides like high={2: 101.0}."""
    h, lo, c = np.full(n, 100.5), np.full(n, 99.5), np.full(n, 100.0)
    for arr, name in ((h, "high"), (lo, "low"), (c, "close")):
        for i, v in bars.get(name, {}).items():
            arr[i] = v
    return h, lo, c


def _first_event(h, lo, c, pt=1.0, sl=1.0, horizon=3, side=1):
    """Kernel result for event 0 with ATR = 1 everywhere, so a long's barriers are 100 + pt and 100 - sl (a
    short's 100 + sl and 100 - pt)."""
    idx, bar, price = _triple_barrier_nb(h, lo, c, np.ones(len(c)), np.full(len(c), side, np.int8), pt, sl, horizon)
    return int(idx[0]), int(bar[0]), float(price[0])


def test_kernel_upper_first_touch_on_equality():
    h, lo, c = _path(high={2: 101.0}, low={3: 98.0})  # high == upper counts as a touch
    assert _first_event(h, lo, c) == (2, 1, 101.0)


def test_kernel_lower_first():
    h, lo, c = _path(low={1: 99.0}, high={2: 102.0})
    assert _first_event(h, lo, c) == (1, -1, 99.0)


def test_kernel_vertical_barrier_uses_close_at_horizon():
    h, lo, c = _path(close={3: 100.4})
    assert _first_event(h, lo, c) == (3, 0, 100.4)


def test_kernel_same_bar_tie_goes_to_lower():
    h, lo, c = _path(high={2: 101.5}, low={2: 98.5})
    assert _first_event(h, lo, c) == (2, -1, 99.0)


def test_kernel_gap_through_barrier_uses_barrier_price():
    h, lo, c = _path(high={1: 105.0}, low={1: 104.0}, close={1: 104.5})
    assert _first_event(h, lo, c) == (1, 1, 101.0)
    h, lo, c = _path(high={1: 96.0}, low={1: 95.0}, close={1: 95.5})
    assert _first_event(h, lo, c) == (1, -1, 99.0)


def test_kernel_asymmetric_multiples():
    h, lo, c = _path(low={1: 99.6, 2: 99.5}, high={1: 101.9})  # pt=2 -> upper 102, sl=0.5 -> lower 99.5
    assert _first_event(h, lo, c, pt=2.0, sl=0.5) == (2, -1, 99.5)


def test_kernel_leaves_out_nan_atr_and_short_horizon():
    h, lo, c = _path(n=6)
    a = np.ones(6)
    a[0] = np.nan
    idx, bar, price = _triple_barrier_nb(h, lo, c, a, np.ones(6, np.int8), 1.0, 1.0, 3)
    np.testing.assert_array_equal(idx, [-1, 4, 5, -1, -1, -1])  # t=1,2 vertical; t>=3 lack 3 bars ahead
    assert np.isnan(price[[0, 3, 4, 5]]).all() and (bar == 0).all()
    idx, _, _ = _triple_barrier_nb(h, lo, c, np.ones(6), np.array([1, 0, -1, 1, 1, 1], np.int8), 1.0, 1.0, 3)
    np.testing.assert_array_equal(idx, [3, -1, 5, -1, -1, -1])  # no side, no event


# ---------------------------------------------------------------- shorts (side -1): the mirror


def test_short_profit_taker_below_and_stop_above():
    # short at 100, pt=2 -> profit-taker 98, sl=1 -> stop 101
    h, lo, c = _path(low={2: 98.0})
    assert _first_event(h, lo, c, pt=2.0, sl=1.0, side=-1) == (2, -1, 98.0)
    h, lo, c = _path(high={1: 101.0}, low={2: 97.0})  # the stop touched exactly at the high, before the target
    assert _first_event(h, lo, c, pt=2.0, sl=1.0, side=-1) == (1, 1, 101.0)


def test_short_gap_through_the_stop_uses_the_stop_price():
    h, lo, c = _path(high={1: 106.0}, low={1: 105.0}, close={1: 105.5})  # opens far above the stop at 101
    assert _first_event(h, lo, c, pt=2.0, sl=1.0, side=-1) == (1, 1, 101.0)


def test_short_same_bar_tie_goes_to_its_stop_the_upper_barrier():
    h, lo, c = _path(high={2: 101.5}, low={2: 97.5})  # spans both 101 (stop) and 98 (target)
    assert _first_event(h, lo, c, pt=2.0, sl=1.0, side=-1) == (2, 1, 101.0)
    assert _first_event(h, lo, c, pt=1.0, sl=2.0, side=1) == (2, -1, 98.0)  # the long's mirror: its stop, lower


# ---------------------------------------------------------------- wrapper, hand-made frame


def _tiny_frame():
    idx = pd.date_range("2024-01-01", periods=6, freq="D", name="datetime")
    return pd.DataFrame(
        {
            "open": [10.0, 10.0, 10.1, 11.0, 10.0, 10.1],
            "high": [10.5, 10.6, 11.2, 11.3, 10.2, 10.3],
            "low": [9.5, 9.6, 10.0, 9.7, 9.9, 10.0],
            "close": [10.0, 10.1, 11.0, 10.0, 10.1, 10.2],
        },
        index=idx,
    )


def test_wrapper_hand_computed_labels():
    df = _tiny_frame()
    out = triple_barrier_labels(df, pt=1.0, sl=1.0, horizon=2, atr_period=1)
    # ATR(1) = TR: 1.0, 1.2, 1.6 at bars 1..3.
    # t=1: upper 11.1, bar 2 high 11.2 -> upper. t=2: lower 9.8, bar 3 low 9.7 -> lower.
    # t=3: barriers 11.6 / 8.4 never touched in bars 4..5 -> vertical at close[5] = 10.2.
    assert list(out.index) == list(df.index[1:4])
    assert out.index.name == "datetime"
    assert out["label"].tolist() == [1, 0, 0]
    assert out["barrier"].tolist() == [1, -1, 0]
    assert list(out["t1"]) == [df.index[2], df.index[3], df.index[5]]
    np.testing.assert_allclose(out["ret"], [11.1 / 10.1 - 1, 9.8 / 11.0 - 1, 10.2 / 10.0 - 1], rtol=1e-12)
    assert out["label"].dtype == np.int8 and out["barrier"].dtype == np.int8
    assert out["ret"].dtype == np.float64 and np.issubdtype(out["t1"].dtype, np.datetime64)
    assert out.attrs["tbm"] == TBMConfig(pt=1.0, sl=1.0, horizon=2, atr_period=1).to_dict()


def test_meta_labels_of_hand_computed_shorts_and_mixed_sides():
    df = _tiny_frame()
    # ATR(1) = TR: 1.0, 1.2, 1.6 at bars 1..3.
    # t=1 short: target 10.1 - 1.0 = 9.1, stop 11.1: bar 2's high 11.2 -> the stop (upper), label 0.
    # t=2 short: target 11.0 - 1.2 = 9.8, stop 12.2: bar 3's low 9.7 -> the target (lower), label 1.
    # t=3 long: 11.6 / 8.4 never touched in bars 4..5 -> vertical at close[5] = 10.2, label 0.
    side = pd.Series([-1, -1, 1], index=df.index[1:4])
    out = triple_barrier_labels(df, pt=1.0, sl=1.0, horizon=2, atr_period=1, side=side)
    assert list(out.index) == list(df.index[1:4])
    assert out["barrier"].tolist() == [1, -1, 0] and out["label"].tolist() == [0, 1, 0]
    assert out["side"].tolist() == [-1, -1, 1] and out["side"].dtype == np.int8
    assert list(out["t1"]) == [df.index[2], df.index[3], df.index[5]]
    np.testing.assert_allclose(out["ret"], [11.1 / 10.1 - 1, 9.8 / 11.0 - 1, 10.2 / 10.0 - 1], rtol=1e-12)
    # t=2 short with its target 2 ATRs away (8.6) and its stop at 12.2: neither -> vertical at close[4] = 10.1
    far = triple_barrier_labels(df, pt=2.0, sl=1.0, horizon=2, atr_period=1, side=pd.Series([-1], index=df.index[2:3]))
    assert far["barrier"].tolist() == [0] and far["label"].tolist() == [0] and far["t1"].tolist() == [df.index[4]]


def test_all_long_sides_are_the_long_only_labels(bars):
    plain = triple_barrier_labels(bars)
    longs = triple_barrier_labels(bars, side=1)
    pd.testing.assert_frame_equal(longs.drop(columns="side"), plain)
    assert (longs["side"] == 1).all()


def test_shorts_mirror_longs_on_real_bars(bars):
    longs = triple_barrier_labels(bars, pt=2.0, sl=1.0)
    shorts = triple_barrier_labels(bars, pt=1.0, sl=2.0, side=-1)  # the same two prices, roles swapped
    assert longs.index.equals(shorts.index)
    same = longs["barrier"] == shorts["barrier"]  # all but the bars touching both: each side's stop wins there
    assert same.mean() > 0.97
    assert ((longs.loc[~same, "barrier"] == -1) & (shorts.loc[~same, "barrier"] == 1)).all()
    assert (shorts["label"] == (shorts["barrier"] == -1)).all()
    assert (longs.loc[same, "label"] + shorts.loc[same, "label"] <= 1).all()  # never both targets first


@pytest.mark.parametrize("side, match", [
    (0, r"side at .* is 0; a side is \+1 \(long\) or -1 \(short\)"),
    (2, "is 2"),
    (True, "is True"),
    (lambda d: pd.Series([1.0, np.nan], index=d.index[:2]), "2024-01-02 00:00:00 is nan"),
    (lambda d: pd.Series([1], index=[pd.Timestamp("1999-01-01")]), "not a bar of df"),
    (lambda d: np.ones(3), "shape"),
    (lambda d: np.array(["1"] * len(d)), "is '1'"),
])
def test_bad_sides_are_refused_in_one_line(side, match):
    df = _tiny_frame()
    with pytest.raises(ValueError, match=match):
        triple_barrier_labels(df, horizon=2, atr_period=1, side=side(df) if callable(side) else side)


def test_wrapper_accepts_config_and_rejects_config_plus_keywords():
    df = _tiny_frame()
    cfg = TBMConfig(pt=1.0, sl=1.0, horizon=2, atr_period=1)
    pd.testing.assert_frame_equal(triple_barrier_labels(df, config=cfg), triple_barrier_labels(df, **cfg.to_dict()))
    with pytest.raises(ValueError, match="not both"):
        triple_barrier_labels(df, config=cfg, horizon=3)


def test_wrapper_too_short_gives_empty_frame():
    out = triple_barrier_labels(_tiny_frame(), horizon=5, atr_period=1)
    assert len(out) == 0 and list(out.columns) == ["label", "t1", "ret", "barrier"]


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.drop(columns="low"), "low"),
        (lambda d: d.reset_index(drop=True), "DatetimeIndex"),
        (lambda d: d.iloc[::-1], "strictly increasing"),
        (lambda d: d.set_axis(d.index[[0, 1, 1, 3, 4, 5]]), "strictly increasing"),
        (lambda d: d.assign(close=[10.0, np.nan, 11.0, 10.0, 10.1, 10.2]), "close"),
        (lambda d: d["close"], "DataFrame"),
    ],
)
def test_wrapper_rejects_bad_frames(mutate, match):
    with pytest.raises(ValueError, match=match):
        triple_barrier_labels(mutate(_tiny_frame()), horizon=2, atr_period=1)


# ---------------------------------------------------------------- invariants on real data


def test_left_out_events_are_warmup_and_tail(bars):
    out = triple_barrier_labels(bars, horizon=20, atr_period=14)
    assert out.index.equals(bars.index[14 : len(bars) - 20].rename("datetime"))


def test_huge_barriers_give_only_vertical_touches(bars):
    out = triple_barrier_labels(bars, pt=1e6, sl=1e6, horizon=10)
    ev, t1 = label_spans(out, bars.index)
    assert (out["barrier"] == 0).all() and (out["label"] == 0).all()
    np.testing.assert_array_equal(t1, ev + 10)
    c = bars["close"].to_numpy()
    np.testing.assert_allclose(out["ret"].to_numpy(), c[ev + 10] / c[ev] - 1, rtol=1e-15)


def test_tiny_barriers_touch_on_first_bar(bars):
    k = 1e-9
    out = triple_barrier_labels(bars, pt=k, sl=k, horizon=5)
    ev, t1 = label_spans(out, bars.index)
    a = atr(bars["high"], bars["low"], bars["close"], 14)[ev]
    c, h, lo = (bars[col].to_numpy() for col in ("close", "high", "low"))
    hit_lo = lo[ev + 1] <= c[ev] - k * a
    hit_up = h[ev + 1] >= c[ev] + k * a
    first = hit_lo | hit_up
    assert first.mean() > 0.99  # only flat bars sitting exactly on the close escape
    np.testing.assert_array_equal(t1[first], ev[first] + 1)
    np.testing.assert_array_equal(out["barrier"].to_numpy()[first], np.where(hit_lo[first], -1, 1))


def test_labels_do_not_depend_on_bars_after_the_horizon(bars):
    horizon, k = 20, len(bars) // 2
    base = triple_barrier_labels(bars, horizon=horizon)
    rng = np.random.default_rng(0)
    changed = bars.copy()
    scale = np.ones(len(bars))
    scale[k + horizon + 1 :] = rng.uniform(0.5, 1.5, size=len(bars) - k - horizon - 1)
    for col in ("open", "high", "low", "close"):
        changed[col] = changed[col] * scale
    new = triple_barrier_labels(changed, horizon=horizon)
    cut = bars.index[k]
    pd.testing.assert_frame_equal(base.loc[:cut], new.loc[:cut])
    assert not base.loc[bars.index[k + horizon + 1] :].equals(new.loc[bars.index[k + horizon + 1] :])


def test_label_spans_positions_and_unknown_index():
    df = _tiny_frame()
    out = triple_barrier_labels(df, pt=1.0, sl=1.0, horizon=2, atr_period=1)
    ev, t1 = label_spans(out, df.index)
    np.testing.assert_array_equal(ev, [1, 2, 3])
    np.testing.assert_array_equal(t1, [2, 3, 5])
    with pytest.raises(ValueError, match="not in bars_index"):
        label_spans(out, df.index[2:])


# ---------------------------------------------------------------- independent reference on real data


def _reference_labels(df, pt, sl, horizon, atr_period):
    """Same conventions, different code: TA-Lib ATR and a per-event pandas loop over .iloc slices."""
    a = pd.Series(
        talib.ATR(df["high"].to_numpy(float), df["low"].to_numpy(float), df["close"].to_numpy(float), atr_period),
        index=df.index,
    )
    rows = []
    for t in range(len(df) - horizon):
        if np.isnan(a.iloc[t]):
            continue
        c0 = df["close"].iloc[t]
        up, dn = c0 + pt * a.iloc[t], c0 - sl * a.iloc[t]
        window = df.iloc[t + 1 : t + horizon + 1]
        up_hits = window.index[window["high"] >= up]
        dn_hits = window.index[window["low"] <= dn]
        first_up = up_hits[0] if len(up_hits) else None
        first_dn = dn_hits[0] if len(dn_hits) else None
        if first_dn is not None and (first_up is None or first_dn <= first_up):
            rows.append((df.index[t], 0, first_dn, dn / c0 - 1, -1))
        elif first_up is not None:
            rows.append((df.index[t], 1, first_up, up / c0 - 1, 1))
        else:
            rows.append((df.index[t], 0, window.index[-1], window["close"].iloc[-1] / c0 - 1, 0))
    return pd.DataFrame(rows, columns=["datetime", "label", "t1", "ret", "barrier"]).set_index("datetime")


def test_matches_independent_pandas_reference(bars):
    got = triple_barrier_labels(bars)
    ref = _reference_labels(bars, 1.5, 1.5, 20, 14)
    assert got.index.equals(ref.index)
    np.testing.assert_array_equal(got["label"].to_numpy(), ref["label"].to_numpy())
    np.testing.assert_array_equal(got["barrier"].to_numpy(), ref["barrier"].to_numpy())
    assert (got["t1"].to_numpy() == ref["t1"].to_numpy()).all()
    np.testing.assert_allclose(got["ret"].to_numpy(), ref["ret"].to_numpy(), rtol=1e-12, atol=1e-15)
    # all three barrier kinds occur, so the comparison exercises each branch
    assert set(got["barrier"].unique()) == {-1, 0, 1}


def test_same_bar_ties_occur_in_eurusd_and_resolve_to_lower():
    df = load_ohlcv("eurusd_1h")
    out = triple_barrier_labels(df)
    ev, t1 = label_spans(out, df.index)
    a = atr(df["high"], df["low"], df["close"], 14)[ev]
    c = df["close"].to_numpy()[ev]
    tie = (df["high"].to_numpy()[t1] >= c + 1.5 * a) & (df["low"].to_numpy()[t1] <= c - 1.5 * a)
    assert 0.005 < tie.mean() < 0.02  # about 1% of events
    assert (out["barrier"].to_numpy()[tie] == -1).all() and (out["label"].to_numpy()[tie] == 0).all()
    np.testing.assert_allclose(out["ret"].to_numpy()[tie], (c[tie] - 1.5 * a[tie]) / c[tie] - 1, rtol=1e-12)


# ------------------------------------------------------------------ uniqueness weights (AFML ch. 4)
def test_average_uniqueness_by_hand():
    from labeling import average_uniqueness

    # bars 0..5; events A = [0, 2], B = [1, 3], C = [4, 5]
    # concurrency per bar: 1, 2, 2, 1, 1, 1
    # A: (1 + 1/2 + 1/2) / 3 = 2/3;  B: (1/2 + 1/2 + 1) / 3 = 2/3;  C: (1 + 1) / 2 = 1
    u = average_uniqueness([0, 1, 4], [2, 3, 5], 6)
    np.testing.assert_allclose(u, [2 / 3, 2 / 3, 1.0], rtol=0, atol=1e-15)
    # three identical spans share every bar: a third each
    np.testing.assert_allclose(average_uniqueness([2, 2, 2], [4, 4, 4], 6), [1 / 3] * 3, atol=1e-15)
    # a one-bar event inside a long one: bar 3 is shared
    # long [0, 5]: (1 + 1 + 1 + 1/2 + 1 + 1) / 6 = 11/12; short [3, 3]: 1/2
    np.testing.assert_allclose(average_uniqueness([0, 3], [5, 3], 6), [11 / 12, 0.5], atol=1e-15)


def test_average_uniqueness_refuses_spans_outside_the_bars():
    from labeling import average_uniqueness

    with pytest.raises(ValueError, match="event 1 spans bars 3..2"):
        average_uniqueness([0, 3], [1, 2], 5)
    with pytest.raises(ValueError, match="end < 5"):
        average_uniqueness([0], [5], 5)
