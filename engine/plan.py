"""Which bars a backtest runs on: the out-of-sample period rules of the main command.

- **An agent** is backtested from the first bar after the last one it saw in training, by date, whatever
  the data: markets move together, so an agent trained on one index up to 2014 has seen the 2014 regime of
  every other. Data that ends before then is refused. ``--start`` overrides the default; a period that
  overlaps the training dates is then flagged IN-SAMPLE.
- **A baseline** (no agent) runs over the whole data, or ``--start``/``--end``.
- **A period** needs at least 2 bars. An agent also needs its warm-up (``warmup`` bars before its first
  signal) inside the data up to the period's end; the bars of the period that fall in it get no signal.
- **A universe** (a portfolio): the default start is the first bar of any member after the training
  data. Members with fewer than 2 bars in the period, or too few for the warm-up, are left out (named in a
  note); the period runs from the first to the last bar of the members traded. Any member's bars inside the
  training dates are in-sample.

The functions take bar times (a ``DatetimeIndex`` per instrument) and what the agent saw (``Training``),
and return a frozen ``Plan`` or ``PortfolioPlan``: the period, what is traded, and the notes and warnings
for the user. A period that cannot be backtested is a ``PeriodError``: one line, the option to change in it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd


class PeriodError(ValueError):
    """No period can be backtested on these bars with these options; one line (the command: exit status 2)."""


@dataclass(frozen=True)
class Training:
    """What an agent saw in training, from its card's ``dataset``: its first and last bar, and the data."""

    first_bar: pd.Timestamp
    last_bar: pd.Timestamp
    name: str  # the dataset's name: a sample, a file, a universe
    sha256: str | None = None  # of the data file (a universe's: of its members)
    members: tuple[tuple[str, str | None], ...] = ()  # a universe agent's instruments: (symbol, sha256)

    @classmethod
    def from_card(cls, dataset: Mapping) -> Training:
        universe = dataset.get("universe")
        members = tuple((str(sym), v.get("sha256") if isinstance(v, Mapping) else None)
                        for sym, v in universe.items()) if isinstance(universe, Mapping) else ()
        return cls(first_bar=pd.Timestamp(dataset["first_bar"]), last_bar=pd.Timestamp(dataset["last_bar_used"]),
                   name=dataset["name"], sha256=dataset.get("sha256"), members=members)

    def dates(self) -> str:
        return f"{self.first_bar.date()} .. {self.last_bar.date()}"

    def described(self) -> str:
        """What the agent was trained on: its dataset, or its universe's members."""
        names = sorted(sym for sym, _ in self.members)
        return f"{len(names)} instruments ({', '.join(names)})" if names else self.name


@dataclass(frozen=True)
class Plan:
    """One instrument's period: its first and last bar, how many bars, and the notes for the user."""

    start: pd.Timestamp
    end: pd.Timestamp
    bars: int
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PortfolioPlan:
    """A universe's period: from the first to the last bar of the members traded (in symbol order), the
    members left out and the notes for the user."""

    start: pd.Timestamp
    end: pd.Timestamp
    symbols: tuple[str, ...]
    left_out: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def _upto(index: pd.DatetimeIndex, end: pd.Timestamp | None) -> pd.DatetimeIndex:
    return index[index <= end] if end is not None else index


def _from(index: pd.DatetimeIndex, start: pd.Timestamp | None) -> pd.DatetimeIndex:
    return index[index >= start] if start is not None else index


def plan_period(index: pd.DatetimeIndex, *, data_name: str, start: pd.Timestamp | None = None,
                end: pd.Timestamp | None = None, training: Training | None = None,
                data_sha256: str | None = None) -> Plan:
    """The period of one instrument with bars at ``index``: from ``start`` (None: after ``training``'s last
    bar for an agent, the first bar for a baseline) to ``end`` (None: the last bar). ``data_name`` and
    ``data_sha256`` name the data in messages and tell whether it is the agent's own."""
    notes = []
    if training is not None:
        if start is None:
            after = index[index > training.last_bar]
            if len(after) == 0:
                raise PeriodError(f"{data_name} ends {index[-1].date()}, before the agent's training data does "
                                  f"({training.last_bar.date()}); pass --start to backtest in-sample or use newer data")
            start = after[0]
        period_end = min(end, index[-1]) if end is not None else index[-1]
        if start <= training.last_bar and period_end >= training.first_bar:
            notes.append(_in_sample(training, data_name, data_sha256))
    period = _from(_upto(index, end), start)
    if len(period) < 2:
        raise PeriodError(f"--start/--end select {len(period)} bar(s) of {data_name} "
                          f"({index[0].date()}..{index[-1].date()}); need at least 2")
    return Plan(start=period[0], end=period[-1], bars=len(period), notes=tuple(notes))


def _in_sample(training: Training, data_name: str, data_sha256: str | None) -> str:
    # a universe agent saw all its instruments up to the same date: any data overlapping it is in-sample
    members = {sha: sym for sym, sha in training.members}
    same = data_name == training.name or (data_sha256 is not None and data_sha256 in (training.sha256, *members))
    on = training.name if not members else f"{len(members)} instruments ({', '.join(members.values())})"
    return (f"warning: the period overlaps the agent's training period ({training.dates()}"
            f"{'' if same and not members else ', on ' + on}): results are IN-SAMPLE")


def with_warmup(plan: Plan, index: pd.DatetimeIndex, warmup: int, *, data_name: str) -> Plan:
    """``plan`` for an agent that reads ``warmup`` bars before its first signal: refused when the bars up to
    the period's end are too few; a note when the period starts inside the warm-up."""
    history = _upto(index, plan.end)
    if len(history) <= warmup:
        raise PeriodError(f"{data_name} up to {history[-1].date()} has {len(history)} bars; "
                          f"the agent needs {warmup} bars of warm-up before its first signal")
    if plan.start < history[warmup]:
        note = f"note: the first {warmup} bars of {data_name} are the agent's warm-up: no signal there"
        return dataclasses.replace(plan, notes=(*plan.notes, note))
    return plan


def plan_portfolio(indexes: Mapping[str, pd.DatetimeIndex], *, data_name: str, training: Training, warmup: int,
                   start: pd.Timestamp | None = None, end: pd.Timestamp | None = None) -> PortfolioPlan:
    """The period of a universe whose members (symbol -> bar times) an agent trades, and which of them it
    trades: see the module's rules."""
    last_seen = training.last_bar
    if start is None:
        # out-of-sample by date for every member: the first bar of any member after the training data
        after = [ix[ix > last_seen][0] for ix in indexes.values() if ix[-1] > last_seen]
        if not after:
            last = max(ix[-1] for ix in indexes.values())
            raise PeriodError(f"{data_name} ends {last.date()}, before the agent's training data does "
                              f"({last_seen.date()}); pass --start to backtest in-sample or use newer data")
        start = min(after)
    histories, outside, short = {}, {}, {}  # traded; left out: no period, too short for the warm-up
    for sym, ix in sorted(indexes.items()):  # symbol order, as the portfolio's tables
        history = _upto(ix, end)
        if len(_from(history, start)) < 2:
            outside[sym] = f"{sym} ({ix[0].date()} .. {ix[-1].date()})"
        elif len(history) <= warmup:
            short[sym] = f"{sym} ({len(history)} bars)"
        else:
            histories[sym] = history
    if not histories:
        spans = ", ".join(f"{sym} {ix[0].date()}..{ix[-1].date()}" for sym, ix in indexes.items())
        raise PeriodError(f"--start/--end select fewer than 2 bars of every instrument of {data_name} ({spans}) "
                          f"or too few for the agent's {warmup} bars of warm-up; need at least 2")
    periods = {sym: _from(h, start) for sym, h in histories.items()}
    period_start = min(p[0] for p in periods.values())
    period_end = max(p[-1] for p in periods.values())
    notes = []
    if outside:
        notes.append(f"note: left out of the portfolio and its benchmark, fewer than 2 bars in {period_start.date()} "
                     f".. {period_end.date()}: {', '.join(outside.values())}")
    if short:
        notes.append(f"note: left out of the portfolio and its benchmark, fewer bars than the agent's "
                     f"{warmup} of warm-up: {', '.join(short.values())}")
    # markets move together: any member's bars inside the training dates are in-sample
    overlap = [sym for sym, p in periods.items() if p[0] <= last_seen and p[-1] >= training.first_bar]
    if overlap:
        notes.append(f"warning: for {', '.join(overlap)} ({len(overlap)} of {len(periods)} instruments) the period "
                     f"overlaps the agent's training period ({training.dates()}, on "
                     f"{training.described()}): results are IN-SAMPLE")
    warm = [sym for sym, h in histories.items() if periods[sym][0] < h[warmup]]
    if warm:
        notes.append(f"note: the first {warmup} bars of {', '.join(warm)} are the agent's warm-up: no signal there")
    return PortfolioPlan(start=period_start, end=period_end, symbols=tuple(histories),
                         left_out=tuple(sorted([*outside, *short])), notes=tuple(notes))
