"""compute_stats against plain-Python recomputations and hand-made curves; periods-per-year rule."""

import json
import math
import statistics

import numpy as np
import pandas as pd
import pytest

import datafeeds
from engine import RunConfig, compute_stats, infer_periods_per_year, run_backtest


def _loop_stats(values, times, ppy):
    """The same statistics written out with loops and the statistics module."""
    rets = [values[i] / values[i - 1] - 1 for i in range(1, len(values))]
    mean = sum(rets) / len(rets)
    std = statistics.stdev(rets)
    down = math.sqrt(sum(min(r, 0.0) ** 2 for r in rets) / len(rets))
    peak, mdd = values[0], 0.0
    for v in values:
        peak = max(peak, v)
        mdd = min(mdd, v / peak - 1)
    years = (times[-1] - times[0]).days / 365.25
    cagr = (values[-1] / values[0]) ** (1 / years) - 1
    return {
        "total_return": values[-1] / values[0] - 1,
        "cagr": cagr,
        "ann_volatility": std * math.sqrt(ppy),
        "sharpe": mean / std * math.sqrt(ppy),
        "sortino": mean / down * math.sqrt(ppy),
        "max_drawdown": mdd,
        "calmar": cagr / abs(mdd),
    }


def test_stats_match_loop_computation_on_a_real_backtest():
    df = datafeeds.load_ohlcv("sp500", start="2012-01-01", end="2015-12-31")
    res = run_backtest(df, "smacross", run=RunConfig(benchmark=False))
    values = list(res.equity.to_numpy())
    times = list(res.equity.index)
    expected = _loop_stats(values, times, res.periods_per_year)
    for key, value in expected.items():
        assert res.stats[key] == pytest.approx(value, rel=1e-9), key
    pnl = list(res.trades["pnl"])
    wins = [p for p in pnl if p > 0]
    losses = [-p for p in pnl if p < 0]
    assert res.stats["n_trades"] == len(pnl) > 5
    assert res.stats["win_rate"] == pytest.approx(len(wins) / len(pnl))
    assert res.stats["profit_factor"] == pytest.approx(sum(wins) / sum(losses))
    assert res.stats["avg_trade_return"] == pytest.approx(sum(res.trades["ret"]) / len(pnl))
    held = sum(1 for s in res.position if s != 0)
    assert res.stats["exposure"] == pytest.approx(held / len(values))
    json.dumps(res.stats, allow_nan=False)  # JSON-safe


def test_hand_made_curve():
    idx = pd.bdate_range("2020-01-01", periods=8)
    eq = pd.Series([100, 110, 99, 88, 95, 110, 121, 110], index=idx, dtype=float)
    s = compute_stats(eq, periods_per_year=252)
    assert s["total_return"] == pytest.approx(0.10)
    assert s["max_drawdown"] == pytest.approx(88 / 110 - 1)
    # peak at bar 1 (110), back to 110 at bar 5: 4 bars, 2020-01-02 -> 2020-01-08 = 6 days;
    # the later dip from 121 (bar 6) to the end is 1 bar.
    assert s["max_drawdown_duration_bars"] == 4
    assert s["max_drawdown_duration_days"] == 6.0
    assert s["n_trades"] == 0 and s["win_rate"] is None and s["profit_factor"] is None
    assert s["exposure"] == 0.0


def test_unrecovered_drawdown_runs_to_the_end():
    idx = pd.date_range("2020-01-01", periods=5, freq="D")
    s = compute_stats(pd.Series([1.0, 2.0, 1.5, 1.8, 1.9], index=idx), periods_per_year=365)
    assert s["max_drawdown_duration_bars"] == 3
    assert s["max_drawdown"] == pytest.approx(-0.25)


def test_undefined_ratios_are_none_not_nan_or_inf():
    idx = pd.bdate_range("2020-01-01", periods=5)
    flat = compute_stats(pd.Series(100.0, index=idx), periods_per_year=252)
    assert flat["sharpe"] is None and flat["sortino"] is None and flat["calmar"] is None
    assert flat["max_drawdown"] == 0.0 and flat["max_drawdown_duration_bars"] == 0
    trades = pd.DataFrame({"pnl": [5.0, 1.0], "ret": [0.05, 0.01],
                           "entry_time": idx[[0, 2]], "exit_time": idx[[1, 4]],
                           "exit_reason": ["take_profit", "end_of_data"]})
    up = compute_stats(pd.Series([100.0, 105, 105, 105, 106], index=idx), trades, periods_per_year=252)
    assert up["profit_factor"] is None  # no losing trade
    assert up["sortino"] is None  # no down bar
    assert up["win_rate"] == 1.0
    assert up["exposure"] == pytest.approx(4 / 5)  # bars 0, 2, 3 and the end_of_data bar 4
    json.dumps(up, allow_nan=False)


def test_bad_equity_is_rejected():
    idx = pd.bdate_range("2020-01-01", periods=3)
    with pytest.raises(ValueError, match="> 0"):
        compute_stats(pd.Series([1.0, 0.0, 1.0], index=idx))
    with pytest.raises(TypeError, match="DatetimeIndex"):
        compute_stats(pd.Series([1.0, 2.0, 3.0]))


def test_periods_per_year_rule():
    sp = datafeeds.load_ohlcv("sp500")
    assert infer_periods_per_year(sp.index) == pytest.approx(251.6, abs=0.5)
    # short daily sample: 1 bar per date * 252
    assert infer_periods_per_year(sp.index[:100]) == 252.0
    # short hourly sample: median bars per date * 252
    fx = datafeeds.load_ohlcv("eurusd_1h")
    per_day = pd.Series(1, index=fx.index).groupby(fx.index.date).size().median()
    assert infer_periods_per_year(fx.index) == per_day * 252
    # >= 1 year of hourly bars, 24 a day on weekdays only
    idx = pd.date_range("2020-01-01", "2021-06-30 23:00", freq="h")
    idx = idx[idx.day_of_week < 5]
    years = (idx[-1] - idx[0]).total_seconds() / (365.25 * 86400)
    assert infer_periods_per_year(idx) == pytest.approx((len(idx) - 1) / years)
    assert infer_periods_per_year(idx) == pytest.approx(24 * 261, rel=0.01)


def test_periods_per_year_asked_again_answers_for_the_index_given():
    daily = pd.date_range("2020-01-01", periods=30, freq="D")
    hourly = pd.date_range("2020-01-01", periods=30 * 24, freq="h")
    for _ in range(2):  # alternating indexes: an answer remembered for one is never given for the other
        assert infer_periods_per_year(daily) == 252.0
        assert infer_periods_per_year(hourly) == 24 * 252.0
    same_values = pd.DatetimeIndex(hourly.to_numpy())  # another object with equal values: the same answer
    assert infer_periods_per_year(same_values) == 24 * 252.0


def _curve(values, dates):
    return pd.Series(np.asarray(values, dtype=np.float64), index=pd.DatetimeIndex(dates))


def test_period_returns_by_year_and_month_by_hand():
    from engine.metrics import period_returns

    eq = _curve([100, 110, 121, 100, 150, 165],
                ["2020-12-30", "2020-12-31", "2021-01-04", "2021-06-30", "2021-12-31", "2022-01-03"])
    years = period_returns(eq, "Y")
    assert [str(p) for p in years.index] == ["2020", "2021", "2022"]
    np.testing.assert_allclose(years.to_numpy(), [0.10, 150 / 110 - 1, 0.10], rtol=1e-12)
    months = period_returns(eq, "M")
    assert [str(p) for p in months.index] == ["2020-12", "2021-01", "2021-06", "2021-12", "2022-01"]
    np.testing.assert_allclose(months.to_numpy(), [0.10, 0.10, 100 / 121 - 1, 0.50, 0.10], rtol=1e-12)
    assert np.prod(1 + months.to_numpy()) - 1 == pytest.approx(165 / 100 - 1, rel=1e-12)
    with pytest.raises(ValueError, match="freq"):
        period_returns(eq, "W")


def test_risk_free_rate_lowers_sharpe_and_sortino_by_the_per_bar_hurdle():
    dates = pd.bdate_range("2020-01-01", periods=6)
    eq = _curve([100, 101, 100.5, 102, 101, 103], dates)
    ppy = 252.0
    r = eq.to_numpy()[1:] / eq.to_numpy()[:-1] - 1
    rf = 1.03 ** (1 / ppy) - 1
    x = r - rf
    s = compute_stats(eq, periods_per_year=ppy, risk_free=0.03)
    assert s["sharpe"] == pytest.approx(x.mean() / x.std(ddof=1) * np.sqrt(ppy), rel=1e-12)
    assert s["sortino"] == pytest.approx(x.mean() / np.sqrt(np.mean(np.minimum(x, 0) ** 2)) * np.sqrt(ppy), rel=1e-12)
    assert s["ann_volatility"] == compute_stats(eq, periods_per_year=ppy)["ann_volatility"]  # volatility is not excess
    assert s["risk_free"] == 0.03
    with pytest.raises(ValueError, match="risk_free"):
        compute_stats(eq, risk_free=3.0)
