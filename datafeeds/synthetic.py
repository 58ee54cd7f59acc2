"""Synthetic OHLCV with a known planted signal, for power tests and scale benchmarks (never defaults).

Each generator returns ``(frame, latent)``: daily business-day bars and, per bar, the true signal a
perfect model would know at that bar's close (NaN where there is none). The AUC of ``latent``
against the labels is the oracle: the most any model can reach on that data.

- ``random_walk``: i.i.d. normal log returns; no signal (latent all NaN): the control.
- ``ar1``: log returns r[t] = phi * r[t-1] + e[t]; latent = r[t] (the next returns lean its way).
- ``vol_regime``: a two-state Markov chain; calm = small volatility and an upward drift, storm =
  three times the volatility and a downward drift; latent = 1 in the calm state, 0 in the storm.

Nonlinear ones: no single bar's value, and no linear combination of lags, tells the direction. Each
bar t sets a sign ``s[t]`` from the path so far; the next ``k`` bars drift by ``mu * sigma`` times the
mean of the last ``k`` signs; latent = sum over a < k of (k - a) s[t - a], the drift still to come.

- ``sign_interaction``: s[t] = sign(r[t - a]) * sign(r[t - b]) for two lags: an XOR of two bars.
- ``volume_momentum``: volume comes in persistent heavy/light regimes; s[t] = sign(r[t]) on heavy
  volume (momentum) and -sign(r[t]) on light volume (reversal).
- ``motif``: s[t] = +1 after a given pattern of return signs over the last bars or its mirror image,
  -1 after either with the last sign flipped, 0 otherwise: no single bar's sign tells the drift.

For meta-labeling (a primary rule's bets, ``labeling.primary``), a rule right in one regime only:

- ``regime_momentum``: on heavy volume (a persistent regime) each bar drifts the way of the last
  ``lookback`` bars' move, as ``momentum:lookback=...`` bets; on light volume it drifts the other way,
  at ``revert`` times the strength; latent = 1 on heavy-volume bars (where the rule's bets pay), else 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["GENERATORS", "LINEAR", "NONLINEAR", "ar1", "bars_from_returns", "motif", "random_walk", "regime_momentum",
           "sign_interaction", "vol_regime", "volume_momentum"]


def bars_from_returns(log_returns: np.ndarray, rng: np.random.Generator, *, start: str = "2000-01-03",
                      price: float = 100.0, wick: float = 0.004, log_volume: np.ndarray | None = None) -> pd.DataFrame:
    """OHLCV from close-to-close log returns: open = previous close, high/low beyond both by a
    half-normal ``wick`` fraction; volume lognormal around ``log_volume`` (default 10, independent
    of the returns)."""
    r = np.asarray(log_returns, dtype=np.float64)
    n = len(r)
    close = price * np.exp(np.cumsum(r))
    open_ = np.concatenate([[price], close[:-1]])
    high = np.maximum(open_, close) * (1.0 + np.abs(rng.normal(0.0, wick, n)))
    low = np.minimum(open_, close) * (1.0 - np.abs(rng.normal(0.0, wick, n)))
    volume = np.round(np.exp((10.0 if log_volume is None else np.asarray(log_volume)) + rng.normal(0.0, 0.3, n)))
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


def _two_states(n: int, rng: np.random.Generator, stay: float) -> np.ndarray:
    """A two-state Markov chain starting True, each bar keeping its state with probability ``stay``."""
    if not 0.0 < stay < 1.0:
        raise ValueError(f"stay must be in (0, 1), got {stay}")
    switch = rng.random(n) > stay
    state = np.empty(n, dtype=bool)
    state[0] = True
    for t in range(1, n):
        state[t] = state[t - 1] != switch[t]
    return state


def vol_regime(n: int, seed: int = 0, stay: float = 0.98, sigma: float = 0.008, drift: float = 0.002
               ) -> tuple[pd.DataFrame, np.ndarray]:
    """Two regimes that persist (each day stays with probability ``stay``): calm (sigma, +drift) and
    storm (3 sigma, -drift)."""
    rng = np.random.default_rng(seed)
    calm = _two_states(n, rng, stay)
    r = np.where(calm, rng.normal(drift, sigma, n), rng.normal(-drift, 3.0 * sigma, n))
    return bars_from_returns(r, rng), calm.astype(np.float64)


def _check_drift(mu: float, k: int) -> None:
    if not (np.isfinite(mu) and mu > 0):
        raise ValueError(f"mu must be a positive number, got {mu}")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")


def _sign_driven(n: int, rng: np.random.Generator, sign_at, *, mu: float, k: int, sigma: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Log returns whose drift is ``mu * sigma`` times the mean of the last ``k`` signs, where
    ``sign_at(r, t)`` is the sign bar t sets from returns up to t; and the latent drift to come."""
    e = rng.normal(0.0, sigma, n)
    r = np.empty(n)
    s = np.zeros(n)
    recent = 0.0  # sum of s[t - k .. t - 1]
    for t in range(n):
        r[t] = e[t] + mu * sigma * recent / k
        s[t] = sign_at(r, t)
        recent += s[t] - (s[t - k] if t >= k else 0.0)
    weights = np.arange(k, 0, -1, dtype=np.float64)  # (k - a) for a = 0 .. k - 1
    latent = np.convolve(s, weights)[:n]
    return r, latent


def sign_interaction(n: int, seed: int = 0, lags: tuple[int, int] = (0, 2), mu: float = 0.25, k: int = 5,
                     sigma: float = 0.01) -> tuple[pd.DataFrame, np.ndarray]:
    """Drift set by the product of the signs of two lagged returns (``lags`` bars back from t)."""
    _check_drift(mu, k)
    a, b = (int(x) for x in lags)
    if a < 0 or b < 0 or a == b:
        raise ValueError(f"lags must be two different non-negative integers, got {lags}")
    m = max(a, b)
    rng = np.random.default_rng(seed)

    def sign_at(r, t):
        return float(np.sign(r[t - a]) * np.sign(r[t - b])) if t >= m else 0.0

    r, latent = _sign_driven(n, rng, sign_at, mu=mu, k=k, sigma=sigma)
    return bars_from_returns(r, rng), latent


def volume_momentum(n: int, seed: int = 0, mu: float = 0.25, k: int = 5, stay: float = 0.9, heavy: float = 0.6,
                    sigma: float = 0.01) -> tuple[pd.DataFrame, np.ndarray]:
    """Momentum on heavy volume, reversal on light: the volume regime (log volume ``heavy`` above the
    light one, each bar staying with probability ``stay``) decides the sign of the last return's echo."""
    _check_drift(mu, k)
    rng = np.random.default_rng(seed)
    loud = _two_states(n, rng, stay)

    def sign_at(r, t):
        return float(np.sign(r[t])) * (1.0 if loud[t] else -1.0)

    r, latent = _sign_driven(n, rng, sign_at, mu=mu, k=k, sigma=sigma)
    return bars_from_returns(r, rng, log_volume=10.0 + heavy * loud), latent


def motif(n: int, seed: int = 0, pattern: str = "+-+", mu: float = 0.6, k: int = 5, sigma: float = 0.01
          ) -> tuple[pd.DataFrame, np.ndarray]:
    """Drift up after ``pattern`` (return signs, oldest first, "+" or "-") or its mirror image, down
    after either with its last sign flipped: every bar's sign is balanced, only the shape says anything."""
    _check_drift(mu, k)
    if len(pattern) < 2 or set(pattern) - {"+", "-"}:
        raise ValueError(f"pattern must be a string of two or more '+' and '-', got {pattern!r}")
    want = np.array([1.0 if c == "+" else -1.0 for c in pattern])
    m = len(want)
    rng = np.random.default_rng(seed)

    def sign_at(r, t):
        if t < m - 1:
            return 0.0
        got = np.sign(r[t - m + 1:t + 1])
        got = got * got[0] * want[0]  # a mirror image turned back into the pattern (its first sign agrees)
        if not np.array_equal(got[:-1], want[:-1]):
            return 0.0
        return 1.0 if got[-1] == want[-1] else -1.0

    r, latent = _sign_driven(n, rng, sign_at, mu=mu, k=k, sigma=sigma)
    return bars_from_returns(r, rng), latent


def regime_momentum(n: int, seed: int = 0, lookback: int = 20, mu: float = 0.25, revert: float = 0.5,
                    stay: float = 0.98, heavy: float = 0.6, sigma: float = 0.01) -> tuple[pd.DataFrame, np.ndarray]:
    """Time-series momentum that pays in one volume regime only. Bar t drifts by ``mu * sigma`` times the side
    of ``labeling``'s ``momentum:lookback=<lookback>`` rule at bar t - 1 (the sign of close[t-1] -
    close[t-1-lookback]; the bet that rule enters at bar t's open) on heavy volume, and by ``-revert * mu *
    sigma`` times it on light volume; the regime keeps each bar with probability ``stay``, log volume
    ``heavy`` higher in the heavy one. latent = 1.0 on heavy-volume bars, 0.0 on light ones: the regime the
    rule's bets from that bar fall in (known from the volume up to it, the regime persisting)."""
    _check_drift(mu, 1)
    if int(lookback) != lookback or lookback < 1:
        raise ValueError(f"lookback must be a positive integer, got {lookback}")
    if not (np.isfinite(revert) and revert >= 0):
        raise ValueError(f"revert must be a number >= 0, got {revert}")
    lookback = int(lookback)
    rng = np.random.default_rng(seed)
    loud = _two_states(n, rng, stay)
    e = rng.normal(0.0, sigma, n)
    drift = np.where(loud, mu * sigma, -revert * mu * sigma)
    r = np.empty(n)
    level = np.zeros(n + 1)  # level[t + 1] = log(close[t] / price): the cumulative sum of r
    for t in range(n):
        side = np.sign(level[t] - level[t - lookback]) if t - 1 >= lookback else 0.0  # the rule's side at t - 1
        r[t] = e[t] + drift[t] * side
        level[t + 1] = level[t] + r[t]
    return bars_from_returns(r, rng, log_volume=10.0 + heavy * loud), loud.astype(np.float64)


LINEAR = {"random_walk": random_walk, "ar1": ar1, "vol_regime": vol_regime}
NONLINEAR = {"sign_interaction": sign_interaction, "volume_momentum": volume_momentum, "motif": motif}
GENERATORS = {**LINEAR, **NONLINEAR}
