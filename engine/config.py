"""How a backtest is run, besides its trading rules and costs (``labeling.rules``): cash, period,
measurement and engine. Import-light (the standard library only): the command lines read these defaults.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from datafeeds.errors import did_you_mean

ENGINES = ("backtrader", "fast")  # the reference, and the parity-tested numba simulator (engine.fastsim)


@dataclass(frozen=True)
class RunConfig:
    """One backtest's account, period, measurement conventions and engine."""

    cash: float = 100_000.0  # starting cash
    start: object = None  # first bar traded (anything ``df.loc`` slices by); None = the first bar
    end: object = None  # last bar traded; None = the last bar
    periods_per_year: float | None = None  # None = inferred from the full data's bar spacing
    risk_free: float = 0.0  # annual rate Sharpe and Sortino are measured against, e.g. 0.02
    benchmark: bool = True  # also run buy-and-hold over the same bars, cash and costs
    engine: str = "backtrader"  # one of ENGINES
    # backtrader only: the agent's exit as one native order (strategies.BarrierBroker); False = the stock
    # BackBroker with a stop, an OCO limit and a market time exit (same trades, slower)
    native_barriers: bool = True
    # cash a position ties up per unit of its value, (0, 10]: 1 = fully cash-backed (shorts too), 0.5 = 2x leverage;
    # backtrader's leverage = 1 / margin. No margin calls: a position's losses are not capped
    margin: float = 1.0

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"engine: unknown engine {self.engine!r};{did_you_mean(self.engine, ENGINES)} choose one "
                             f"of {', '.join(ENGINES)}")
        if not _finite(self.cash) or self.cash <= 0:
            raise ValueError(f"cash must be a positive finite amount, got {self.cash!r}")
        object.__setattr__(self, "cash", float(self.cash))
        ppy = self.periods_per_year
        if ppy is not None and (not _finite(ppy) or ppy <= 0):
            raise ValueError(f"periods_per_year must be a positive number (or None to infer it), got {ppy!r}")
        object.__setattr__(self, "risk_free", check_risk_free(self.risk_free))
        if not _finite(self.margin) or not 0.0 < self.margin <= 10.0:
            raise ValueError(f"margin must be in (0, 10] (the cash a position ties up per unit of its value; "
                             f"1 = fully cash-backed), got {self.margin!r}")
        object.__setattr__(self, "margin", float(self.margin))

    @property
    def leverage(self) -> float:
        """backtrader's leverage for ``margin``: the one value both engines divide by."""
        return 1.0 / self.margin

    def replace(self, **changes) -> RunConfig:
        """A copy with ``changes`` (validated like any construction)."""
        return dataclasses.replace(self, **changes)


def check_risk_free(value) -> float:
    """An annual risk-free rate in (-1, 1), as a float."""
    if not _finite(value) or not -1.0 < value < 1.0:
        raise ValueError(f"risk_free must be an annual rate in (-1, 1), e.g. 0.02 for 2%, got {value}")
    return float(value)


def _finite(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
