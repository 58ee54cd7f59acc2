"""Primary models for meta-labeling (AFML 3.6): causal rules that give each bar a side, +1 long or -1 short
(0: no bet), whose bets the learner then learns to take or pass (``triple_barrier_labels(side=...)``).

A rule's side at bar t reads bars <= t only. ``parse_primary("smacross:fast=5,slow=20")`` builds a rule from
its command-line spelling; ``primary_side(df, rule)`` gives the sides of a frame's bars as the Series the
labels take (bars without a bet left out).

``both`` is no rule of prices: the learner itself predicts the direction (the plain labels, at every bar), and
its probability is traded on both sides, long where it says up and short where it says down
(:func:`direction_bets`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from datafeeds.errors import did_you_mean

from ._checks import check_int
from .jit import njit_cached
from .rules import MAX_BARS


@njit_cached
def sma_cross_side_nb(close, fast, slow):
    """+1 where the ``fast``-bar mean of close is above the ``slow``-bar mean, -1 below, 0 equal or in warm-up."""
    n = close.shape[0]
    out = np.zeros(n, dtype=np.int8)
    s_fast = 0.0
    s_slow = 0.0
    for t in range(n):
        s_fast += close[t]
        s_slow += close[t]
        if t >= fast:
            s_fast -= close[t - fast]
        if t >= slow:
            s_slow -= close[t - slow]
        if t >= slow - 1:
            d = s_fast / fast - s_slow / slow
            out[t] = 1 if d > 0.0 else (-1 if d < 0.0 else 0)
    return out


@njit_cached
def momentum_side_nb(close, lookback):
    """The sign of the ``lookback``-bar return at each bar (0: flat, or fewer than ``lookback`` bars behind)."""
    n = close.shape[0]
    out = np.zeros(n, dtype=np.int8)
    for t in range(lookback, n):
        r = close[t] - close[t - lookback]
        out[t] = 1 if r > 0.0 else (-1 if r < 0.0 else 0)
    return out


@dataclass(frozen=True)
class SmaCrossRule:
    """Long while the fast simple moving average of close is above the slow one, short while below."""

    fast: int = 10  # bars in the fast mean
    slow: int = 30  # bars in the slow mean

    def __post_init__(self):
        object.__setattr__(self, "fast", check_int(self.fast, "smacross fast", 1, MAX_BARS))
        object.__setattr__(self, "slow", check_int(self.slow, "smacross slow", 2, MAX_BARS))
        if self.fast >= self.slow:
            raise ValueError(f"smacross needs fast < slow, got fast={self.fast}, slow={self.slow}")

    def sides(self, close: np.ndarray) -> np.ndarray:
        return sma_cross_side_nb(close, self.fast, self.slow)


@dataclass(frozen=True)
class MomentumRule:
    """Long after a rise over the last ``lookback`` bars, short after a fall (time-series momentum)."""

    lookback: int = 20  # bars of the return whose sign is the side

    def __post_init__(self):
        object.__setattr__(self, "lookback", check_int(self.lookback, "momentum lookback", 1, MAX_BARS))

    def sides(self, close: np.ndarray) -> np.ndarray:
        return momentum_side_nb(close, self.lookback)


@dataclass(frozen=True)
class BothRule:
    """Long and short bets on a direction model's own probability: no sides from prices (see the module doc)."""


PRIMARIES = {"smacross": SmaCrossRule, "momentum": MomentumRule, "both": BothRule}  # name -> rule (fields: params)
PRICE_RULES = (SmaCrossRule, MomentumRule)  # the rules that give sides from prices (primary_side)


def direction_bets(prob: pd.Series) -> tuple[pd.Series, pd.Series]:
    """A direction model's probability of "up" traded both ways (``both``): the side is +1 where it is >= 1/2 and -1
    below, and the bet's probability of paying is the larger of p and 1 - p; NaN stays no bet. Returns (that
    probability, the sides on the bars with a bet)."""
    p = prob.to_numpy(dtype=np.float64)
    bet = ~np.isnan(p)
    side = np.where(p >= 0.5, 1, -1).astype(np.int8)
    return (pd.Series(np.maximum(p, 1.0 - p), index=prob.index, name=prob.name),
            pd.Series(side[bet], index=prob.index[bet], name="side"))


def parse_primary(text: str):
    """A rule from ``NAME`` or ``NAME:key=value,...`` (e.g. ``momentum:lookback=60``); ValueError naming an
    unknown rule or parameter, with a suggestion."""
    name, _, rest = str(text).partition(":")
    cls = PRIMARIES.get(name.strip())
    if cls is None:
        raise ValueError(f"primary {name.strip()!r} is unknown;{did_you_mean(name.strip(), PRIMARIES)} primaries: "
                         f"{', '.join(PRIMARIES)}")
    fields = {f.name for f in dataclasses.fields(cls)}
    params = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in fields or not eq:
            raise ValueError(f"primary {name.strip()}: {item!r} is not a parameter;{did_you_mean(key, fields)} its "
                             f"parameters: {', '.join(sorted(fields))} (write key=value)")
        try:
            params[key] = int(value)
        except ValueError:
            raise ValueError(f"primary {name.strip()}: {key}={value!r} is not a whole number of bars") from None
    return cls(**params)


def primary_side(df: pd.DataFrame, rule) -> pd.Series:
    """The side of each bar of ``df`` under ``rule`` (int8, +1/-1), bars without a bet left out: the ``side`` of
    ``triple_barrier_labels``."""
    if isinstance(rule, BothRule):
        raise ValueError("primary both has no sides of its own: its bets are the model's (direction_bets)")
    if not isinstance(rule, PRICE_RULES):
        raise ValueError(f"rule must be one of {', '.join(c.__name__ for c in PRICE_RULES)} "
                         f"(parse_primary builds one), got {type(rule).__name__}")
    if "close" not in getattr(df, "columns", ()):
        raise ValueError("df must be a frame of bars with a close column (datafeeds.load_ohlcv)")
    sides = rule.sides(np.ascontiguousarray(df["close"].to_numpy(dtype=np.float64)))
    bet = sides != 0
    return pd.Series(sides[bet], index=df.index[bet], name="side")
