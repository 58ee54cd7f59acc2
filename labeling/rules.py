"""The rules of a triple-barrier trade, written once: how it is labelled (:class:`TBMConfig`), when it is
entered, sized and left (:class:`BarrierRules`) and what it costs (:class:`Costs`).

Labels and trades share the barriers, so the rules live with the labels, the lowest layer that needs
them. Frozen and validated on construction; JSON round-trip by ``to_dict``/``from_dict``. Importing this
module is light (the standard library only), so the command lines build their parsers from these defaults.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from ._checks import check_int

MAX_BARS = 1_000_000  # the largest horizon or ATR period accepted, in bars
SIZINGS = ("fixed", "probability")  # BarrierRules.sizing: every entry the same size, or AFML 10.1 from the probability


def _real(value) -> bool:
    """A real number, not a bool (True is an int to Python, never a barrier or a fraction here)."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


def check_multiple(value, name: str) -> float:
    """A barrier distance in ATRs: a positive finite number, as a float."""
    if not _real(value) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number of ATRs, got {value!r}")
    return float(value)


def check_size_frac(value, name: str = "size_frac") -> float | None:
    """The fraction of equity committed per entry: in (0, 1] (no leverage), or None for the runner's default."""
    if value is None:
        return None
    if not _real(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1] (no leverage), got {value!r}")
    return float(value)


def check_max_positions(value) -> int:
    """A portfolio's cap on positions open at once: an integer >= 1."""
    if not _real(value) or int(value) != value or value < 1:
        raise ValueError(f"max_positions must be an integer >= 1, got {value!r}")
    return int(value)


def _check_fraction(value, name: str, what: str) -> float:
    if not _real(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1) ({what}), got {value!r}")
    return float(value)


class _Rules:
    """JSON round-trip shared by the rule dataclasses."""

    def to_dict(self) -> dict:
        """Plain dict of the fields (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        """Inverse of ``to_dict``; unknown keys are an error, missing keys take the defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"{cls.__name__}.from_dict: unknown key(s) {sorted(unknown)}; "
                             f"expected a subset of {sorted(known)}")
        return cls(**d)

    def replace(self, **changes):
        """A copy with ``changes`` (validated like any construction)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TBMConfig(_Rules):
    """Triple Barrier label parameters; barriers are multiples of ATR around the event close."""

    pt: float = 1.5  # upper (profit-taking) barrier = close + pt * ATR
    sl: float = 1.5  # lower (stop-loss) barrier = close - sl * ATR
    horizon: int = 20  # vertical barrier: bars after the event bar
    atr_period: int = 14  # Wilder ATR period used to scale the barriers

    def __post_init__(self):
        _check_barriers(self, "TBMConfig.")


@dataclass(frozen=True)
class BarrierRules(_Rules):
    """How the agent trades a probability: enter on the bar's side (long unless a primary rule says short) when it
    reaches ``threshold``, leave at the first of the take-profit, the stop or the time limit. Barriers default to
    the labels' (:class:`TBMConfig`)."""

    threshold: float = 0.5  # enter when the probability >= threshold
    pt: float = TBMConfig.pt  # take-profit at entry fill + pt * ATR of the signal bar
    sl: float = TBMConfig.sl  # stop at entry fill - sl * ATR of the signal bar
    horizon: int = TBMConfig.horizon  # bars held before the time exit (the fill bar counts as 1)
    atr_period: int = TBMConfig.atr_period  # Wilder ATR period the barriers are measured in
    # fraction of equity committed per entry, (0, 1]; None = all of it for one instrument, equity / max
    # positions for a portfolio
    size_frac: float | None = None
    # "fixed": every entry takes size_frac; "probability": size_frac times the AFML 10.1 size of the bets of the
    # last `horizon` bars, averaged (labeling.entry_sizes)
    sizing: str = "fixed"
    size_step: float = 0.0  # "probability" sizes rounded to multiples of this, [0, 1); 0 = not rounded

    def __post_init__(self):
        t = self.threshold
        if not _real(t) or not 0.0 <= t <= 1.0:
            raise ValueError(f"threshold must be a probability in [0, 1], got {t!r}")
        object.__setattr__(self, "threshold", float(t))
        _check_barriers(self, "")
        object.__setattr__(self, "size_frac", check_size_frac(self.size_frac))
        if self.sizing not in SIZINGS:
            raise ValueError(f"sizing must be one of {', '.join(SIZINGS)}, got {self.sizing!r}")
        object.__setattr__(self, "size_step", _check_fraction(
            self.size_step, "size_step", "the rounding step of probability sizes; 0 = not rounded"))

    @property
    def tbm(self) -> TBMConfig:
        """The label parameters these barriers correspond to."""
        return TBMConfig(pt=self.pt, sl=self.sl, horizon=self.horizon, atr_period=self.atr_period)

    @property
    def entry_fraction(self) -> float:
        """``size_frac`` for one instrument: None means the whole equity."""
        return 1.0 if self.size_frac is None else self.size_frac

    @classmethod
    def from_tbm(cls, tbm: TBMConfig, threshold: float, **changes) -> BarrierRules:
        """The rules that trade at ``threshold`` with the barriers ``tbm`` labelled by (``changes`` override)."""
        return cls(threshold=threshold, **{**tbm.to_dict(), **changes})


@dataclass(frozen=True)
class Costs(_Rules):
    """What trading costs: a commission on the traded value and slippage against us on each fill's price, and a
    borrow rate on shorts."""

    commission: float = 0.0005  # fraction of traded value per side (backtrader COMM_PERC, percabs)
    slippage: float = 0.0  # fraction of the price against us on every fill, capped at the bar's high/low
    # annual rate charged on a short position's entry value, per calendar day held (backtrader's `interest`)
    borrow: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "commission", _check_fraction(
            self.commission, "commission", "a fraction of the traded value per side, e.g. 0.0005"))
        object.__setattr__(self, "slippage", _check_fraction(self.slippage, "slippage", "a fraction of the price"))
        object.__setattr__(self, "borrow", _check_fraction(
            self.borrow, "borrow", "an annual rate on a short's value, e.g. 0.02 for 2%"))


def _check_barriers(rules, prefix: str) -> None:
    """pt, sl, horizon and atr_period of ``rules`` checked and normalised in place (float, float, int, int)."""
    object.__setattr__(rules, "pt", check_multiple(rules.pt, f"{prefix}pt"))
    object.__setattr__(rules, "sl", check_multiple(rules.sl, f"{prefix}sl"))
    # upper bounds far above any sensible value, so a typo (1e20) is one line, not a crash in numba
    object.__setattr__(rules, "horizon", check_int(rules.horizon, f"{prefix}horizon", 1, MAX_BARS))
    object.__setattr__(rules, "atr_period", check_int(rules.atr_period, f"{prefix}atr_period", 1, MAX_BARS))
