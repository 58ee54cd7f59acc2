"""Synthetic OHLCV with a known planted signal, for power tests and scale benchmarks (never defaults).

Each generator returns ``(frame, latent)``: daily business-day bars and, per bar, the true signal a
perfect model would know at that bar's close (NaN where there is none). The AUC of ``latent``
against the labels is the oracle: the most any model can reach on that data.

- ``random_walk``: i.i.d. normal log returns; no signal (latent all NaN): the control.
- ``ar1``: log returns r[t] = phi * r[t-1] + e[t]; latent = r[t] (the next returns lean its way).
- ``vol_regime``: a two-state Markov chain; calm = small volatility and an upward drift, storm =
  three times the volatility and a downward drift; latent = 1 in the calm state, 0 in the storm.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["GENERATORS", "ar1", "bars_from_returns", "random_walk", "vol_regime"]


def bars_from_returns(log_returns: np.ndarray, rng: np.random.Generator, *, start: str = "2000-01-03",
                      price: float = 100.0, wick: float = 0.004) -> pd.DataFrame:
    """OHLCV from close-to-close log returns: open = previous close, high/low beyond both by a
    half-normal ``wick`` fraction, lognormal volume independent of the returns."""
    r = np.asarray(log_returns, dtype=np.float64)
    n = len(r)
    close = price * np.exp(np.cumsum(r))
    open_ = np.concatenate([[price], close[:-1]])
    high = np.maximum(open_, close) * (1.0 + np.abs(rng.normal(0.0, wick, n)))
    low = np.minimum(open_, close) * (1.0 - np.abs(rng.normal(0.0, wick, n)))
    volume = np.round(rng.lognormal(10.0, 0.3, n))
    index = pd.bdate_range(start, periods=n, name="datetime")
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index)


def random_walk(n: int, seed: int = 0, sigma: float = 0.01) -> tuple[pd.DataFrame, np.ndarray]:
    """The control: no bar tells anything about the next."""
    rng = np.random.default_rng(seed)
    return bars_from_returns(rng.normal(0.0, sigma, n), rng), np.full(n, np.nan)


def ar1(n: int, seed: int = 0, phi: float = 0.2, sigma: float = 0.01) -> tuple[pd.DataFrame, np.ndarray]:
    """Momentum: each log return carries ``phi`` of the previous one."""
    if not -1.0 < phi < 1.0:
        raise ValueError(f"phi must be in (-1, 1) for a stationary AR(1), got {phi}")
    rng = np.random.default_rng(seed)
    e = rng.normal(0.0, sigma, n)
    r = np.empty(n)
    r[0] = e[0]
    for t in range(1, n):
        r[t] = phi * r[t - 1] + e[t]
    return bars_from_returns(r, rng), r * np.sign(phi)


def vol_regime(n: int, seed: int = 0, stay: float = 0.98, sigma: float = 0.008, drift: float = 0.002
               ) -> tuple[pd.DataFrame, np.ndarray]:
    """Two regimes that persist (each day stays with probability ``stay``): calm (sigma, +drift) and
    storm (3 sigma, -drift)."""
    if not 0.0 < stay < 1.0:
        raise ValueError(f"stay must be in (0, 1), got {stay}")
    rng = np.random.default_rng(seed)
    switch = rng.random(n) > stay
    calm = np.empty(n, dtype=bool)
    calm[0] = True
    for t in range(1, n):
        calm[t] = calm[t - 1] != switch[t]
    r = np.where(calm, rng.normal(drift, sigma, n), rng.normal(-drift, 3.0 * sigma, n))
    return bars_from_returns(r, rng), calm.astype(np.float64)


GENERATORS = {"random_walk": random_walk, "ar1": ar1, "vol_regime": vol_regime}
