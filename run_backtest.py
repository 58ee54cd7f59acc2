"""Backtest an exported agent (or a baseline) out-of-sample, against buy-and-hold.

    python run_backtest.py --agent models/agent1.onnx
    python run_backtest.py --strategy smacross --data nasdaq --start 2015-01-01
    python run_backtest.py --agent models/agent1.onnx --report reports/agent1.json --threshold 0.45

By default the period starts after the last bar the agent saw in training, so results are
out-of-sample; signals are computed once in batch over all bars up to the period end (the
warm-up uses history before the start; every value at bar t uses bars <= t only).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

from agents import AgentFileError, OnnxAgent
from datafeeds import DataError, load_ohlcv, write_atomic
from engine import plot_backtest, run_backtest
from engine.jsonable import jsonable
from strategies import STRATEGIES, get_strategy

DEFAULT_AGENT = "models/agent1.onnx"


class UsageError(ValueError):
    """A bad option or input; reported as one line with exit status 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python run_backtest.py",
        description="Backtest a trained agent (or a baseline) through backtrader with costs and compare it "
        "with buy-and-hold over the same bars. Defaults: the shipped agent, its own dataset, the period after "
        "its training data (out-of-sample).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--agent", default=DEFAULT_AGENT, help="exported agent (.onnx) from python -m agents.train")
    p.add_argument("--strategy", default="agent", help=f"one of: {', '.join(STRATEGIES)}")
    p.add_argument("--data", default=None, help="sample name or CSV/Parquet path (default: the agent's dataset)")
    p.add_argument("--start", default=None, help="first bar of the period (default: after the agent's training data)")
    p.add_argument("--end", default=None, help="last bar of the period (default: the end of the data)")
    p.add_argument("--cash", type=float, default=100_000.0, help="starting cash")
    p.add_argument("--commission", type=float, default=0.0005, help="fraction of traded value per side")
    p.add_argument("--slippage", type=float, default=0.0, help="fraction of price, against us on every fill")
    p.add_argument("--threshold", type=float, default=None, help="enter when probability >= this (default: the agent's)")
    p.add_argument("--pt", type=float, default=None, help="take-profit in ATRs (default: the agent's TBM setting)")
    p.add_argument("--sl", type=float, default=None, help="stop-loss in ATRs (default: the agent's TBM setting)")
    p.add_argument("--horizon", type=int, default=None, help="time exit in bars (default: the agent's TBM setting)")
    p.add_argument("--live", action="store_true", help="stream bars through the agent one at a time (slower; same trades)")
    p.add_argument("--engine", default="backtrader", choices=["backtrader", "fast"],
                   help="backtrader (the reference) or the parity-tested numba simulator (agent strategy only)")
    p.add_argument("--plot", default=None, help="equity-curve PNG (default: reports/<agent>_<data>.png)")
    p.add_argument("--no-plot", action="store_true", help="do not draw the PNG")
    p.add_argument("--report", default=None, help="also write a JSON report: config, stats, trades, equity, signal")
    p.add_argument("--quiet", action="store_true", help="print only the results table")
    return p


def _check_options(args) -> None:
    try:
        get_strategy(args.strategy)
    except ValueError as exc:
        raise UsageError(f"--strategy: {exc}") from None
    fin = math.isfinite
    checks = [
        ("--cash", args.cash, fin(args.cash) and args.cash > 0, "a positive amount"),
        ("--commission", args.commission, 0 <= args.commission < 1, "a fraction in [0, 1)"),
        ("--slippage", args.slippage, 0 <= args.slippage < 1, "a fraction in [0, 1)"),
        ("--threshold", args.threshold, args.threshold is None or 0 <= args.threshold <= 1, "a probability in [0, 1]"),
        ("--pt", args.pt, args.pt is None or (args.pt > 0 and math.isfinite(args.pt)), "a positive number of ATRs"),
        ("--sl", args.sl, args.sl is None or (args.sl > 0 and math.isfinite(args.sl)), "a positive number of ATRs"),
        ("--horizon", args.horizon, args.horizon is None or args.horizon >= 1, "a whole number of bars >= 1"),
    ]
    for name, value, ok, what in checks:
        if not ok:
            raise UsageError(f"{name} {value}: must be {what}")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise UsageError(f"--plot {args.plot}: must be a .png path")
    if args.engine == "fast" and args.strategy != "agent":
        raise UsageError("--engine fast simulates the agent strategy only; use --engine backtrader for baselines")
    if args.live and args.strategy != "agent":
        raise UsageError("--live streams bars through the agent; it needs --strategy agent")
    if args.live and args.engine == "fast":
        raise UsageError("--live streams bars through backtrader; drop --engine fast")
    if args.strategy != "agent":
        given = [name for name in ("threshold", "pt", "sl", "horizon") if getattr(args, name) is not None]
        if given:
            raise UsageError(f"--{given[0]} sets the agent strategy; --strategy {args.strategy} does not use it")


def _load_agent(args) -> OnnxAgent | None:
    """The agent: required for --strategy agent; for baselines only a source of defaults, if present."""
    if args.strategy != "agent" and args.agent == DEFAULT_AGENT and not Path(args.agent).is_file():
        return None
    try:
        return OnnxAgent.load(args.agent)
    except AgentFileError as exc:
        raise UsageError(f"--agent: {exc}") from None


def _timestamp(value, option):
    if value is None:
        return None
    try:
        return pd.Timestamp(value)
    except (ValueError, TypeError):
        raise UsageError(f"{option} {value!r}: not a date (use e.g. 2015-01-02)") from None


def prepare_run(args):
    """Resolve data, period, agent signals and strategy parameters; raise UsageError on bad input."""
    _check_options(args)
    agent = _load_agent(args)
    data_name = args.data or (agent.meta["dataset"]["name"] if agent else "sp500")
    try:
        df = load_ohlcv(data_name)
    except DataError as exc:
        raise UsageError(f"--data: {exc}") from None
    start, end = _timestamp(args.start, "--start"), _timestamp(args.end, "--end")
    notes = []
    if agent is not None:
        # out-of-sample by date, whatever the data: markets move together, so an agent trained on one
        # index up to 2014 has seen the 2014 regime of every other
        first_seen = pd.Timestamp(agent.meta["dataset"]["first_bar"])
        last_seen = pd.Timestamp(agent.meta["dataset"]["last_bar_used"])
        if start is None:
            after = df.index[df.index > last_seen]
            if len(after) == 0:
                raise UsageError(f"{data_name} ends {df.index[-1].date()}, before the agent's training data does "
                                 f"({last_seen.date()}); pass --start to backtest in-sample or use newer data")
            start = after[0]
        period_end = min(end, df.index[-1]) if end is not None else df.index[-1]
        if start <= last_seen and period_end >= first_seen:
            same = data_name == agent.meta["dataset"]["name"] or df.attrs.get("sha256") == agent.meta["dataset"]["sha256"]
            notes.append(f"warning: the period overlaps the agent's training period ({first_seen.date()} .. "
                         f"{last_seen.date()}{'' if same else ', on ' + agent.meta['dataset']['name']}): "
                         "results are IN-SAMPLE")
    history = df.loc[:end] if end is not None else df
    period = history.loc[start:] if start is not None else history
    if len(period) < 2:
        raise UsageError(f"--start/--end select {len(period)} bar(s) of {data_name} "
                         f"({df.index[0].date()}..{df.index[-1].date()}); need at least 2")

    params = {}
    signal = None
    if args.strategy == "agent":
        try:
            agent.check_columns(df)
        except ValueError as exc:
            raise UsageError(f"--data {data_name}: {exc}") from None
        if len(history) <= agent.warmup:
            raise UsageError(f"{data_name} up to {history.index[-1].date()} has {len(history)} bars; "
                             f"the agent needs {agent.warmup} bars of warm-up before its first signal")
        tbm = agent.tbm
        params = dict(
            threshold=agent.threshold if args.threshold is None else args.threshold,
            pt=tbm.pt if args.pt is None else args.pt,
            sl=tbm.sl if args.sl is None else args.sl,
            horizon=tbm.horizon if args.horizon is None else args.horizon,
        )
        if args.live:
            params.update(live=True, agent=agent)
        else:
            signal = agent.predict_proba(history)
        if period.index[0] < history.index[agent.warmup]:
            notes.append(f"note: the first {agent.warmup} bars of {data_name} are the agent's warm-up: no signal there")
    return dict(agent=agent, data_name=data_name, history=history, start=period.index[0], end=period.index[-1],
                params=params, signal=signal, notes=notes, atr_period=agent.tbm.atr_period if agent else 14)


_ROWS = [
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


def _cell(fmt, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return fmt.format(int(value) if "d}" in fmt else value)


def results_table(result, label: str) -> str:
    """Side-by-side table of the strategy and buy-and-hold over the same bars and costs."""
    bench = result.benchmark_stats or {}
    width = max(len(label), 12)
    lines = [f"{'':<24}{label:>{width}}  {'buy & hold':>12}"]
    for name, key, fmt in _ROWS:
        lines.append(f"{name:<24}{_cell(fmt, result.stats.get(key)):>{width}}  {_cell(fmt, bench.get(key)):>12}")
    if len(result.trades):
        counts = result.trades["exit_reason"].value_counts()
        lines.append("exits: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return "\n".join(lines)


def build_report(result, run: dict, args) -> dict:
    """Everything needed to audit the run: config, stats, trades, per-bar equity and signal."""
    sig = result.signal
    return jsonable({
        "config": {**result.config, "agent": args.agent if run["agent"] else None, "data": run["data_name"],
                   "engine": args.engine},
        "notes": run["notes"],
        "stats": result.stats,
        "benchmark_stats": result.benchmark_stats,
        "trades": result.trades.to_dict("records"),
        "bars": {
            "datetime": [str(t) for t in result.equity.index],
            "equity": result.equity.tolist(),
            "benchmark_equity": None if result.benchmark_equity is None else result.benchmark_equity.tolist(),
            "signal": None if sig is None else sig.reindex(result.equity.index).tolist(),
        },
    })


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        run = prepare_run(args)
        result = run_backtest(run["history"], args.strategy, cash=args.cash, commission=args.commission,
                              slippage=args.slippage, start=run["start"], end=run["end"], signal=run["signal"],
                              atr_period=run["atr_period"], engine=args.engine, **run["params"])
    except (UsageError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in run["notes"]:
        print(note, file=sys.stderr)

    label = Path(args.agent).stem if args.strategy == "agent" else args.strategy
    if not args.quiet:
        print(f"{label} on {run['data_name']}, {run['start'].date()} .. {run['end'].date()} "
              f"({len(result.equity)} bars), cash {args.cash:,.0f}, commission {args.commission:g}, "
              f"slippage {args.slippage:g}" + (f", threshold {run['params']['threshold']:.4f}" if run["params"] else ""))
    print(results_table(result, label))
    target = args.report
    try:
        if not args.no_plot:
            plot = target = Path(args.plot or f"reports/{label}_{Path(str(run['data_name'])).stem}.png")
            plot_backtest(result, plot, title=f"{label} on {run['data_name']}")
            if not args.quiet:
                print(f"plot: {plot}")
        if args.report:
            target = args.report
            write_atomic(args.report, json.dumps(build_report(result, run, args), indent=1, allow_nan=False).encode())
            if not args.quiet:
                print(f"report: {args.report}")
    except OSError as exc:
        print(f"error: cannot write {target}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
