"""Backtest an exported agent (or a baseline) out-of-sample, against buy-and-hold: the main command
(``python run_backtest.py`` in a checkout, ``tbm-backtest`` once installed).

    python run_backtest.py --agent models/agent1.onnx
    python run_backtest.py --strategy smacross --data nasdaq --fast 20 --slow 50
    python run_backtest.py --agent models/agent1.onnx --report reports/agent1.json --threshold 0.45
    python run_backtest.py --agent models/agent1.onnx --data us_daily --max-positions 3

For the agent, the period starts by default after the last bar the agent saw in training, so results
are out-of-sample; signals are computed once in batch over all bars up to the period end (the
warm-up uses history before the start; every value at bar t uses bars <= t only). Baselines
(buyhold, smacross) use no agent and default to the whole data.

``--data`` naming a universe (a bundled one, a directory, a glob or a comma list) runs a portfolio
backtest (``engine.portfolio.run_portfolio``): the agent's signals on every member, one broker and
shared cash, at most ``--max-positions`` positions at once, against an equal-weight buy-and-hold of
the same members.

Arguments are parsed before pandas, backtrader and onnxruntime are imported: ``--help`` and usage
errors answer at once.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import sys
from pathlib import Path

from datafeeds.cli import ArgumentParser
from datafeeds.errors import escape

DEFAULT_AGENT = "models/agent1.onnx"
MAX_POSITIONS = 100_000  # --max-positions at most: far above any portfolio, below what overflows the kernels
DEFAULT_DATA = "sp500"  # for baselines; the agent defaults to its own training data
STRATEGY_NAMES = ("agent", "buyhold", "smacross")  # strategies.STRATEGIES, spelt out for a fast --help (tested equal)
SMA_DEFAULTS = (10, 30)  # strategies.SmaCross's fast/slow windows (tested equal)


class UsageError(ValueError):
    """A bad option or input; reported as one line with exit status 2."""


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python run_backtest.py",
        description="Backtest a trained agent (or a baseline) through backtrader with costs and compare it "
        "with buy-and-hold over the same bars. The agent defaults to the shipped one, on its own dataset, "
        "over the period after its training data (out-of-sample); baselines need no agent. A universe as --data "
        "runs the agent on all its instruments with shared cash, against an equal-weight buy-and-hold.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("what to trade")
    g.add_argument("--strategy", default="agent", help=f"one of: {', '.join(STRATEGY_NAMES)}")
    g.add_argument("--agent", default=None, help=f"exported agent (.onnx) from python -m agents.train, for "
                   f"--strategy agent (None = {DEFAULT_AGENT}); baselines take none")
    g.add_argument("--data", default=None, help=f"sample name or CSV/Parquet path; a universe (a bundled one such as "
                   f"us_daily, a directory, a glob or a comma list) runs a portfolio backtest of the agent "
                   f"(None = the agent's dataset; {DEFAULT_DATA} for baselines)")
    g.add_argument("--list-samples", action="store_true", help="list the bundled data samples and exit")
    g.add_argument("--start", default=None, help="first bar of the period, ISO date (None = after the agent's "
                   "training data; the first bar for baselines)")
    g.add_argument("--end", default=None, help="last bar of the period, ISO date (None = the end of the data)")
    g = p.add_argument_group("account and costs")
    g.add_argument("--cash", type=float, default=100_000.0, help="starting cash")
    g.add_argument("--size-frac", type=float, default=None, help="fraction of equity committed per entry, (0, 1] "
                   "(None = 1 for one instrument; equity / --max-positions per entry for a universe, at most "
                   "the free cash)")
    g.add_argument("--commission", type=float, default=0.0005, help="fraction of traded value per side")
    g.add_argument("--slippage", type=float, default=0.0, help="fraction of price, against us on every fill")
    g.add_argument("--risk-free", type=float, default=0.0,
                   help="annual risk-free rate for Sharpe and Sortino, e.g. 0.02")
    g = p.add_argument_group("agent strategy")
    g.add_argument("--threshold", type=float, default=None, help="enter when probability >= this (None = the agent's)")
    g.add_argument("--pt", type=float, default=None, help="take-profit in ATRs (None = the agent's TBM setting)")
    g.add_argument("--sl", type=float, default=None, help="stop-loss in ATRs (None = the agent's TBM setting)")
    g.add_argument("--horizon", type=int, default=None, help="time exit in bars (None = the agent's TBM setting)")
    g.add_argument("--live", action="store_true",
                   help="stream bars through the agent one at a time (slower; same trades)")
    g.add_argument("--any-frequency", action="store_true", help="run an agent on bars of another frequency than it "
                   "was trained on (refused otherwise: its features and barriers count bars)")
    g.add_argument("--engine", default="backtrader", choices=["backtrader", "fast"],
                   help="backtrader (the reference) or the parity-tested numba simulator (agent strategy only)")
    g = p.add_argument_group("portfolio (--data a universe)")
    g.add_argument("--max-positions", type=int, default=None, metavar="K",
                   help="at most K positions open at once across the universe; each entry commits equity / K "
                   "(or --size-frac of equity) (None = the number of instruments traded: a slot each)")
    g = p.add_argument_group("smacross strategy")
    g.add_argument("--fast", type=int, default=None, help=f"fast SMA window in bars (None = {SMA_DEFAULTS[0]})")
    g.add_argument("--slow", type=int, default=None, help=f"slow SMA window in bars (None = {SMA_DEFAULTS[1]})")
    g = p.add_argument_group("output")
    g.add_argument("--plot", default=None, help="picture PNG (None = reports/<agent or strategy>_<data>.png)")
    g.add_argument("--no-plot", action="store_true", help="do not draw the PNG")
    g.add_argument("--report", default=None, help="also write a JSON report: config, stats, returns by year and "
                   "month, trades, equity, signal (a universe: also the contribution, positions and signal of each "
                   "instrument)")
    g.add_argument("--trades", default=None, help="also write the trades as CSV to this path")
    g.add_argument("--quiet", action="store_true", help="print only the results table")
    return p


def _check_options(args) -> None:
    if args.strategy not in STRATEGY_NAMES:
        close = difflib.get_close_matches(args.strategy, STRATEGY_NAMES, n=1)
        hint = f" did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"--strategy: unknown strategy {args.strategy!r}:{hint} known strategies: "
                         f"{', '.join(sorted(STRATEGY_NAMES))}")
    from labeling.tbm import MAX_BARS  # the labels' own bound on a horizon, in bars

    fin = math.isfinite
    checks = [
        ("--cash", args.cash, fin(args.cash) and args.cash > 0, "a positive amount"),
        ("--size-frac", args.size_frac, args.size_frac is None or 0 < args.size_frac <= 1,
         "a fraction in (0, 1] (no leverage)"),
        ("--max-positions", args.max_positions, args.max_positions is None or 1 <= args.max_positions <= MAX_POSITIONS,
         f"a whole number of positions in 1..{MAX_POSITIONS:,}"),
        ("--commission", args.commission, 0 <= args.commission < 1, "a fraction in [0, 1)"),
        ("--slippage", args.slippage, 0 <= args.slippage < 1, "a fraction in [0, 1)"),
        ("--risk-free", args.risk_free, -1 < args.risk_free < 1, "an annual rate in (-1, 1), e.g. 0.02 for 2%"),
        ("--threshold", args.threshold, args.threshold is None or 0 <= args.threshold <= 1, "a probability in [0, 1]"),
        ("--pt", args.pt, args.pt is None or (args.pt > 0 and fin(args.pt)), "a positive number of ATRs"),
        ("--sl", args.sl, args.sl is None or (args.sl > 0 and fin(args.sl)), "a positive number of ATRs"),
        ("--horizon", args.horizon, args.horizon is None or 1 <= args.horizon <= MAX_BARS,
         f"a whole number of bars in 1..{MAX_BARS:,}"),
        ("--fast", args.fast, args.fast is None or 1 <= args.fast <= MAX_BARS,
         f"a whole number of bars in 1..{MAX_BARS:,}"),
        ("--slow", args.slow, args.slow is None or 2 <= args.slow <= MAX_BARS,
         f"a whole number of bars in 2..{MAX_BARS:,}"),
    ]
    for name, value, ok, what in checks:
        if not ok:
            raise UsageError(f"{name} {value}: must be {what}")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise UsageError(f"--plot {args.plot}: must be a .png path")
    if args.trades and not args.trades.lower().endswith(".csv"):
        raise UsageError(f"--trades {args.trades}: must be a .csv path")
    from datafeeds.atomic import refusal

    for option, path in (("--report", args.report), ("--trades", args.trades), ("--plot", args.plot)):
        problem = path and refusal(path, streams=option != "--plot")
        if problem:  # found now, not after the backtest it would lose
            raise UsageError(f"{option} {path}: {problem}")
    if args.engine == "fast" and args.strategy != "agent":
        raise UsageError("--engine fast simulates the agent strategy only; use --engine backtrader for baselines")
    if args.live and args.strategy != "agent":
        raise UsageError("--live streams bars through the agent; it needs --strategy agent")
    if args.live and args.engine == "fast":
        raise UsageError("--live streams bars through backtrader; drop --engine fast")
    if args.strategy != "agent":
        given = [name for name in ("agent", "threshold", "pt", "sl", "horizon") if getattr(args, name) is not None]
        if given:
            raise UsageError(f"--{given[0]} sets the agent strategy; --strategy {args.strategy} does not use it "
                             "(baselines trade without an agent: choose their period with --start/--end)")
    if args.strategy != "agent" and args.data is not None:
        from datafeeds import is_universe  # light: no pandas

        if is_universe(args.data):
            raise UsageError(f"--strategy {args.strategy} trades one instrument; --data {args.data} is a universe: "
                             "a portfolio backtest needs --strategy agent (or pass one file or sample)")
    if args.strategy != "smacross":
        given = [name for name in ("fast", "slow") if getattr(args, name) is not None]
        if given:
            raise UsageError(f"--{given[0]} sets the smacross strategy; --strategy {args.strategy} does not use it")
    else:
        fast, slow = args.fast or SMA_DEFAULTS[0], args.slow or SMA_DEFAULTS[1]
        if fast >= slow:
            raise UsageError(f"--fast {fast} must be shorter than --slow {slow}")


def _load_agent(path: str):
    from agents import AgentFileError, OnnxAgent

    try:
        return OnnxAgent.load(path)
    except AgentFileError as exc:
        raise UsageError(f"--agent: {exc}") from None


def _signal(agent, history):
    """The agent's probabilities over ``history``; a model that fails to run is one line (exit 2)."""
    from agents import AgentFileError

    try:
        return agent.predict_proba(history)
    except AgentFileError as exc:
        raise UsageError(f"--agent: {exc}") from None


def _timestamp(value, option):
    from datafeeds import parse_date

    if value is None:
        return None
    try:
        return parse_date(value)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _card_data(agent) -> str:
    """The agent's own dataset as the default --data: only a bundled sample or universe name. A card is
    data inside a file anyone can edit; a path in it would make us read whatever it names."""
    from datafeeds import list_samples, list_universes

    name = agent.meta["dataset"]["name"]
    bundled = set(list_samples()) | set(list_universes())
    if all(part.strip() in bundled for part in str(name).split(",")):  # a name, or a comma list of names
        return name
    raise UsageError(f"the agent was trained on {name!r}, not a bundled sample: pass that data with --data "
                     "(a path in an agent file is never read by default)")


def prepare_run(args) -> dict:
    """Resolve data, period, agent signals and strategy parameters (options already checked by
    ``_check_options``); raise UsageError on bad input."""
    from datafeeds import DataError, is_universe, load_ohlcv

    agent = _load_agent(args.agent or DEFAULT_AGENT) if args.strategy == "agent" else None
    data_name = args.data or (_card_data(agent) if agent else DEFAULT_DATA)
    if is_universe(data_name):
        if agent is None:
            raise UsageError(f"--data {data_name} is a universe; --strategy {args.strategy} trades one instrument: "
                             "a portfolio backtest needs --strategy agent")
        return prepare_portfolio(args, agent, data_name)
    if args.max_positions is not None:
        raise UsageError(f"--max-positions sets a portfolio backtest; --data {data_name} is one instrument "
                         "(pass a universe: a bundled one such as us_daily, a directory, a glob or a comma list)")
    try:
        df = load_ohlcv(data_name)
    except DataError as exc:
        raise UsageError(f"--data: {exc}") from None
    start, end = _timestamp(args.start, "--start"), _timestamp(args.end, "--end")
    notes = []
    if agent is not None:
        # out-of-sample by date, whatever the data: markets move together, so an agent trained on one
        # index up to 2014 has seen the 2014 regime of every other
        first_seen = _agent_date(agent, "first_bar")
        last_seen = _agent_date(agent, "last_bar_used")
        if start is None:
            after = df.index[df.index > last_seen]
            if len(after) == 0:
                raise UsageError(f"{data_name} ends {df.index[-1].date()}, before the agent's training data does "
                                 f"({last_seen.date()}); pass --start to backtest in-sample or use newer data")
            start = after[0]
        period_end = min(end, df.index[-1]) if end is not None else df.index[-1]
        if start <= last_seen and period_end >= first_seen:
            # a universe agent saw all its instruments up to the same date: any data overlapping it is in-sample
            members = {v["sha256"]: sym for sym, v in (agent.meta["dataset"].get("universe") or {}).items()}
            same = (data_name == agent.meta["dataset"]["name"]
                    or df.attrs.get("sha256") == agent.meta["dataset"]["sha256"]
                    or df.attrs.get("sha256") in members)
            on = (agent.meta["dataset"]["name"] if not members
                  else f"{len(members)} instruments ({', '.join(members.values())})")
            notes.append(f"warning: the period overlaps the agent's training period ({first_seen.date()} .. "
                         f"{last_seen.date()}{'' if same and not members else ', on ' + on}): results are IN-SAMPLE")
    history = df.loc[:end] if end is not None else df
    period = history.loc[start:] if start is not None else history
    if len(period) < 2:
        raise UsageError(f"--start/--end select {len(period)} bar(s) of {data_name} "
                         f"({df.index[0].date()}..{df.index[-1].date()}); need at least 2")

    params = {"size_frac": 1.0 if args.size_frac is None else args.size_frac}
    signal = None
    if args.strategy == "smacross":
        params.update(fast=args.fast or SMA_DEFAULTS[0], slow=args.slow or SMA_DEFAULTS[1])
        if len(period) <= params["slow"]:
            raise UsageError(f"--slow {params['slow']} needs more bars than the period's {len(period)}")
    if args.strategy == "agent":
        try:
            agent.check_columns(df)
        except ValueError as exc:
            raise UsageError(f"--data {data_name}: {exc}") from None
        _check_frequency(args, agent, df, data_name)
        if len(history) <= agent.warmup:
            raise UsageError(f"{data_name} up to {history.index[-1].date()} has {len(history)} bars; "
                             f"the agent needs {agent.warmup} bars of warm-up before its first signal")
        tbm = agent.tbm
        params.update(
            threshold=agent.threshold if args.threshold is None else args.threshold,
            pt=tbm.pt if args.pt is None else args.pt,
            sl=tbm.sl if args.sl is None else args.sl,
            horizon=tbm.horizon if args.horizon is None else args.horizon,
        )
        if args.live:
            try:
                agent.select_symbol_for(df)  # an agent normalised per symbol streams with this file's statistics
            except ValueError as exc:
                raise UsageError(f"--data {data_name}: {exc}") from None
            params.update(live=True, agent=agent)
        else:
            signal = _signal(agent, history)
        if period.index[0] < history.index[agent.warmup]:
            notes.append(f"note: the first {agent.warmup} bars of {data_name} are the agent's warm-up: no signal there")
    return dict(kind="single", agent=agent, data_name=data_name, history=history, start=period.index[0],
                end=period.index[-1], params=params, signal=signal, notes=notes,
                atr_period=agent.tbm.atr_period if agent else 14)


def _check_frequency(args, agent, df, data_name: str) -> None:
    """Refuse bars of another frequency than the agent's training bars (unless --any-frequency): its
    features, seq_len and barriers count bars, so they mean other things on them."""
    from datafeeds.frequency import bar_seconds, describe_spacing, same_frequency

    trained, here = agent.meta["dataset"].get("bar_seconds"), bar_seconds(df.index)
    if args.any_frequency or trained is None or here is None or same_frequency(trained, here):
        return
    raise UsageError(f"--data {data_name} has a bar every {describe_spacing(here)} but agent {agent.path} was trained "
                     f"on a bar every {describe_spacing(trained)}: its windows and barriers would span other periods; "
                     f"backtest it on data with a bar every {describe_spacing(trained)}, "
                     "or pass --any-frequency to run it anyway")


def _agent_date(agent, field: str):
    import pandas as pd

    return pd.Timestamp(agent.meta["dataset"][field])


def _training_data(agent) -> str:
    """What the agent was trained on, for the IN-SAMPLE warning: its dataset, or its universe's members."""
    members = sorted(agent.meta["dataset"].get("universe") or {})
    return f"{len(members)} instruments ({', '.join(members)})" if members else agent.meta["dataset"]["name"]


def _names(symbols) -> str:
    return ", ".join(symbols)


def prepare_portfolio(args, agent, data_name: str) -> dict:
    """``prepare_run`` for a universe: every member's history and signal, the common period and the
    portfolio parameters. Members with fewer than 2 bars in the period (or too few for the agent's
    warm-up) are left out with a note; an agent normalised per symbol refuses non-members."""
    from datafeeds import DataError, load_universe

    if args.live:
        raise UsageError(f"--live streams one instrument through the agent; --data {data_name} is a universe "
                         "(drop --live: the portfolio uses the batch signals, which are the same)")
    try:
        frames = load_universe(data_name)
    except DataError as exc:
        raise UsageError(f"--data: {exc}") from None
    for sym, df in frames.items():
        try:
            agent.check_columns(df)
        except ValueError as exc:
            raise UsageError(f"--data {data_name}: {sym}: {exc}") from None
        _check_frequency(args, agent, df, f"{data_name}: {sym}")
    if agent.symbols is not None:
        # checked here, before any member is selected (a selected member would stand in for a stranger)
        known = {v["sha256"] for v in agent.meta["normalisation"]["per_symbol"].values()}
        strangers = [sym for sym, df in frames.items() if df.attrs.get("sha256") not in known]
        if strangers:
            raise UsageError(f"--data {data_name}: agent {agent.path} was trained with per-symbol normalisation on "
                             f"{_names(agent.symbols)} and trades only those, not {_names(strangers)} (pass its "
                             "members' files, or train with --normalise pooled to trade other instruments)")
    start, end = _timestamp(args.start, "--start"), _timestamp(args.end, "--end")
    first_seen, last_seen = _agent_date(agent, "first_bar"), _agent_date(agent, "last_bar_used")
    if start is None:
        # out-of-sample by date for every member: the first bar of any member after the training data
        after = [df.index[df.index > last_seen][0] for df in frames.values() if df.index[-1] > last_seen]
        if not after:
            last = max(df.index[-1] for df in frames.values())
            raise UsageError(f"{data_name} ends {last.date()}, before the agent's training data does "
                             f"({last_seen.date()}); pass --start to backtest in-sample or use newer data")
        start = min(after)
    histories, outside, short = {}, {}, {}  # traded; left out: no period, too short for the warm-up
    for sym, df in sorted(frames.items()):  # symbol order, as the portfolio's tables
        history = df.loc[:end] if end is not None else df
        if len(history.loc[start:]) < 2:
            outside[sym] = f"{sym} ({df.index[0].date()} .. {df.index[-1].date()})"
        elif len(history) <= agent.warmup:
            short[sym] = f"{sym} ({len(history)} bars)"
        else:
            histories[sym] = history
    if not histories:
        spans = _names(f"{sym} {df.index[0].date()}..{df.index[-1].date()}" for sym, df in frames.items())
        raise UsageError(f"--start/--end select fewer than 2 bars of every instrument of {data_name} ({spans}) "
                         f"or too few for the agent's {agent.warmup} bars of warm-up; need at least 2")
    periods = {sym: h.loc[start:] for sym, h in histories.items()}
    period_start = min(p.index[0] for p in periods.values())
    period_end = max(p.index[-1] for p in periods.values())
    notes = []
    if outside:
        notes.append(f"note: left out of the portfolio and its benchmark, fewer than 2 bars in {period_start.date()} "
                     f".. {period_end.date()}: {_names(outside.values())}")
    if short:
        notes.append(f"note: left out of the portfolio and its benchmark, fewer bars than the agent's "
                     f"{agent.warmup} of warm-up: {_names(short.values())}")
    # markets move together: any member's bars inside the training dates are in-sample
    overlap = [sym for sym, p in periods.items() if p.index[0] <= last_seen and p.index[-1] >= first_seen]
    if overlap:
        notes.append(f"warning: for {_names(overlap)} ({len(overlap)} of {len(periods)} instruments) the period "
                     f"overlaps the agent's training period ({first_seen.date()} .. {last_seen.date()}, on "
                     f"{_training_data(agent)}): results are IN-SAMPLE")
    warm = [sym for sym, h in histories.items() if periods[sym].index[0] < h.index[agent.warmup]]
    if warm:
        notes.append(f"note: the first {agent.warmup} bars of {_names(warm)} are the agent's warm-up: no signal there")
    signals = {}
    for sym, history in histories.items():
        agent.select_symbol_for(history)  # per-symbol agents: this member's statistics (a no-op otherwise)
        signals[sym] = _signal(agent, history)
    n = len(histories)
    max_positions = n if args.max_positions is None else args.max_positions
    if args.max_positions is not None and max_positions > n and args.size_frac is None:
        notes.append(f"note: --max-positions {max_positions} is more than the {n} instruments traded: at most {n} "
                     f"positions at once, each equity / {max_positions}")
    tbm = agent.tbm
    params = dict(
        threshold=agent.threshold if args.threshold is None else args.threshold,
        pt=tbm.pt if args.pt is None else args.pt,
        sl=tbm.sl if args.sl is None else args.sl,
        horizon=tbm.horizon if args.horizon is None else args.horizon,
        max_positions=max_positions,
        size_frac=args.size_frac,
    )
    return dict(kind="portfolio", agent=agent, data_name=data_name, frames=histories, signals=signals,
                start=period_start, end=period_end, params=params, notes=notes, atr_period=tbm.atr_period,
                members=list(frames), left_out=sorted([*outside, *short]))


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


# a portfolio's stats also count the signals it could not take
_PORTFOLIO_ROWS = [
    ("skipped signals", "skipped_signals", "{:d}"),
    ("rejected entries", "rejected_entries", "{:d}"),
]
BENCH_LABEL = "buy & hold"
PORTFOLIO_BENCH_LABEL = "equal weight"


# rows measured on trades: n/a for a benchmark whose stats were computed without any (the portfolio's)
_TRADE_KEYS = ("n_trades", "win_rate", "profit_factor", "avg_trade_return", "exposure")


def results_table(result, label: str, bench_label: str = BENCH_LABEL, extra_rows=()) -> str:
    """Side-by-side table of the strategy and its benchmark (buy-and-hold) over the same bars and costs;
    ``extra_rows`` (name, stats key, format) follow the usual ones."""
    bench = result.benchmark_stats or {}
    if bench_label == PORTFOLIO_BENCH_LABEL and not bench.get("n_trades"):  # its stats were computed without trades
        bench = {k: v for k, v in bench.items() if k not in _TRADE_KEYS}
    width = max(len(label), 12)
    lines = [f"{'':<24}{label:>{width}}  {bench_label:>12}"]
    for name, key, fmt in [*_ROWS, *extra_rows]:
        lines.append(f"{name:<24}{_cell(fmt, result.stats.get(key)):>{width}}  {_cell(fmt, bench.get(key)):>12}")
    if len(result.trades):
        counts = result.trades["exit_reason"].value_counts()
        lines.append("exits: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return "\n".join(lines)


def returns_by_period(result) -> dict:
    """Compounded returns per calendar year and month, strategy beside buy-and-hold (JSON-ready)."""
    from engine import period_returns

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


def build_portfolio_report(result, run: dict, args, returns: dict, contribution: list[dict]) -> dict:
    """A portfolio run for audit: config, stats beside the benchmark's, contribution per instrument, returns
    by period, trades (with their symbol), and per time the equity, benchmark, units held and signals."""
    from engine.jsonable import jsonable

    times = result.equity.index
    return jsonable({
        "config": {**result.config, "agent": run["agent"].path, "universe": run["data_name"],
                   "members": run["members"], "left_out": run["left_out"]},
        "notes": run["notes"],
        "stats": result.stats,
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
            "signals": {sym: run["signals"][sym].reindex(times).tolist() for sym in result.positions.columns},
        },
    })


def _file_label(text: str) -> str:
    """``text`` made safe for a file name: runs of characters other than letters, digits and ``._+-`` become ``_``."""
    import re

    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_.") or "data"


def universe_label(data_name: str, symbols: list[str]) -> str:
    """A short name for a universe in titles and file names: a bundled universe's or a directory's own name,
    else its members (up to 4) joined by '+', else '<n>_instruments'."""
    from datafeeds import list_universes

    if data_name in list_universes():
        return data_name
    path = Path(data_name).expanduser()
    if path.is_dir():
        return _file_label(path.resolve().name)
    return _file_label("+".join(symbols)) if len(symbols) <= 4 else f"{len(symbols)}_instruments"


def build_report(result, run: dict, args, returns: dict) -> dict:
    """Everything needed to audit the run: config, stats, returns by period, trades, per-bar equity and signal."""
    from engine.jsonable import jsonable

    sig = result.signal
    return jsonable({
        "config": {**result.config, "agent": run["agent"].path if run["agent"] else None,
                   "data": run["data_name"], "engine": args.engine},
        "notes": run["notes"],
        "stats": result.stats,
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


def main(argv: list[str] | None = None) -> int:
    """The command: parse, run, print; the exit status (2: a usage or input error)."""
    try:
        return _main(argv)
    except BrokenPipeError:  # the output was piped into a command that stopped reading (`| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.list_samples:
        from datafeeds import samples_table

        print(samples_table())
        return 0
    try:
        _check_options(args)
    except UsageError as exc:
        print(f"error: {escape(str(exc))}", file=sys.stderr)
        return 2

    from datafeeds import DataError
    from engine import plot_backtest, run_backtest

    try:
        run = prepare_run(args)
        if run["kind"] == "portfolio":
            return _main_portfolio(args, run)
        result = run_backtest(run["history"], args.strategy, cash=args.cash, commission=args.commission,
                              slippage=args.slippage, start=run["start"], end=run["end"], signal=run["signal"],
                              atr_period=run["atr_period"], engine=args.engine, risk_free=args.risk_free,
                              **run["params"])
    except (UsageError, DataError, ValueError) as exc:
        print(f"error: {escape(str(exc))}", file=sys.stderr)
        return 2
    for note in run["notes"]:
        print(escape(note), file=sys.stderr)

    label = Path(run["agent"].path).stem if run["agent"] else args.strategy
    data_label = escape(Path(str(run["data_name"])).name)
    returns = returns_by_period(result)
    if not args.quiet:
        print(f"{label} on {data_label}, {run['start'].date()} .. {run['end'].date()} "
              f"({len(result.equity)} bars), cash {args.cash:,.0f}, commission {args.commission:g}, "
              f"slippage {args.slippage:g}"
              + (f", size {run['params']['size_frac']:g} of equity" if run["params"]["size_frac"] != 1 else "")
              + (f", threshold {run['params']['threshold']:.4f}" if "threshold" in run["params"] else "")
              + (f", SMA {run['params']['fast']}/{run['params']['slow']}" if "fast" in run["params"] else "")
              + (f", risk-free {args.risk_free:.2%}" if args.risk_free else ""))
    print(results_table(result, label))
    if not args.quiet:
        print("\n" + returns_tables(returns, label))
    plot = Path(args.plot or default_plot(label, run["data_name"], run["history"].attrs.get("sha256")))
    return _write_outputs(args, result.trades, plot, lambda path: plot_backtest(result, path, label=label),
                          lambda: build_report(result, run, args, returns))


def default_plot(label: str, data_name: str, sha256: str | None) -> Path:
    """reports/<label>_<data>.png. Data given as a path (not a bundled name) adds the first 8 hex digits of its
    sha256, so data/sp500.csv and the bundled sp500 (or two different files named sp500.csv) keep their own pictures."""
    from datafeeds import list_samples

    name = str(data_name)
    stem = _file_label(Path(name.rstrip("/")).name.split(".")[0])
    bundled = name in list_samples()
    return Path("reports") / (f"{label}_{stem}.png" if bundled or not sha256 else f"{label}_{stem}_{sha256[:8]}.png")


def _write_outputs(args, trades, plot: Path, draw, report) -> int:
    """Write the picture (``draw(path)``), the JSON report (``report()``) and the trades CSV the options ask
    for, each atomically; a path that cannot be written is one line and exit status 2."""
    from datafeeds import write_atomic

    target = None
    try:
        if not args.no_plot:
            target = plot
            draw(plot)
            if not args.quiet:
                print(f"plot: {escape(str(plot))}")
        if args.report:
            target = args.report
            write_atomic(args.report, json.dumps(report(), indent=1, allow_nan=False).encode())
            if not args.quiet:
                print(f"report: {escape(str(args.report))}")
        if args.trades:
            target = args.trades
            write_atomic(args.trades, trades.to_csv(index=False).encode())
            if not args.quiet:
                print(f"trades: {escape(str(args.trades))} ({len(trades)} rows)")
    except OSError as exc:
        print(f"error: cannot write {escape(str(target))}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def _main_portfolio(args, run: dict) -> int:
    """The portfolio backtest of ``run`` (from ``prepare_portfolio``): run, print, write; exit status."""
    from datafeeds import DataError
    from engine.plotting import plot_portfolio
    from engine.portfolio import run_portfolio

    try:
        result = run_portfolio(run["frames"], run["signals"], cash=args.cash, commission=args.commission,
                               slippage=args.slippage, start=run["start"], end=run["end"],
                               atr_period=run["atr_period"], risk_free=args.risk_free, engine=args.engine,
                               **run["params"])
    except (UsageError, DataError, ValueError) as exc:
        print(f"error: {escape(str(exc))}", file=sys.stderr)
        return 2
    for note in run["notes"]:
        print(escape(note), file=sys.stderr)

    label = Path(run["agent"].path).stem
    data_label = escape(universe_label(run["data_name"], run["members"]))
    symbols = result.config["symbols"]
    params = run["params"]
    returns = returns_by_period(result)
    contribution = contribution_rows(result)
    if not args.quiet:
        print(f"{label} on {data_label}: {len(symbols)} instruments ({_names(symbols)}), {run['start'].date()} .. "
              f"{run['end'].date()} ({len(result.equity)} times), at most {params['max_positions']} positions, "
              f"{result.config['sizing']}, cash {args.cash:,.0f}, commission {args.commission:g}, "
              f"slippage {args.slippage:g}, threshold {params['threshold']:.4f}"
              + (f", risk-free {args.risk_free:.2%}" if args.risk_free else ""))
    print(results_table(result, label, PORTFOLIO_BENCH_LABEL, _PORTFOLIO_ROWS))
    if not args.quiet:
        print(benchmark_line(result))
        print("\n" + contribution_table(contribution))
        print("\n" + returns_tables(returns, label, PORTFOLIO_BENCH_LABEL))
    plot = Path(args.plot or f"reports/{label}_{data_label}.png")
    traded = list(result.positions.columns)  # the title names these, never a member left out
    title = f"{label} on {universe_label(run['data_name'], traded)}" + (
        f" ({len(run['left_out'])} of {len(run['members'])} instruments left out)" if run["left_out"] else "")
    return _write_outputs(args, result.trades, plot, lambda path: plot_portfolio(result, path, title, label=label),
                          lambda: build_portfolio_report(result, run, args, returns, contribution))


if __name__ == "__main__":
    sys.exit(main())
