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

This module is the command line: parser, option checks, orchestration, printing. Which bars are traded
(the out-of-sample rules) is :mod:`engine.plan`; the tables, the JSON report and the trades CSV are
:mod:`engine.report`. Arguments are parsed before pandas, backtrader and onnxruntime are imported:
``--help`` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from datafeeds.cli import ArgumentParser, UsageError, run_command
from datafeeds.errors import did_you_mean, escape
from engine.config import ENGINES, RunConfig
from labeling.rules import MAX_BARS, SIZINGS, BarrierRules, Costs

if TYPE_CHECKING:
    import pandas as pd

    from agents import OnnxAgent
    from engine.plan import Plan, PortfolioPlan

DEFAULT_AGENT = "models/agent1.onnx"
MAX_POSITIONS = 100_000  # --max-positions at most: far above any portfolio, below what overflows the kernels
DEFAULT_DATA = "sp500"  # for baselines; the agent defaults to its own training data
STRATEGY_NAMES = ("agent", "buyhold", "smacross")  # strategies.STRATEGIES, spelt out for a fast --help (tested equal)
SMA_DEFAULTS = (10, 30)  # strategies.SmaCross's fast/slow windows (tested equal)


def build_parser() -> argparse.ArgumentParser:
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
    g.add_argument("--cash", type=float, default=RunConfig.cash, help="starting cash")
    g.add_argument("--size-frac", type=float, default=None, help="fraction of equity committed per entry, (0, 1] "
                   "(None = 1 for one instrument; equity / --max-positions per entry for a universe, at most "
                   "the free cash)")
    g.add_argument("--commission", type=float, default=Costs.commission, help="fraction of traded value per side")
    g.add_argument("--slippage", type=float, default=Costs.slippage, help="fraction of price, against us on every fill")
    g.add_argument("--risk-free", type=float, default=RunConfig.risk_free,
                   help="annual risk-free rate for Sharpe and Sortino, e.g. 0.02")
    g.add_argument("--margin", type=float, default=RunConfig.margin, help="cash a position ties up per unit of its "
                   "value, (0, 10]: 1 = fully cash-backed, 0.5 = twice the units (no margin calls)")
    g.add_argument("--borrow", type=float, default=Costs.borrow, help="annual borrow rate on a short's entry value, "
                   "charged per calendar day held, e.g. 0.02")
    g = p.add_argument_group("agent strategy")
    g.add_argument("--threshold", type=float, default=None, help="enter when probability >= this (None = the agent's)")
    g.add_argument("--pt", type=float, default=None, help="take-profit in ATRs (None = the agent's TBM setting)")
    g.add_argument("--sl", type=float, default=None, help="stop-loss in ATRs (None = the agent's TBM setting)")
    g.add_argument("--horizon", type=int, default=None, help="time exit in bars (None = the agent's TBM setting)")
    g.add_argument("--side", default=None, metavar="COLUMN", help="trade each bar on the side in this column of the "
                   "data: +1 long, -1 short, 0 or empty no bet (your own primary model's; None = long, or the sides "
                   "of the primary rule the agent was trained on)")
    g.add_argument("--sizing", default=None, choices=SIZINGS, help="fixed: every entry --size-frac of equity; "
                   "probability: that times AFML's bet size of the probability, averaged over the last horizon's "
                   "bets (None = probability for an agent trained on a primary rule's meta-labels, else the agent's)")
    g.add_argument("--size-step", type=float, default=None, help="round probability sizes to multiples of this, "
                   "[0, 1) (None = the agent's, 0 = not rounded)")
    g.add_argument("--live", action="store_true",
                   help="stream bars through the agent one at a time (slower; same trades)")
    g.add_argument("--any-frequency", action="store_true", help="run an agent on bars of another frequency than it "
                   "was trained on (refused otherwise: its features and barriers count bars)")
    g.add_argument("--engine", default=RunConfig.engine, choices=ENGINES,
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


def check_options(args) -> None:
    """Refuse a bad option or combination of options (UsageError), before any data is read."""
    if args.strategy not in STRATEGY_NAMES:
        hint = did_you_mean(args.strategy, STRATEGY_NAMES)
        raise UsageError(f"--strategy: unknown strategy {args.strategy!r}:{hint} known strategies: "
                         f"{', '.join(sorted(STRATEGY_NAMES))}")
    _check_settings(args)  # the money, costs and trading rules: checked by their dataclasses
    checks = [
        ("--max-positions", args.max_positions, args.max_positions is None or 1 <= args.max_positions <= MAX_POSITIONS,
         f"a whole number of positions in 1..{MAX_POSITIONS:,}"),
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
        given = [name for name in ("agent", "threshold", "pt", "sl", "horizon", "side", "sizing", "size_step")
                 if getattr(args, name) is not None]
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


# option -> (the dataclass that checks it, its field); None values are the agent's own and checked in its card
_SETTINGS = {"--cash": (RunConfig, "cash"), "--risk-free": (RunConfig, "risk_free"), "--size-frac": (BarrierRules,
             "size_frac"), "--commission": (Costs, "commission"), "--slippage": (Costs, "slippage"),
             "--threshold": (BarrierRules, "threshold"), "--pt": (BarrierRules, "pt"), "--sl": (BarrierRules, "sl"),
             "--horizon": (BarrierRules, "horizon"), "--margin": (RunConfig, "margin"), "--borrow": (Costs, "borrow"),
             "--size-step": (BarrierRules, "size_step")}


def _check_settings(args) -> None:
    """Each of the options behind RunConfig, Costs and BarrierRules through its dataclass's own check: one line
    naming the option and its value."""
    for option, (cls, field) in _SETTINGS.items():
        value = getattr(args, field)
        if value is None:
            continue
        try:
            cls(**{field: value})
        except ValueError as exc:
            why = str(exc).removeprefix(f"{field} ")
            raise UsageError(f"{option} {value}: {why}") from None


def costs_and_run(args) -> tuple[Costs, RunConfig]:
    """The options' costs, and the run's money, measurement and engine (the period comes from the plan)."""
    return (Costs(commission=args.commission, slippage=args.slippage, borrow=args.borrow),
            RunConfig(cash=args.cash, risk_free=args.risk_free, engine=args.engine, margin=args.margin))


def main(argv: list[str] | None = None) -> int:
    """The command: parse, check, run, print; the exit status (2: a usage or input error)."""
    return run_command(_main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.list_samples:
        from datafeeds import samples_table

        print(samples_table())
        return 0
    check_options(args)

    try:
        run = prepare_run(args)
        result = _backtest(args, run)
    except ValueError as exc:  # the data's, the period's and the engine's refusals (DataError, PeriodError, ...)
        raise UsageError(str(exc)) from None
    for note in run.notes:
        print(escape(note), file=sys.stderr)
    if isinstance(run, PortfolioRun):
        return _print_portfolio(args, run, result)
    return _print_single(args, run, result)


def _backtest(args, run: SingleRun | PortfolioRun):
    """``run`` backtested with the options' money and costs: a BacktestResult, or a PortfolioResult."""
    from engine import run_backtest, run_portfolio

    costs, settings = costs_and_run(args)
    settings = settings.replace(start=run.plan.start, end=run.plan.end)
    if isinstance(run, PortfolioRun):
        return run_portfolio(run.frames, run.signals, sides=run.sides, rules=run.rules, costs=costs, run=settings,
                             max_positions=run.max_positions)
    return run_backtest(run.history, args.strategy, signal=run.signal, side=run.side, rules=run.rules, costs=costs,
                        run=settings, **run.params)


# ------------------------------------------------------------------------------------ options to a run
def _load_agent(path: str):
    from agents import AgentFileError, OnnxAgent

    try:
        agent = OnnxAgent.load(path)
    except AgentFileError as exc:
        raise UsageError(f"--agent: {exc}") from None
    return agent


def _primary(agent):
    """The primary rule an agent was trained on the meta-labels of (None: a plain agent), from its card: its
    probability then says whether that rule's bet pays, long or short, not whether to buy."""
    from labeling import parse_primary

    train_config = agent.meta.get("train_config") if agent else None
    spec = train_config.get("primary") if isinstance(train_config, dict) else None
    if not spec:
        return None
    try:
        return parse_primary(str(spec))
    except ValueError as exc:
        raise UsageError(f"--agent {agent.path}: its card's primary rule {escape(str(spec))!r}: {exc}") from None


def _bets(rule, history, signal, column=None, where=""):
    """(probability, sides) traded over ``history``: the agent's ``signal`` and a price rule's sides; a direction
    model traded both ways ("both") bets its own way at each bar; the sides of the data's ``column`` (--side); no
    rule: long everywhere (sides None)."""
    from labeling import BothRule, direction_bets, primary_side

    if column is not None:
        return signal, _side_column(history, column, where)
    if rule is None:
        return signal, None
    if isinstance(rule, BothRule):
        return direction_bets(signal)
    return signal, primary_side(history, rule)


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


def _side_column(history, column: str, where: str):
    """The bets of the data's ``column`` (--side): +1/-1 on the bars with one (0 or empty: none); anything else is
    one line naming the file and the first bad row."""
    import numpy as np
    import pandas as pd

    if column not in history.columns:
        extra = [str(c) for c in history.columns if c not in ("open", "high", "low", "close", "volume")]
        others = f"its other columns: {', '.join(extra)}" if extra else "it has only open, high, low, close, volume"
        raise UsageError(f"--side {column}: {where} has no column {column!r} ({others})")
    if history[column].dtype.kind not in "biuf":
        raise UsageError(f"--side {column}: {where}: the column holds text, not sides: use +1 (long), -1 (short), "
                         "0 or empty (no bet)")
    values = history[column].to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~(np.isnan(values) | np.isin(values, (1.0, -1.0, 0.0)))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise UsageError(f"--side {column}: {where}, row {history.index[k]}: {values[k]:g} is not a side; use +1 "
                         "(long), -1 (short), 0 or empty (no bet)")
    bet = np.isin(values, (1.0, -1.0))
    return pd.Series(values[bet].astype(np.int8), index=history.index[bet], name="side")


def trading_rules(args, agent, rule=None) -> BarrierRules:
    """The rules traded: the agent's own (its card's), each option given instead; a baseline's size only. ``rule``:
    the primary rule the agent was trained on (``_primary``), which sets the default sizing and refuses --side."""
    from labeling import BothRule

    if rule is not None and args.side is not None:
        spec = escape(str(agent.meta["train_config"]["primary"]))
        raise UsageError(f"--side {args.side}: the agent was trained on the bets of primary {spec!r}; its "
                         "probability is about those bets, not yours (drop --side)")
    given = {k: getattr(args, k) for k in ("threshold", "pt", "sl", "horizon", "size_frac", "sizing", "size_step")
             if getattr(args, k) is not None}
    if args.sizing is None and rule is not None:
        given["sizing"] = "probability"  # a meta-model's probability is a bet size (AFML 10.1)
    rules = (agent.rules if agent else BarrierRules()).replace(**given)
    if args.live and rules.sizing != "fixed":
        raise UsageError("--live streams bars one at a time; sizing by probability averages the bets of the last "
                         "horizon from batch signals: pass --sizing fixed, or drop --live")
    if args.live and isinstance(rule, BothRule):
        raise UsageError("--live streams bars one at a time; an agent traded both ways ('both') sides its bets from "
                         "batch signals: drop --live")
    return rules


@dataclass(frozen=True)
class SingleRun:
    """One instrument's backtest, ready to run: the agent (None for a baseline), the data up to the period's
    end (the warm-up included), the period, the trading rules, the strategy's other parameters (smacross's
    windows, a live agent) and the agent's signal (None: live)."""

    agent: OnnxAgent | None
    data_name: str
    history: pd.DataFrame
    plan: Plan
    rules: BarrierRules
    params: dict
    signal: pd.Series | None
    side: pd.Series | None = None  # the primary rule's sides (None: long)

    @property
    def notes(self) -> tuple[str, ...]:
        return self.plan.notes


@dataclass(frozen=True)
class PortfolioRun:
    """A universe's backtest, ready to run: each traded member's data up to the period's end and signal, the
    period, the portfolio's parameters and the notes for the user."""

    agent: OnnxAgent
    data_name: str
    frames: dict[str, pd.DataFrame]
    signals: dict[str, pd.Series]
    plan: PortfolioPlan
    rules: BarrierRules
    max_positions: int
    notes: tuple[str, ...]
    members: list[str]  # every member of the universe, traded or not
    sides: dict[str, pd.Series] | None = None  # per member, the primary rule's sides (None: long)


def prepare_run(args) -> SingleRun | PortfolioRun:
    """Resolve data, period (``engine.plan``), agent signals and strategy parameters (options already checked by
    ``check_options``); raise UsageError (or the plan's PeriodError) on bad input."""
    from datafeeds import DataError, is_universe, load_ohlcv
    from engine.plan import Training, plan_period, with_warmup

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
    plan = plan_period(df.index, data_name=data_name, start=start, end=end,
                       training=Training.from_card(agent.meta["dataset"]) if agent else None,
                       data_sha256=df.attrs.get("sha256"))
    history = df.loc[:end] if end is not None else df

    params = {}
    signal = None
    if args.strategy == "smacross":
        params.update(fast=args.fast or SMA_DEFAULTS[0], slow=args.slow or SMA_DEFAULTS[1])
        if plan.bars <= params["slow"]:
            raise UsageError(f"--slow {params['slow']} needs more bars than the period's {plan.bars}")
    if args.strategy == "agent":
        try:
            agent.check_columns(df)
        except ValueError as exc:
            raise UsageError(f"--data {data_name}: {exc}") from None
        _check_frequency(args, agent, df, data_name)
        plan = with_warmup(plan, df.index, agent.warmup, data_name=data_name)
        if args.live:
            try:
                agent.select_symbol_for(df)  # an agent normalised per symbol streams with this file's statistics
            except ValueError as exc:
                raise UsageError(f"--data {data_name}: {exc}") from None
            params.update(live=True, agent=agent)
        else:
            signal = _signal(agent, history)
    rule = _primary(agent)
    rules = trading_rules(args, agent, rule)
    signal, side = _bets(rule, history, signal, args.side, data_name)
    return SingleRun(agent=agent, data_name=data_name, history=history, plan=plan, rules=rules, params=params,
                     signal=signal, side=side)


def prepare_portfolio(args, agent, data_name: str) -> PortfolioRun:
    """``prepare_run`` for a universe: every member's history and signal, the common period and the
    portfolio parameters. Members with fewer than 2 bars in the period (or too few for the agent's
    warm-up) are left out with a note; an agent normalised per symbol refuses non-members."""
    from datafeeds import DataError, load_universe
    from engine.plan import Training, plan_portfolio

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
                             f"{', '.join(agent.symbols)} and trades only those, not {', '.join(strangers)} (pass "
                             "its members' files, or train with --normalise pooled to trade other instruments)")
    start, end = _timestamp(args.start, "--start"), _timestamp(args.end, "--end")
    plan = plan_portfolio({sym: df.index for sym, df in frames.items()}, data_name=data_name,
                          training=Training.from_card(agent.meta["dataset"]), warmup=agent.warmup, start=start, end=end)
    histories = {sym: frames[sym].loc[:end] if end is not None else frames[sym] for sym in plan.symbols}
    signals = {}
    for sym, history in histories.items():
        agent.select_symbol_for(history)  # per-symbol agents: this member's statistics (a no-op otherwise)
        signals[sym] = _signal(agent, history)
    notes = list(plan.notes)
    n = len(histories)
    max_positions = n if args.max_positions is None else args.max_positions
    if args.max_positions is not None and max_positions > n and args.size_frac is None:
        notes.append(f"note: --max-positions {max_positions} is more than the {n} instruments traded: at most {n} "
                     f"positions at once, each equity / {max_positions}")
    rule = _primary(agent)
    rules = trading_rules(args, agent, rule)
    sides = None if rule is None and args.side is None else {}
    for sym, history in histories.items():
        signals[sym], side = _bets(rule, history, signals[sym], args.side, f"{data_name}: {sym}")
        if sides is not None:
            sides[sym] = side
    return PortfolioRun(agent=agent, data_name=data_name, frames=histories, signals=signals, plan=plan,
                        rules=rules, max_positions=max_positions, notes=tuple(notes),
                        members=list(frames), sides=sides)


# ------------------------------------------------------------------------------------ printing and files
def _print_single(args, run: SingleRun, result) -> int:
    """The results of a one-instrument run printed (``engine.report``), then its files written; exit status."""
    from engine import plot_backtest
    from engine import report

    label = Path(run.agent.path).stem if run.agent else args.strategy
    data_label = escape(Path(str(run.data_name)).name)
    returns = report.returns_by_period(result)
    if not args.quiet:
        print(report.header_line(label, data_label, result))
    print(report.results_table(result, label))
    if not args.quiet:
        print("\n" + report.returns_tables(returns, label))
    plot = Path(args.plot or default_plot(label, run.data_name, run.history.attrs.get("sha256")))
    return _write_outputs(args, result.trades, plot, lambda path: plot_backtest(result, path, label=label),
                          lambda: report.build_report(result, agent=run.agent.path if run.agent else None,
                                                      data=run.data_name, engine=args.engine, notes=list(run.notes),
                                                      returns=returns))


def _print_portfolio(args, run: PortfolioRun, result) -> int:
    """The results of a portfolio run printed (``engine.report``), then its files written; exit status."""
    from engine import report
    from engine.plotting import plot_portfolio

    label = Path(run.agent.path).stem
    data_label = escape(report.universe_label(run.data_name, run.members))
    returns = report.returns_by_period(result)
    contribution = report.contribution_rows(result)
    if not args.quiet:
        print(report.portfolio_header_line(label, data_label, result))
    print(report.portfolio_table(result, label))
    if not args.quiet:
        print(report.benchmark_line(result))
        print("\n" + report.contribution_table(contribution))
        print("\n" + report.returns_tables(returns, label, report.PORTFOLIO_BENCH_LABEL))
    plot = Path(args.plot or f"reports/{label}_{data_label}.png")
    traded = list(result.positions.columns)  # the title names these, never a member left out
    left_out = list(run.plan.left_out)
    title = f"{label} on {report.universe_label(run.data_name, traded)}" + (
        f" ({len(left_out)} of {len(run.members)} instruments left out)" if left_out else "")
    return _write_outputs(args, result.trades, plot, lambda path: plot_portfolio(result, path, title, label=label),
                          lambda: report.build_portfolio_report(
                              result, about={"agent": run.agent.path, "universe": run.data_name, "members": run.members,
                                             "left_out": left_out},
                              notes=list(run.notes), signals=run.signals, returns=returns, contribution=contribution))


def default_plot(label: str, data_name: str, sha256: str | None) -> Path:
    """reports/<label>_<data>.png. Data given as a path (not a bundled name) adds the first 8 hex digits of its
    sha256, so data/sp500.csv and the bundled sp500 (or two different files named sp500.csv) keep their own pictures."""
    from datafeeds import list_samples
    from engine.report import file_label

    name = str(data_name)
    stem = file_label(Path(name.rstrip("/")).name.split(".")[0])
    bundled = name in list_samples()
    return Path("reports") / (f"{label}_{stem}.png" if bundled or not sha256 else f"{label}_{stem}_{sha256[:8]}.png")


def _write_outputs(args, trades, plot: Path, draw, build_report) -> int:
    """Write the picture (``draw(path)``), the JSON report (``build_report()``) and the trades CSV the options ask
    for, each atomically; a path that cannot be written is one line and exit status 2."""
    from engine.report import write_report, write_trades

    target = None
    try:
        if not args.no_plot:
            target = plot
            draw(plot)
            if not args.quiet:
                print(f"plot: {escape(str(plot))}")
        if args.report:
            target = args.report
            write_report(args.report, build_report())
            if not args.quiet:
                print(f"report: {escape(str(args.report))}")
        if args.trades:
            target = args.trades
            write_trades(args.trades, trades)
            if not args.quiet:
                print(f"trades: {escape(str(args.trades))} ({len(trades)} rows)")
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
