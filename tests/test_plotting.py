"""The backtest and walk-forward pictures, checked on their matplotlib artists: labels, legends, scales,
trade markers vs shading, the stats box, fold names, importance only from enough trials."""

import dataclasses
from pathlib import Path

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
import pytest
from matplotlib.collections import PathCollection

import datafeeds
from conftest import flat_bars, signal_at
from engine import BarrierRules, RunConfig, run_backtest
from engine.walkforward.report import MIN_TRIALS_FOR_IMPORTANCE, plot_stitched, plot_study
from engine.metrics import drawdown
from engine.plotting import LOG_SCALE_RATIO, MAX_TRADE_MARKERS, auto_log_scale, backtest_figure, plot_backtest

PRICE, SIGNAL, EQUITY, DRAWDOWN = "price", "signal", "equity", "drawdown %"  # panels, by their y label


def _ax(fig, panel):
    """The panel of a backtest figure with this y label (baselines have no signal panel)."""
    (ax,) = [a for a in fig.axes if a.get_ylabel() == panel]
    return ax


# --- fixtures and helpers ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smacross():
    return run_backtest("sp500", "smacross", run=RunConfig(start="2015-01-01"))


@pytest.fixture(scope="module")
def many_trades():
    """A random signal on the whole sp500 sample through the fast engine: hundreds of trades."""
    df = datafeeds.load_ohlcv("sp500")
    signal = np.random.default_rng(0).random(len(df))
    res = run_backtest(df, "agent", signal=signal, run=RunConfig(engine="fast"), rules=BarrierRules(threshold=0.5))
    assert len(res.trades) > 3 * MAX_TRADE_MARKERS
    return res


@pytest.fixture(scope="module")
def few_trades():
    """Two hand-made trades: bar 4 -> stop at 98.5 on bar 6 (below that bar's close), bar 11 -> TP on bar 13."""
    df = flat_bars(overrides={6: (100.0, 100.3, 98.0, 99.0), 13: (100.5, 101.8, 100.3, 101.0)})
    res = run_backtest(df, "agent", signal=signal_at(20, [3, 10]), atr=np.ones(20), rules=BarrierRules(horizon=10))
    assert list(res.trades["exit_reason"]) == ["stop_loss", "take_profit"]
    return res


@pytest.fixture(scope="module")
def hundredfold():
    """A price that rises ~100x, read from a file path: log scale, file name in the title."""
    n = 1500
    rng = np.random.default_rng(1)
    close = 10.0 * np.exp(np.cumsum(rng.normal(np.log(100.0) / n, 0.02, n)))
    df = pd.DataFrame({"open": close, "high": close * 1.01, "low": close * 0.99, "close": close, "volume": 1.0},
                      index=pd.bdate_range("2012-01-02", periods=n, name="datetime"))
    df.attrs["source"] = "/home/someone/data/btc_usd_daily.csv"
    res = run_backtest(df, "smacross")
    assert res.data["high"].max() / res.data["low"].min() > 30
    return res


@pytest.fixture
def figure():
    """Build a backtest figure; closed after the test."""
    made = []

    def build(result, **kw):
        made.append(backtest_figure(result, **kw))
        made[-1].canvas.draw()  # what saving does: drawing must work too
        return made[-1]

    yield build
    for fig in made:
        plt.close(fig)


def _legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None, f"no legend on the {ax.get_ylabel()!r} panel"
    return [t.get_text() for t in legend.get_texts()]


def _line(ax, label):
    lines = [ln for ln in ax.get_lines() if ln.get_label() == label]
    assert len(lines) == 1, [ln.get_label() for ln in ax.get_lines()]
    return lines[0]


def _collection(ax, label):
    found = [c for c in ax.collections if c.get_label() == label]
    assert len(found) == 1, [c.get_label() for c in ax.collections]
    return found[0]


def _shaded_spans(ax, index: pd.DatetimeIndex) -> list[tuple[float, float]]:
    """(start, end) date numbers of the runs of bar intervals whose middle the holding shading covers."""
    shading = [c for c in ax.collections if c.get_label().startswith("in position")]
    assert len(shading) == 1, [c.get_label() for c in ax.collections]
    x = mdates.date2num(index)
    mids = np.column_stack([(x[:-1] + x[1:]) / 2, np.full(len(x) - 1, 0.5)])
    covered = np.zeros(len(mids), bool)
    for path in shading[0].get_paths():
        covered |= path.contains_points(mids)
    edges = np.diff(np.r_[0, covered.astype(int), 0])
    return [(x[i], x[j]) for i, j in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]


def _stats_cells(stats: dict) -> list[str]:
    return [f"{stats['total_return']:+.1%}", f"{stats['cagr']:+.1%}", f"{stats['sharpe']:.2f}",
            f"{stats['max_drawdown']:.1%}", str(stats["n_trades"])]


# --- the backtest picture ---------------------------------------------------------------------------

def test_label_names_the_strategy_in_every_legend(smacross, figure):
    fig = figure(smacross, label="smacross")
    equity_rows = _legend_texts(_ax(fig, EQUITY))
    assert equity_rows[1].split()[0] == "smacross" and equity_rows[2].startswith("buy & hold")
    assert _legend_texts(_ax(fig, DRAWDOWN)) == ["smacross", "buy & hold"]
    every_text = [t for ax in fig.axes if ax.get_legend() for t in _legend_texts(ax)]
    assert not any("SmaCross" in t for t in every_text)
    # without a label, the class name from the result's config
    assert _legend_texts(_ax(figure(smacross), DRAWDOWN))[0] == "SmaCross"


def test_smacross_draws_its_moving_averages(smacross, figure):
    fig = figure(smacross, label="smacross")
    assert [a.get_ylabel() for a in fig.axes] == [PRICE, EQUITY, DRAWDOWN]  # no empty signal panel
    close = smacross.data["close"]
    for window in (10, 30):
        line = _line(_ax(fig, PRICE), f"SMA {window}")
        np.testing.assert_allclose(line.get_ydata(), close.rolling(window).mean().to_numpy(), equal_nan=True)
    assert {f"SMA {w}" for w in (10, 30)} <= set(_legend_texts(_ax(fig, PRICE)))


def test_agent_figure_draws_the_bar_range_close_and_signal(few_trades, figure):
    fig = figure(few_trades, label="agent1")
    ax = _ax(fig, PRICE)
    band = _collection(ax, "bar low..high").get_paths()[0].vertices[:, 1]
    data = few_trades.data
    assert band.min() == data["low"].min() and band.max() == data["high"].max()
    np.testing.assert_array_equal(_line(ax, "close").get_ydata(), data["close"].to_numpy())
    # the stop fill (98.5) lies below its bar's close (99) but inside the drawn low..high
    stop = few_trades.trades.iloc[0]
    bar = data.loc[stop["exit_time"]]
    assert bar["low"] <= stop["exit_price"] < bar["close"]
    assert not any(ln.get_label().startswith("SMA") for ln in ax.get_lines())  # agents have no SMAs
    signal = _ax(fig, SIGNAL)
    np.testing.assert_array_equal(_line(signal, "probability").get_ydata(), few_trades.signal.to_numpy())
    assert _legend_texts(signal) == ["probability", "threshold 0.5"]


def test_few_trades_get_markers_and_shaded_holding_periods(few_trades, figure):
    ax = _ax(figure(few_trades, label="agent1"), PRICE)
    t = few_trades.trades
    entries = _collection(ax, "entry")
    np.testing.assert_allclose(entries.get_offsets(),
                               np.column_stack([mdates.date2num(t["entry_time"]), t["entry_price"]]))
    for reason in ("stop_loss", "take_profit"):
        row = t[t["exit_reason"] == reason]
        np.testing.assert_allclose(_collection(ax, f"exit: {reason}").get_offsets(),
                                   np.column_stack([mdates.date2num(row["exit_time"]), row["exit_price"]]))
    expected = list(zip(mdates.date2num(t["entry_time"]), mdates.date2num(t["exit_time"])))
    assert _shaded_spans(ax, few_trades.data.index) == expected
    assert not any("markers hidden" in s for s in _legend_texts(ax))


def test_many_trades_hide_markers_but_keep_the_shading(many_trades, figure):
    ax = _ax(figure(many_trades, label="agent1"), PRICE)
    assert not any(isinstance(c, PathCollection) for c in ax.collections)  # no scatter markers
    texts = _legend_texts(ax)
    n = len(many_trades.trades)
    assert f"{n} trades: markers hidden (> {MAX_TRADE_MARKERS})" in texts
    held = float((many_trades.position != 0).mean())
    shading = [s for s in texts if s.startswith("in position")]
    assert shading == [f"in position ({held:.0%} of bars)"]
    # one artist, yet every holding period drawn
    assert len(_shaded_spans(ax, many_trades.data.index)) > MAX_TRADE_MARKERS
    assert len(ax.collections) <= 3  # band, shading (+ nothing per trade): cost does not grow with trades


def test_drawdown_panel_in_percent_with_buy_and_hold_and_a_legend(smacross, figure):
    ax = _ax(figure(smacross, label="smacross"), DRAWDOWN)
    assert ax.get_ylabel() == "drawdown %"
    bench = _line(ax, "buy & hold")
    np.testing.assert_allclose(bench.get_ydata(), 100.0 * drawdown(smacross.benchmark_equity).to_numpy())
    fill = _collection(ax, "smacross").get_paths()[0].vertices[:, 1]
    assert fill.min() == pytest.approx(100.0 * smacross.stats["max_drawdown"])
    assert _legend_texts(ax) == ["smacross", "buy & hold"]


def test_equity_panel_draws_both_curves_with_their_headline_numbers(smacross, figure):
    ax = _ax(figure(smacross, label="smacross"), EQUITY)
    strategy_line, bench_line = ax.get_lines()
    np.testing.assert_array_equal(strategy_line.get_ydata(), smacross.equity.to_numpy())
    np.testing.assert_array_equal(bench_line.get_ydata(), smacross.benchmark_equity.to_numpy())
    # the legend is the stats box: a header row, then one aligned row per curve
    header, strategy, bench = _legend_texts(ax)
    assert header.split() == ["return", "CAGR", "Sharpe", "max", "DD", "trades"]
    assert strategy.split() == ["smacross", *_stats_cells(smacross.stats)]
    assert bench.split() == ["buy", "&", "hold", *_stats_cells(smacross.benchmark_stats)]
    assert strategy.index("%") == bench.index("%")  # columns line up in the monospace box


def test_stats_box_says_n_a_for_missing_values_and_no_benchmark(smacross, figure):
    res = dataclasses.replace(smacross, stats={**smacross.stats, "sharpe": None, "cagr": float("nan")},
                              benchmark_equity=None, benchmark_stats=None)
    fig = figure(res, label="smacross")
    rows = _legend_texts(_ax(fig, EQUITY))
    assert len(rows) == 2 and rows[1].split()[2:4] == ["n/a", "n/a"]
    assert _legend_texts(_ax(fig, DRAWDOWN)) == ["smacross"]


def test_log_scale_only_for_a_long_rise(hundredfold, smacross, figure):
    fig = figure(hundredfold, label="smacross")
    assert _ax(fig, PRICE).get_yscale() == "log" and _ax(fig, EQUITY).get_yscale() == "log"
    sp = figure(run_backtest("sp500", "buyhold", run=RunConfig(start="2015-01-01", end="2018-12-31")), label="buyhold")
    assert _ax(sp, PRICE).get_yscale() == "linear" and _ax(sp, EQUITY).get_yscale() == "linear"
    assert _ax(fig, DRAWDOWN).get_yscale() == "linear"


def test_auto_log_scale_rule():
    fig, ax = plt.subplots()
    try:
        assert not auto_log_scale(ax, [1.0, LOG_SCALE_RATIO])  # exactly 10x: linear
        assert ax.get_yscale() == "linear"
        assert not auto_log_scale(ax, [0.0, 100.0])  # a wiped-out curve cannot go on a log axis
        assert not auto_log_scale(ax, [np.nan, np.nan], None)
        assert auto_log_scale(ax, pd.Series([5.0, 20.0]), None, np.array([60.0, np.nan]))
        assert ax.get_yscale() == "log"
        assert ax.yaxis.get_major_formatter()(20_000.0, 0) == "20,000"  # plain numbers, not 2x10^4
    finally:
        plt.close(fig)


def test_title_names_the_data_file_not_its_path(hundredfold, figure):
    title = figure(hundredfold, label="smacross").get_suptitle()
    assert title.startswith("smacross on btc_usd_daily.csv  |  2012-")
    assert "/home" not in title
    given = figure(hundredfold, title="mine on /abs/file.csv", label="smacross").get_suptitle()
    assert given.startswith("mine on /abs/file.csv  |  ")


def test_plot_backtest_takes_the_label_and_writes_a_png(smacross, tmp_path):
    path = plot_backtest(smacross, tmp_path / "sma.png", label="smacross")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sma.png"]


# --- walk-forward pictures --------------------------------------------------------------------------

def _study(n_trials: int) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.3) ** 2 + 0.1 * t.suggest_int("n", 1, 4),
                   n_trials=n_trials)
    return study


def _recorder():
    """A ``save(fig, path)`` that keeps the figures by file name instead of writing them."""
    figures = {}
    return figures, lambda fig, path: figures.__setitem__(path.name, fig)


def test_importance_is_not_drawn_from_a_handful_of_trials(tmp_path):
    figures, save = _recorder()
    try:
        paths = plot_study(_study(3), tmp_path, 0, save)
    finally:
        for fig in figures.values():
            plt.close(fig)
    assert list(figures) == ["fold0_history.png"]
    assert paths["history"] == str(tmp_path / "fold0_history.png") and paths["importance"] is None
    note = paths["importance_note"]
    assert "3 completed" in note and str(MIN_TRIALS_FOR_IMPORTANCE) in note and "noise" in note


def test_importance_from_enough_trials_says_how_many_and_that_it_is_indicative(tmp_path):
    figures, save = _recorder()
    try:
        paths = plot_study(_study(12), tmp_path, 1, save)
        assert sorted(figures) == ["fold1_history.png", "fold1_importance.png"]
        title = figures["fold1_importance.png"].axes[0].get_title(loc="left")
    finally:
        for fig in figures.values():
            plt.close(fig)
    assert paths["importance"] == str(tmp_path / "fold1_importance.png") and paths["importance_note"] is None
    assert "12 trials" in title and "indicative only" in title


def _stitched_figure(growth: float):
    """plot_stitched on three 100-bar folds whose equity grows ``growth``-fold in all; returns its figure."""
    idx = pd.bdate_range("2015-01-01", periods=300, name="datetime")
    wiggle = 1.0 + 0.05 * np.sin(np.arange(300) / 7.0)
    equity = pd.Series(100_000 * np.geomspace(1.0, growth, 300) * wiggle, index=idx)
    bench = pd.Series(100_000 * np.linspace(1.0, 1.5, 300) * wiggle[::-1], index=idx)
    figures, save = _recorder()
    plot_stitched(equity, bench, [idx[100], idx[200]], Path("stitched_equity.png"), "wf vs buy-and-hold", save)
    fig = figures["stitched_equity.png"]
    fig.canvas.draw()
    return fig, equity, bench, idx


def test_stitched_plot_names_the_folds_and_draws_drawdown_in_percent():
    fig, equity, bench, idx = _stitched_figure(1.3)
    try:
        top, bottom = fig.axes
        labels = [(t.get_text(), t.xy[0]) for t in top.texts]
        assert [s for s, _ in labels] == ["fold 0", "fold 1", "fold 2"]
        np.testing.assert_allclose([x for _, x in labels], mdates.date2num(idx[[0, 100, 200]]))
        assert bottom.get_ylabel() == "drawdown %"
        assert _legend_texts(bottom) == ["walk-forward out-of-sample", "buy and hold"]
        np.testing.assert_allclose(_line(bottom, "buy and hold").get_ydata(), 100.0 * drawdown(bench).to_numpy())
        assert _legend_texts(top) == ["walk-forward out-of-sample", "buy and hold"]
        assert top.get_yscale() == "linear"
    finally:
        plt.close(fig)


def test_stitched_plot_goes_log_past_a_tenfold_range():
    fig, *_ = _stitched_figure(50.0)
    try:
        assert fig.axes[0].get_yscale() == "log" and fig.axes[1].get_yscale() == "linear"
    finally:
        plt.close(fig)
