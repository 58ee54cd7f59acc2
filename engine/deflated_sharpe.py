"""Deflated Sharpe Ratio (Bailey & Lopez de Prado 2014): is a selected Sharpe more than search luck?

All Sharpe ratios here are per period (not annualised): mean / std(ddof=1) of the period returns.
Skewness is the moment estimate and kurtosis is Pearson's (3 for a normal), as in the paper.
DSR = PSR(SR0): the probability that the true Sharpe exceeds SR0, the Sharpe the best of
``n_trials`` skill-less trials would be expected to show given the spread of the trials' Sharpes.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

EULER_GAMMA = 0.5772156649015329  # Euler-Mascheroni constant
_N = NormalDist()


def sharpe_ratio(returns) -> float | None:
    """Per-period Sharpe mean(r) / std(r, ddof=1) of a return series; None if it has no spread."""
    r = _returns(returns)
    std = float(np.std(r, ddof=1))
    return float(np.mean(r)) / std if std > 0 else None


def moments(returns) -> tuple[float, float]:
    """(skewness, Pearson kurtosis) of returns, population moments; a normal gives (0, 3)."""
    r = _returns(returns)
    d = r - r.mean()
    m2 = float(np.mean(d**2))
    if m2 <= 0:
        raise ValueError("returns are constant: skewness and kurtosis are undefined")
    return float(np.mean(d**3)) / m2**1.5, float(np.mean(d**4)) / m2**2


def expected_max_sharpe(n_trials: int, var_sharpe: float) -> float:
    """SR0: expected maximum of ``n_trials`` Sharpe estimates with true Sharpe 0 and variance ``var_sharpe``.

    SR0 = sqrt(V) * ((1 - g) * Phi^-1(1 - 1/N) + g * Phi^-1(1 - 1/(N e))), g = Euler's gamma.
    One trial (no selection) or no spread gives 0.
    """
    if isinstance(n_trials, bool) or int(n_trials) != n_trials or n_trials < 1:
        raise ValueError(f"n_trials must be an integer >= 1, got {n_trials!r}")
    if not (var_sharpe >= 0 and math.isfinite(var_sharpe)):
        raise ValueError(f"var_sharpe must be a finite number >= 0, got {var_sharpe!r}")
    n = int(n_trials)
    if n == 1 or var_sharpe == 0:
        return 0.0
    z = (1 - EULER_GAMMA) * _N.inv_cdf(1 - 1 / n) + EULER_GAMMA * _N.inv_cdf(1 - 1 / (n * math.e))
    return math.sqrt(var_sharpe) * z


def probabilistic_sharpe_ratio(sr: float, sr_benchmark: float, n_obs: int, skew: float, kurtosis: float) -> float:
    """PSR: Phi((SR - SR*) sqrt(T - 1) / sqrt(1 - skew SR + (kurt - 1) / 4 SR^2)), T = number of returns."""
    if isinstance(n_obs, bool) or int(n_obs) != n_obs or n_obs < 2:
        raise ValueError(f"n_obs must be an integer >= 2 returns, got {n_obs!r}")
    if kurtosis < 1:
        raise ValueError(f"kurtosis is Pearson's (normal = 3) and cannot be < 1, got {kurtosis}")
    # >= (1 - skew SR / 2)^2 >= 0 because kurt >= skew^2 + 1 for any distribution
    var = 1 - skew * sr + (kurtosis - 1) / 4 * sr**2
    if var <= 0:
        raise ValueError(f"skew={skew}, kurtosis={kurtosis} are inconsistent (kurtosis must be >= skew^2 + 1)")
    return _N.cdf((sr - sr_benchmark) * math.sqrt(n_obs - 1) / math.sqrt(var))


def mean_within_group_variance(groups) -> tuple[float, list[float | None]]:
    """Mean of the sample variances (ddof=1) of the groups with >= 2 finite values, and each group's
    variance (None below 2 values); 0.0 when no group qualifies.

    For trials searched separately per period (walk-forward folds): pooling their Sharpes would add
    the differences between periods to the search spread.
    """
    per_group: list[float | None] = []
    for group in groups:
        v = np.asarray([s for s in group if s is not None and math.isfinite(s)], dtype=np.float64)
        per_group.append(float(np.var(v, ddof=1)) if len(v) >= 2 else None)
    used = [v for v in per_group if v is not None]
    return (float(np.mean(used)) if used else 0.0), per_group


def deflated_sharpe_ratio(returns, trial_sharpes, n_trials: int | None = None, *,
                          var_trial_sharpe: float | None = None) -> dict:
    """DSR of the selected strategy's per-period ``returns`` given the per-period Sharpes of the trials.

    ``n_trials`` (configurations tried) defaults to len(trial_sharpes); it may be larger when some
    trials have no Sharpe (pruned): they count as tries but not in the variance. ``var_trial_sharpe``
    replaces the variance of ``trial_sharpes`` (e.g. a mean within-fold variance). Returns a dict with
    dsr, sharpe, sr0, n_trials, var_trial_sharpe, n_obs, skew, kurtosis; dsr is None for flat returns.
    """
    r = _returns(returns)
    sharpes = np.asarray([s for s in trial_sharpes if s is not None and math.isfinite(s)], dtype=np.float64)
    n = len(sharpes) if n_trials is None else int(n_trials)
    if n < 1:
        raise ValueError("need at least one trial to deflate against")
    if n < len(sharpes):
        raise ValueError(f"n_trials={n} is below the {len(sharpes)} trial Sharpes given")
    if var_trial_sharpe is None:
        var = float(np.var(sharpes, ddof=1)) if len(sharpes) >= 2 else 0.0
    elif not (var_trial_sharpe >= 0 and math.isfinite(var_trial_sharpe)):
        raise ValueError(f"var_trial_sharpe must be a finite number >= 0, got {var_trial_sharpe!r}")
    else:
        var = float(var_trial_sharpe)
    sr0 = expected_max_sharpe(n, var)
    out = {"dsr": None, "sharpe": sharpe_ratio(r), "sr0": sr0, "n_trials": n, "var_trial_sharpe": var,
           "n_obs": int(len(r)), "skew": None, "kurtosis": None}
    if out["sharpe"] is None:
        return out
    out["skew"], out["kurtosis"] = moments(r)
    out["dsr"] = probabilistic_sharpe_ratio(out["sharpe"], sr0, len(r), out["skew"], out["kurtosis"])
    return out


def _returns(returns) -> np.ndarray:
    r = np.asarray(returns, dtype=np.float64).ravel()
    if r.size < 2:
        raise ValueError(f"need at least 2 returns, got {r.size}")
    if not np.all(np.isfinite(r)):
        raise ValueError("returns hold NaN or inf: drop the first (undefined) return of an equity curve")
    return r
