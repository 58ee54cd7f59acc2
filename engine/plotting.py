"""One PNG per backtest: price with trades, signal, equity vs buy-and-hold, drawdown (never cerebro.plot).

:func:`backtest_figure` builds the figure (tests inspect its artists), :func:`plot_backtest` writes it.
It stays readable from 10 to thousands of trades: bar ranges as a band, holding periods shaded, trade
markers only when few, log scale when the data span more than :data:`LOG_SCALE_RATIO`.
:func:`portfolio_figure` / :func:`plot_portfolio` do the same for a portfolio backtest
(``engine.portfolio.PortfolioResult``): equity and drawdowns beside the equal-weight benchmark, the
holding periods of every instrument, and each instrument's contribution.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
from os import PathLike
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless; backtrader's own plotting forces TkAgg and fails here

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import dates as mdates  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from datafeeds import write_atomic  # noqa: E402
from engine.metrics import drawdown  # noqa: E402
from engine.report import BENCH_LABEL, PORTFOLIO_BENCH_LABEL  # noqa: E402
from labeling.rules import BarrierRules  # noqa: E402

log = logging.getLogger(__name__)

# Entry/exit markers are drawn only up to this many trades: beyond it (~60 on a 13-inch-wide panel)
# they overlap into a band that buries the price line; the shaded holding periods still show every trade.
MAX_TRADE_MARKERS = 60

# A panel switches to a log y axis when max/min of what it draws exceeds this: on a linear axis a
# 10x rise squeezes the early part of the curve into the bottom tenth (a BTC curve reads as flat zero).
LOG_SCALE_RATIO = 10.0

_EXIT_COLOURS = {
    "take_profit": "tab:green",
    "stop_loss": "tab:red",
    "time_limit": "tab:orange",
    "signal_exit": "tab:purple",
    "end_of_data": "tab:gray",
}
_STRATEGY_COLOUR = "tab:blue"
_BENCH_COLOUR = "dimgray"


def plot_backtest(result, path: str | PathLike, *, title: str | None = None, label: str | None = None) -> Path:
    """Draw ``result`` (a ``BacktestResult``) to the PNG ``path`` atomically and return the path;
    ``title`` and ``label`` as in :func:`backtest_figure`."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plot path must end in .png, got {path}")
    fig = backtest_figure(result, title=title, label=label)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    write_atomic(path, buffer.getvalue())
    log.debug("backtest plot written to %s", path)
    return path


def backtest_figure(result, *, title: str | None = None, label: str | None = None) -> Figure:
    """The backtest picture of ``result`` as a matplotlib ``Figure`` (not registered with pyplot).

    Panels: price (bar range, close, holding periods, trades or SMAs), signal (agents only), equity vs buy-and-hold
    with the headline statistics in its legend, drawdown % of both. ``label`` names the strategy in
    legends (default ``result.config["strategy"]``, its class name); ``title`` defaults to
    ``"<label> on <data file name>"``; the traded period is appended to either.
    """
    cfg = result.config
    label = label or str(cfg.get("strategy", "strategy"))
    if title is None:
        title = f"{label} on {Path(str(cfg.get('data_source') or 'data')).name}"
    title = f"{title}  |  {str(cfg.get('start', ''))[:10]} .. {str(cfg.get('end', ''))[:10]}"

    # baselines have no signal: their picture drops that panel rather than show an empty one
    panels = [(_price_panel, 3.0), (_signal_panel, 1.1), (_equity_panel, 2.2), (_drawdown_panel, 1.3)]
    if result.signal is None:
        del panels[1]
    fig = Figure(figsize=(13, 10.5 if result.signal is not None else 9.2))
    axes = fig.subplots(len(panels), 1, sharex=True, gridspec_kw={"height_ratios": [h for _, h in panels]})
    for ax, (draw, _) in zip(axes, panels):
        ax.grid(alpha=0.3)
        ax.margins(x=0.005)
        draw(ax, result, label)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def auto_log_scale(ax, *values, ratio: float = LOG_SCALE_RATIO) -> bool:
    """Put ``ax``'s y axis on a log scale, with plain-number ticks, when the finite ``values`` (arrays or
    Series drawn there, None skipped) are all positive and span more than ``ratio`` (max/min).
    Returns whether it did; a curve touching zero or below keeps the linear axis."""
    parts = [np.asarray(v, dtype=np.float64).ravel() for v in values if v is not None]
    data = np.concatenate(parts) if parts else np.empty(0)
    data = data[np.isfinite(data)]
    if data.size == 0 or data.min() <= 0 or data.max() / data.min() <= ratio:
        return False
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: _plain(v)))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    return True


def _plain(v: float) -> str:
    """A tick label without scientific notation: 50, 1,000, 0.02."""
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:g}"


def _price_panel(ax, result, label: str) -> None:
    data = result.data
    x = data.index
    low, high, close = (data[c].to_numpy(np.float64) for c in ("low", "high", "close"))
    # the bar range as a band: fills at a stop, limit or open price sit inside what is drawn
    ax.fill_between(x, low, high, color="0.55", alpha=0.35, lw=0, label="bar low..high")
    ax.plot(x, close, color="black", lw=0.7, label="close")
    if result.config.get("strategy") == "SmaCross":
        params = result.config.get("params", {})
        for window, colour in ((params.get("fast"), "tab:orange"), (params.get("slow"), "tab:purple")):
            if window:
                sma = data["close"].rolling(int(window)).mean()
                ax.plot(x, sma.to_numpy(), color=colour, lw=1.0, label=f"SMA {int(window)}")
    trades = result.trades
    if len(trades):
        # one stepped polygon (height 1 while held, 0 otherwise), not one patch per trade: stays cheap
        # to draw and to place the legend around with thousands of trades
        held = _held_mask(x, trades)
        ax.fill_between(x, 0, held.astype(np.float64), step="post", transform=ax.get_xaxis_transform(),
                        color="tab:blue", alpha=0.12, lw=0, label=f"in position ({held.mean():.0%} of bars)")
        shorts = trades[trades["side"] < 0] if "side" in trades else trades.iloc[:0]
        if len(shorts):  # short spells shaded again, in their own colour
            held_short = _held_mask(x, shorts)
            ax.fill_between(x, 0, held_short.astype(np.float64), step="post", transform=ax.get_xaxis_transform(),
                            color="tab:purple", alpha=0.12, lw=0, label=f"short ({held_short.mean():.0%} of bars)")
        if len(trades) <= MAX_TRADE_MARKERS:
            # triangles point the way of the fill: a buy up (a long's entry, a short's exit), a sell down
            is_short = trades.index.isin(shorts.index)
            for side, group, colour in (("long", trades[~is_short], "tab:blue"), ("short", shorts, "tab:purple")):
                if len(group):
                    ax.scatter(group["entry_time"], group["entry_price"], marker="^" if side == "long" else "v", s=40,
                               color=colour, edgecolors="white", linewidths=0.5, zorder=3,
                               label=f"{side} entry" if len(shorts) else "entry")
            for reason, group in trades.groupby("exit_reason", sort=True):
                label = f"exit: {reason}"  # once per reason, on whichever side draws it first
                for marker, part in (("v", group[~group.index.isin(shorts.index)]),
                                     ("^", group[group.index.isin(shorts.index)])):
                    if len(part):
                        ax.scatter(part["exit_time"], part["exit_price"], marker=marker, s=40, zorder=3,
                                   edgecolors="white", linewidths=0.5, color=_EXIT_COLOURS.get(reason, "tab:brown"),
                                   label=label)
                        label = None
        else:
            ax.add_line(Line2D([], [], ls="none",
                               label=f"{len(trades)} trades: markers hidden (> {MAX_TRADE_MARKERS})"))
    if not auto_log_scale(ax, low, high):
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: _plain(v)))
    ax.set_ylabel("price")
    ax.legend(loc=_emptiest_corner(ax, data["low"], data["high"]), fontsize=8, ncol=4, framealpha=0.85)


def _emptiest_corner(ax, *curves: pd.Series | None, box: tuple[float, float] = (0.45, 0.3)) -> str:
    """The legend corner of ``ax`` (a ``box`` of axes fractions) holding the fewest points of ``curves``,
    ties to upper left. Like loc="best", which rescans every vertex at each draw (slow: docs/DECISIONS.md)."""
    ax.get_xlim(), ax.get_ylim()  # settle autoscaling first
    to_axes = ax.transData + ax.transAxes.inverted()
    w, h = box
    counts = dict.fromkeys(("upper left", "upper right", "lower left", "lower right"), 0)
    for curve in curves:
        if curve is None:
            continue
        xy = np.column_stack([mdates.date2num(curve.index), curve.to_numpy(np.float64)])
        px, py = to_axes.transform(xy).T
        left, right, top, bottom = px < w, px > 1 - w, py > 1 - h, py < h
        counts["upper left"] += np.count_nonzero(left & top)
        counts["upper right"] += np.count_nonzero(right & top)
        counts["lower left"] += np.count_nonzero(left & bottom)
        counts["lower right"] += np.count_nonzero(right & bottom)
    return min(counts, key=counts.get)


def _held_mask(index: pd.DatetimeIndex, trades: pd.DataFrame) -> np.ndarray:
    """True from each trade's entry bar up to, not including, its exit bar: drawn as steps that start at
    each bar, the shading then spans entry_time..exit_time exactly. O(bars + trades)."""
    start = index.searchsorted(pd.DatetimeIndex(trades["entry_time"]))
    stop = index.searchsorted(pd.DatetimeIndex(trades["exit_time"]))
    edges = np.zeros(len(index) + 1, np.int64)
    np.add.at(edges, start, 1)
    np.add.at(edges, stop, -1)
    return np.cumsum(edges[:-1]) > 0


def _signal_panel(ax, result, label: str) -> None:
    ax.plot(result.signal.index, result.signal.to_numpy(), color="tab:blue", lw=0.7, label="probability")
    threshold = result.config.get("params", {}).get("threshold", BarrierRules.threshold)
    ax.axhline(threshold, color="tab:red", ls="--", lw=0.9, label=f"threshold {threshold:.4g}")
    # zoom on where the probabilities live: agents trained with focal loss rarely span [0, 1]
    values = result.signal.dropna().to_numpy()
    lo = min(values.min(), threshold) if values.size else 0.0
    hi = max(values.max(), threshold) if values.size else 1.0
    pad = max(0.02, 0.1 * (hi - lo))
    ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))
    ax.legend(loc="upper left", fontsize=8, ncol=2, framealpha=0.85)
    ax.set_ylabel("signal")


def _equity_panel(ax, result, label: str, bench_label: str = BENCH_LABEL) -> None:
    """Strategy vs buy-and-hold; the legend is the stats box: one aligned row of headline numbers per curve."""
    bench = result.benchmark_equity
    rows = [("", "return", "CAGR", "Sharpe", "max DD", "trades"), _stats_row(label, result.stats)]
    ax.plot(result.equity.index, result.equity.to_numpy(), color=_STRATEGY_COLOUR, lw=1.0)
    if bench is not None:
        ax.plot(bench.index, bench.to_numpy(), color=_BENCH_COLOUR, lw=1.0)
        rows.append(_stats_row(bench_label, result.benchmark_stats or {}))
    if not auto_log_scale(ax, result.equity, bench):
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: _plain(v)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    texts = ["  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])])
             for row in rows]
    handles = [Line2D([], [], ls="none"), Line2D([], [], color=_STRATEGY_COLOUR, lw=1.5)]
    if bench is not None:
        handles.append(Line2D([], [], color=_BENCH_COLOUR, lw=1.5))
    ax.legend(handles, texts, loc=_emptiest_corner(ax, result.equity, bench),
              prop={"family": "monospace", "size": 8}, framealpha=0.85)
    ax.set_ylabel("equity")


def _stats_row(name: str, stats: dict) -> tuple[str, ...]:
    """Headline cells of one curve: total return, CAGR, Sharpe, max drawdown, trades ("n/a" if unknown)."""
    return (name, _fmt(stats.get("total_return"), "{:+.1%}"), _fmt(stats.get("cagr"), "{:+.1%}"),
            _fmt(stats.get("sharpe"), "{:.2f}"), _fmt(stats.get("max_drawdown"), "{:.1%}"),
            _fmt(stats.get("n_trades"), "{:.0f}"))


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return spec.format(value)


def _drawdown_panel(ax, result, label: str, bench_label: str = BENCH_LABEL) -> None:
    dd = drawdown(result.equity) * 100.0
    ax.fill_between(dd.index, dd.to_numpy(), 0.0, color="tab:red", alpha=0.4, lw=0, label=label)
    if result.benchmark_equity is not None:
        bench_dd = drawdown(result.benchmark_equity) * 100.0
        ax.plot(bench_dd.index, bench_dd.to_numpy(), color=_BENCH_COLOUR, lw=0.8, label=bench_label)
    ax.set_ylabel("drawdown %")
    # above the panel's top right, where it cannot hide a drawdown
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8, ncol=2, frameon=False,
              borderaxespad=0.1)


# ------------------------------------------------------------------------------------------------------
# Portfolio backtests (engine.portfolio.PortfolioResult)
# ------------------------------------------------------------------------------------------------------


def plot_portfolio(result, path: str | PathLike, title: str | None = None, *, label: str | None = None) -> Path:
    """Draw the portfolio backtest ``result`` (a ``PortfolioResult``) to the PNG ``path`` atomically and
    return the path; ``title`` and ``label`` as in :func:`portfolio_figure`."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plot path must end in .png, got {path}")
    fig = portfolio_figure(result, title, label=label)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    write_atomic(path, buffer.getvalue())
    log.debug("portfolio plot written to %s", path)
    return path


def portfolio_figure(result, title: str | None = None, *, label: str | None = None) -> Figure:
    """The picture of a portfolio backtest as a matplotlib ``Figure`` (not registered with pyplot).

    Panels, top to bottom: equity beside the equal-weight buy-and-hold benchmark with the headline
    statistics in the legend (log scale past :data:`LOG_SCALE_RATIO`); both drawdowns in %; the
    positions held, one row per instrument (its data's span in grey, its holding periods in colour)
    under a row counting the positions open; each instrument's pnl as a labelled horizontal bar.
    ``label`` names the strategy in legends (default "portfolio"); ``title`` defaults to
    ``"<label> on <n> instruments"``; the period and the position rules are appended to either.
    """
    cfg = result.config
    label = label or "portfolio"
    symbols = list(result.positions.columns)
    if title is None:
        title = f"{label} on {len(symbols)} instruments"
    params = cfg.get("params", {})
    title = (f"{title}  |  {str(cfg.get('start', ''))[:10]} .. {str(cfg.get('end', ''))[:10]}  |  "
             f"at most {params.get('max_positions')} positions, {cfg.get('sizing', '')}")
    bench_stats = result.benchmark_stats
    if bench_stats is not None and not bench_stats.get("n_trades"):
        bench_stats = {**bench_stats, "n_trades": None}  # computed without trades: "n/a", not 0
    view = _View(equity=result.equity, benchmark_equity=result.benchmark_equity, stats=result.stats,
                 benchmark_stats=bench_stats)
    rows = len(symbols) + 1
    heights = [3.0, 1.3, max(1.3, 0.3 * rows + 0.3), max(1.1, 0.3 * len(symbols) + 0.5)]
    fig = Figure(figsize=(13, 1.2 + 1.45 * sum(heights)))
    axes = fig.subplots(4, 1, gridspec_kw={"height_ratios": heights})
    ax_eq, ax_dd, ax_pos, ax_con = axes
    ax_dd.sharex(ax_eq)
    ax_pos.sharex(ax_eq)
    for ax in axes:
        ax.grid(alpha=0.3)
    for ax in (ax_eq, ax_dd):
        ax.margins(x=0.005)
        ax.tick_params(labelbottom=False)  # the positions panel below shows the dates
    _equity_panel(ax_eq, view, label, PORTFOLIO_BENCH_LABEL)
    _drawdown_panel(ax_dd, view, label, PORTFOLIO_BENCH_LABEL)
    _positions_panel(ax_pos, result)
    _contribution_panel(ax_con, result)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


@dataclasses.dataclass
class _View:
    """What the equity and drawdown panels read from a result."""

    equity: pd.Series
    benchmark_equity: pd.Series | None
    stats: dict
    benchmark_stats: dict | None


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, stop) index pairs of the runs of True in ``mask`` (stop exclusive)."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def _positions_panel(ax, result) -> None:
    """One row per instrument (first at the top): its data's span in light grey, each holding period as a
    coloured bar from the first time held to the next time after it; above them, the positions open."""
    positions = result.positions
    times = positions.index
    symbols = list(positions.columns)
    x = mdates.date2num(times)
    step = float(np.median(np.diff(x))) if len(x) > 1 else 1.0
    right = np.append(x[1:], x[-1] + step)  # a time's holding lasts until the next time
    n = len(symbols)
    for row, sym in enumerate(symbols):
        y = n - 1 - row
        data = result.data.get(sym) if isinstance(result.data, dict) else None
        if data is not None and len(data):
            lo, hi = mdates.date2num(data.index[0]), mdates.date2num(data.index[-1])
            ax.broken_barh([(lo, hi - lo)], (y - 0.4, 0.8), facecolors="0.9", edgecolors="none", zorder=1)
        runs = _runs(positions[sym].to_numpy() != 0)
        if runs:
            ax.broken_barh([(x[a], right[b - 1] - x[a]) for a, b in runs], (y - 0.3, 0.6),
                           facecolors=f"C{row % 10}", edgecolors="none", zorder=2)
    # the count of positions open as a step area in the top row, scaled to the limit
    limit = int(result.config.get("params", {}).get("max_positions") or 1)
    count = (positions != 0).sum(axis=1).to_numpy(np.float64)
    top = max(limit, int(count.max()) if len(count) else 0, 1)
    ax.fill_between(np.append(x, right[-1]), n - 0.4, n - 0.4 + 0.8 * np.append(count, count[-1]) / top,
                    step="post", color="0.35", lw=0, zorder=2)
    ax.axhline(n - 0.5, color="0.6", lw=0.6)
    ax.set_yticks(range(n + 1))
    ax.set_yticklabels([*reversed(symbols), f"open (0..{top})"], fontsize=8)
    ax.set_ylim(-0.6, n + 0.5)
    ax.grid(axis="y", alpha=0)
    ax.set_ylabel("positions")
    ax.xaxis_date()


def _contribution_panel(ax, result) -> None:
    """Each instrument's pnl as a horizontal bar (green gain, red loss), labelled on the other side of zero
    with the amount, its share of the starting cash, its trades and win rate; rows as in the positions panel."""
    contrib = result.contribution
    symbols = list(contrib.index)
    n = len(symbols)
    pnl = contrib["pnl"].to_numpy(np.float64)
    y = np.arange(n)[::-1]
    ax.barh(y, pnl, color=["tab:green" if v >= 0 else "tab:red" for v in pnl], alpha=0.75, height=0.6)
    ax.axvline(0.0, color="black", lw=0.8)
    span = float(np.abs(pnl).max()) if n and np.abs(pnl).max() > 0 else 1.0
    ax.set_xlim(-1.05 * span, 1.05 * span)
    for yi, sym, v in zip(y, symbols, pnl):
        c = contrib.loc[sym]
        win = c.get("win_rate")
        text = (f"{v:+,.0f} ({c['return_contribution']:+.1%}), {int(c['trades'])} trades"
                + (f", {win:.0%} won" if win is not None and math.isfinite(win) else ""))
        ax.annotate(text, (0.0, yi), xytext=(-6 if v >= 0 else 6, 0), textcoords="offset points",
                    ha="right" if v >= 0 else "left", va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(symbols, fontsize=8)
    ax.set_ylim(-0.6, n - 0.4)
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: _plain(v)))
    ax.set_xlabel("pnl per instrument, net of costs (its share of the starting cash)", fontsize=9)
    ax.grid(axis="y", alpha=0)
