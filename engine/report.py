"""The main command's outputs as text and files: the results table beside the benchmark, returns by year
and month, a portfolio's contribution per instrument, the JSON report and the trades CSV.

Functions return strings (the command prints them) or write files atomically (``datafeeds.write_atomic``);
none prints. Walk-forward has its own (``engine.walkforward.report``).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pandas as pd

from datafeeds import list_universes, write_atomic
from engine.jsonable import jsonable
from engine.metrics import period_returns, side_stats

BENCH_LABEL = "buy & hold"
PORTFOLIO_BENCH_LABEL = "equal weight"

ROWS = [  # the results table: name, stats key, format
    ("total return", "total_return", "{:+.2%}"),
    ("CAGR", "cagr", "{:+.2%}"),
    ("ann. volatility", "ann_volatility", "{:.2%}"),
    ("Sharpe", "sharpe", "{:.2f}"),
    ("Sortino", "sortino", "{:.2f}"),
    ("max drawdown", "max_drawdown", "{:.2%}"),
    ("max DD duration (bars)", "max_drawdown_duration_bars", "{:d}"),
    ("Calmar", "calmar", "{:.2f}"),
    ("trades", "n_trades", "{:d}"),
    ("win rate", "win_rate", "{:.1%}"),
    ("profit factor", "profit_factor", "{:.2f}"),
    ("avg trade return", "avg_trade_return", "{:+.3%}"),
    ("exposure", "exposure", "{:.1%}"),
    ("final equity", "end_value", "{:,.0f}"),
]
# a portfolio's stats also count the signals it could not take
PORTFOLIO_ROWS = [
    ("skipped signals", "skipped_signals", "{:d}"),
    ("rejected entries", "rejected_entries", "{:d}"),
]
# rows measured on trades: n/a for a benchmark whose stats were computed without any (the portfolio's)
_TRADE_KEYS = ("n_trades", "win_rate", "profit_factor", "avg_trade_return", "exposure")


def _cell(fmt, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return fmt.format(int(value) if "d}" in fmt else value)


# ------------------------------------------------------------------------------------ text
def header_line(label: str, data_label: str, result) -> str:
    """The first line of a one-instrument backtest: what traded what, when, with which money and costs (all read
    from the result's config)."""
    c, params = result.config, result.config["params"]
    return (f"{label} on {data_label}, {pd.Timestamp(c['start']).date()} .. {pd.Timestamp(c['end']).date()} "
            f"({len(result.equity)} bars), cash {c['cash']:,.0f}, commission {c['commission']:g}, "
            f"slippage {c['slippage']:g}"
            + _short_terms(c)
            + (f", size {params['size_frac']:g} of equity" if params["size_frac"] != 1 else "")
            + (f", sized by probability (step {params['size_step']:g})" if params.get("sizing") == "probability"
               else "")
            + (f", threshold {params['threshold']:.4f}" if "threshold" in params else "")
            + (f", SMA {params['fast']}/{params['slow']}" if "fast" in params else "")
            + (f", risk-free {c['risk_free']:.2%}" if c["risk_free"] else ""))


def portfolio_header_line(label: str, data_label: str, result) -> str:
    """The first line of a portfolio backtest: the instruments traded, the period, positions, sizing and costs."""
    c, params = result.config, result.config["params"]
    symbols = c["symbols"]
    return (f"{label} on {data_label}: {len(symbols)} instruments ({', '.join(symbols)}), "
            f"{pd.Timestamp(c['start']).date()} .. {pd.Timestamp(c['end']).date()} ({len(result.equity)} times), "
            f"at most {params['max_positions']} positions, {c['sizing']}, cash {c['cash']:,.0f}, commission "
            f"{c['commission']:g}, slippage {c['slippage']:g}" + _short_terms(c)
            + f", threshold {params['threshold']:.4f}"
            + (f", risk-free {c['risk_free']:.2%}" if c["risk_free"] else ""))


def _short_terms(config: dict) -> str:
    """The header's margin and borrow terms, where they differ from a cash account's (nothing for one)."""
    return ((f", margin {config['margin']:g}" if config.get("margin", 1.0) != 1.0 else "")
            + (f", borrow {config['borrow']:.2%}/yr" if config.get("borrow") else ""))


def results_table(result, label: str, bench_label: str = BENCH_LABEL, extra_rows=()) -> str:
    """Side-by-side table of the strategy and its benchmark (buy-and-hold) over the same bars and costs;
    ``extra_rows`` (name, stats key, format) follow the usual ones."""
    bench = result.benchmark_stats or {}
    if bench_label == PORTFOLIO_BENCH_LABEL and not bench.get("n_trades"):  # its stats were computed without trades
        bench = {k: v for k, v in bench.items() if k not in _TRADE_KEYS}
    width = max(len(label), 12)
    lines = [f"{'':<24}{label:>{width}}  {bench_label:>12}"]
    for name, key, fmt in [*ROWS, *extra_rows]:
        lines.append(f"{name:<24}{_cell(fmt, result.stats.get(key)):>{width}}  {_cell(fmt, bench.get(key)):>12}")
    if len(result.trades):
        counts = result.trades["exit_reason"].value_counts()
        lines.append("exits: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        sides = side_stats(result.trades, result.config["cash"])
        if any(r["side"] == "short" for r in sides):  # a long-only run prints what it always printed
            lines.extend(side_line(r) for r in sides)
    return "\n".join(lines)


def side_line(row: dict) -> str:
    """One side's trades (a row of ``engine.metrics.side_stats``) as a line."""
    exits = ", ".join(f"{k} {v}" for k, v in row["exits"].items())
    return (f"{row['side']}: {row['trades']} trades, win rate {row['win_rate']:.1%}, pnl {row['pnl']:,.0f} "
            f"({row['return_contribution']:+.2%} of cash); exits: {exits}")


def portfolio_table(result, label: str) -> str:
    """``results_table`` of a portfolio: beside its equal-weight benchmark, with the signals it could not take."""
    return results_table(result, label, PORTFOLIO_BENCH_LABEL, PORTFOLIO_ROWS)


def returns_by_period(result) -> dict:
    """Compounded returns per calendar year and month, strategy beside buy-and-hold (JSON-ready)."""
    out = {}
    for freq, key in (("Y", "yearly"), ("M", "monthly")):
        strat = period_returns(result.equity, freq)
        bench = period_returns(result.benchmark_equity, freq) if result.benchmark_equity is not None else None
        out[key] = [{"period": str(p), "strategy": float(r),
                     "buy_and_hold": None if bench is None else float(bench[p])} for p, r in strat.items()]
    return out


def returns_tables(returns: dict, label: str, bench_label: str = BENCH_LABEL) -> str:
    """Yearly returns beside buy-and-hold, then the strategy's monthly returns as a year x month grid."""
    width = max(len(label), 9)
    bwidth = max(len(bench_label), 10)
    lines = [f"{'year':<6}{label:>{width}}  {bench_label:>{bwidth}}"]
    for row in returns["yearly"]:
        lines.append(f"{row['period']:<6}{row['strategy']:>+{width}.2%}  "
                     f"{_cell('{:+.2%}', row['buy_and_hold']):>{bwidth}}")
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    grid: dict[str, dict[int, float]] = {}
    for row in returns["monthly"]:
        year, month = row["period"].split("-")
        grid.setdefault(year, {})[int(month)] = row["strategy"]
    lines += ["", f"{label} monthly returns (%)", "year " + "".join(f"{m:>7}" for m in months)]
    for year, values in grid.items():
        lines.append(f"{year:<5}" + "".join(f"{100 * values[m]:>+7.1f}" if m in values else f"{'':>7}"
                                            for m in range(1, 13)))
    return "\n".join(lines)


def benchmark_line(result) -> str:
    """What a portfolio's benchmark is, in one line."""
    n = len(result.config["symbols"])
    return (f"benchmark: equal-weight buy-and-hold of the {n} instrument{'s' if n > 1 else ''}, "
            f"{result.config['cash'] / n:,.0f} each (cash / {n}) bought at each one's second bar's open and held to "
            "its last bar, not rebalanced, same costs")


_CONTRIBUTION_COLUMNS = [  # header, cell of a row (a dict); right-aligned, two spaces apart
    ("bars", lambda r: f"{r['bars']:d}" if r.get("bars") is not None else ""),
    ("first .. last", lambda r: f"{r['first'][:10]} .. {r['last'][:10]}" if r.get("first") else ""),
    ("pnl", lambda r: f"{r['pnl']:+,.0f}"),
    ("return", lambda r: f"{r['return_contribution']:+.2%}"),
    ("trades", lambda r: f"{r['trades']:d}"),
    ("win rate", lambda r: _cell("{:.1%}", r["win_rate"])),
    ("exposure", lambda r: f"{r['exposure']:.1%}"),
    ("skipped", lambda r: f"{r['skipped_signals']:d}"),
    ("rejected", lambda r: f"{r['rejected_entries']:d}"),
]


def contribution_rows(result) -> list[dict]:
    """One dict per instrument (the result's contribution, its bars and dates in the period), then a total."""
    rows = []
    for sym, c in result.contribution.iterrows():
        data = result.config["data"][sym]
        rows.append({"symbol": sym, **{k: (None if v is None or (isinstance(v, float) and v != v) else v)
                                       for k, v in c.to_dict().items()},
                     "bars": int(data["bars"]), "first": data["start"], "last": data["end"]})
    for r in rows:
        for key in ("trades", "skipped_signals", "rejected_entries"):
            r[key] = int(r[key])
    stats = result.stats
    rows.append({"symbol": "total", "bars": None, "first": None, "last": None,
                 "pnl": sum(r["pnl"] for r in rows), "return_contribution": sum(r["return_contribution"] for r in rows),
                 "trades": sum(r["trades"] for r in rows), "win_rate": stats.get("win_rate"),
                 "exposure": stats.get("exposure"), "skipped_signals": sum(r["skipped_signals"] for r in rows),
                 "rejected_entries": sum(r["rejected_entries"] for r in rows)})
    return rows


def contribution_table(rows: list[dict]) -> str:
    """The per-instrument table: bars, dates, pnl, return contribution, trades, win rate, exposure,
    signals skipped (no free slot or cash) and entries the broker rejected; a total row last."""
    width = max(10, *(len(r["symbol"]) for r in rows))
    cells = [[cell(r) for _, cell in _CONTRIBUTION_COLUMNS] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _) in enumerate(_CONTRIBUTION_COLUMNS)]
    head = f"{'instrument':<{width}}" + "".join(f"  {h:>{w}}" for (h, _), w in zip(_CONTRIBUTION_COLUMNS, widths))
    lines = [head]
    for r, row in zip(rows, cells):
        if r["symbol"] == "total":
            lines.append("-" * len(head))
        lines.append(f"{r['symbol']:<{width}}" + "".join(f"  {c:>{w}}" for c, w in zip(row, widths)))
    lines.append("return: pnl / starting cash; exposure: share of the portfolio's times holding it (total: any); "
                 "skipped: signals without a free slot or cash")
    return "\n".join(lines)


def file_label(text: str) -> str:
    """``text`` made safe for a file name: runs of characters other than letters, digits and ``._+-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_.") or "data"


def universe_label(data_name: str, symbols: list[str]) -> str:
    """A short name for a universe in titles and file names: a bundled universe's or a directory's own name,
    else its members (up to 4) joined by '+', else '<n>_instruments'."""
    if data_name in list_universes():
        return data_name
    path = Path(data_name).expanduser()
    if path.is_dir():
        return file_label(path.resolve().name)
    return file_label("+".join(symbols)) if len(symbols) <= 4 else f"{len(symbols)}_instruments"


# ------------------------------------------------------------------------------------ the JSON report
def build_report(result, *, agent: str | None, data: str, engine: str, notes, returns: dict) -> dict:
    """Everything needed to audit a one-instrument run (JSON-ready): config (with the agent file, the data and
    the engine), notes, stats beside the benchmark's, returns by period, trades, per-bar equity and signal."""
    sig = result.signal
    return jsonable({
        "config": {**result.config, "agent": agent, "data": data, "engine": engine},
        "notes": notes,
        "stats": result.stats,
        "sides": side_stats(result.trades, result.config["cash"]),
        "benchmark_stats": result.benchmark_stats,
        "returns": returns,
        "trades": result.trades.to_dict("records"),
        "bars": {
            "datetime": [str(t) for t in result.equity.index],
            "equity": result.equity.tolist(),
            "benchmark_equity": None if result.benchmark_equity is None else result.benchmark_equity.tolist(),
            "signal": None if sig is None else sig.reindex(result.equity.index).tolist(),
        },
    })


def build_portfolio_report(result, *, about: dict, notes, signals: dict, returns: dict,
                           contribution: list[dict]) -> dict:
    """A portfolio run for audit (JSON-ready): config (the result's, then ``about``: the agent, universe, members
    and those left out), stats beside the benchmark's, contribution per instrument, returns by period, trades
    (with their symbol), and per time the equity, benchmark, units held and signals."""
    times = result.equity.index
    return jsonable({
        "config": {**result.config, **about},
        "notes": notes,
        "stats": result.stats,
        "sides": side_stats(result.trades, result.config["cash"]),
        "benchmark": benchmark_line(result).removeprefix("benchmark: "),
        "benchmark_stats": result.benchmark_stats,
        "contribution": [r for r in contribution if r["symbol"] != "total"],
        "contribution_total": next(r for r in contribution if r["symbol"] == "total"),
        "returns": returns,
        "trades": result.trades.to_dict("records"),
        "bars": {
            "datetime": [str(t) for t in times],
            "equity": result.equity.tolist(),
            "benchmark_equity": None if result.benchmark_equity is None else result.benchmark_equity.tolist(),
            "positions": {sym: result.positions[sym].tolist() for sym in result.positions.columns},
            "signals": {sym: signals[sym].reindex(times).tolist() for sym in result.positions.columns},
        },
    })


def write_report(path: str | os.PathLike, report: dict) -> None:
    """``report`` (from ``build_report``) as JSON, written atomically; NaN is refused (JSON has none)."""
    write_atomic(path, json.dumps(report, indent=1, allow_nan=False).encode())


def write_trades(path: str | os.PathLike, trades: pd.DataFrame) -> None:
    """The trades as CSV, one row each, written atomically."""
    write_atomic(path, trades.to_csv(index=False).encode())
