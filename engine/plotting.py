"""One PNG per backtest: price with trades, signal, equity vs buy-and-hold, drawdown (never cerebro.plot)."""

from __future__ import annotations

import io
from os import PathLike
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless; backtrader's own plotting forces TkAgg and fails here

import matplotlib.pyplot as plt  # noqa: E402

from datafeeds import write_atomic  # noqa: E402
from engine.metrics import drawdown  # noqa: E402

_EXIT_COLOURS = {
    "take_profit": "tab:green",
    "stop_loss": "tab:red",
    "time_limit": "tab:orange",
    "signal_exit": "tab:purple",
    "end_of_data": "tab:gray",
}


def plot_backtest(result, path: str | PathLike, *, title: str | None = None) -> Path:
    """Draw ``result`` (a ``BacktestResult``) to the PNG ``path`` atomically and return the path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plot path must end in .png, got {path}")
    cfg = result.config
    if title is None:
        title = f"{cfg.get('strategy', 'strategy')} on {cfg.get('data_source', 'data')}"
    title = f"{title}  |  {cfg.get('start', '')[:10]} .. {cfg.get('end', '')[:10]}"

    fig, axes = plt.subplots(4, 1, sharex=True, figsize=(13, 10),
                             gridspec_kw={"height_ratios": [3, 1.2, 2, 1.2]})
    try:
        _price_panel(axes[0], result)
        _signal_panel(axes[1], result)
        _equity_panel(axes[2], result)
        _drawdown_panel(axes[3], result)
        fig.suptitle(title, fontsize=12)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        write_atomic(path, buffer.getvalue())
    finally:
        plt.close(fig)
    return path


def _price_panel(ax, result) -> None:
    close = result.data["close"]
    ax.plot(close.index, close.to_numpy(), color="black", lw=0.8, label="close")
    trades = result.trades
    if len(trades):
        ax.scatter(trades["entry_time"], trades["entry_price"], marker="^", s=36, color="tab:blue",
                   zorder=3, label="entry")
        for reason, group in trades.groupby("exit_reason", sort=True):
            ax.scatter(group["exit_time"], group["exit_price"], marker="v", s=36, zorder=3,
                       color=_EXIT_COLOURS.get(reason, "tab:brown"), label=f"exit: {reason}")
    ax.set_ylabel("price")
    ax.legend(loc="upper left", fontsize=8, ncol=3)
    ax.grid(alpha=0.3)


def _signal_panel(ax, result) -> None:
    if result.signal is None:
        ax.text(0.5, 0.5, "no signal (baseline strategy)", transform=ax.transAxes,
                ha="center", va="center", color="gray")
    else:
        ax.plot(result.signal.index, result.signal.to_numpy(), color="tab:blue", lw=0.7, label="probability")
        threshold = result.config.get("params", {}).get("threshold", 0.5)
        ax.axhline(threshold, color="tab:red", ls="--", lw=0.9, label=f"threshold {threshold:.4g}")
        # zoom on where the probabilities live: agents trained with focal loss rarely span [0, 1]
        values = result.signal.dropna().to_numpy()
        lo = min(values.min(), threshold) if values.size else 0.0
        hi = max(values.max(), threshold) if values.size else 1.0
        pad = max(0.02, 0.1 * (hi - lo))
        ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))
        ax.legend(loc="upper left", fontsize=8)
    ax.set_ylabel("signal")
    ax.grid(alpha=0.3)


def _equity_panel(ax, result) -> None:
    ax.plot(result.equity.index, result.equity.to_numpy(), color="tab:blue", lw=1.0,
            label=f"{result.config.get('strategy', 'strategy')}")
    if result.benchmark_equity is not None:
        ax.plot(result.benchmark_equity.index, result.benchmark_equity.to_numpy(), color="gray",
                lw=1.0, label="buy & hold")
    ax.set_ylabel("equity")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)


def _drawdown_panel(ax, result) -> None:
    dd = drawdown(result.equity) * 100.0
    ax.fill_between(dd.index, dd.to_numpy(), 0.0, color="tab:red", alpha=0.4, lw=0)
    ax.set_ylabel("drawdown %")
    ax.grid(alpha=0.3)
