"""The Probability of Backtest Overfitting (PBO) of a selection among trials, by CSCV.

Bailey, Borwein, Lopez de Prado & Zhu (2017), "The probability of backtest overfitting": the
trials' per-period returns (T periods x N trials) are cut into S contiguous blocks; for each of the
C(S, S/2) ways to call half of the blocks in-sample, the trial with the best in-sample Sharpe is
located in the out-of-sample ranking (relative rank w in (0, 1), logit l = ln(w / (1 - w))). PBO is
the share of splits where that trial ranks at or below the out-of-sample median (l <= 0): ~0.5 when
the selection is luck, ~0 when one trial really is better.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = ["probability_of_backtest_overfitting"]

_MAX_SPLITS = 20_000  # C(16, 8) = 12,870 fits; more blocks are subsampled at random (seeded)


def probability_of_backtest_overfitting(returns, n_blocks: int = 16, *, seed: int = 0) -> dict:
    """PBO of choosing the best in-sample Sharpe among the columns of ``returns`` (T x N, N >= 2).

    ``n_blocks`` (even, >= 2) contiguous blocks of ~T / n_blocks periods each. Returns
    ``{"pbo", "n_splits", "n_blocks", "n_trials", "n_periods", "logit_median", "method"}``.
    """
    m = np.asarray(returns, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] < 2:
        raise ValueError(f"returns must be a (periods x trials) matrix with >= 2 trials, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("returns hold NaN or infinite values: give every trial the same finite periods")
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 2 or n_blocks % 2:
        raise ValueError(f"n_blocks must be an even integer >= 2, got {n_blocks!r}")
    t, n = m.shape
    if t < 2 * n_blocks:
        raise ValueError(f"{t} periods are too few for {n_blocks} blocks: need >= 2 periods a block")
    # each block's sufficient statistics per trial: count, sum, sum of squares
    edges = np.linspace(0, t, n_blocks + 1).astype(np.int64)
    count = np.diff(edges).astype(np.float64)
    s1 = np.add.reduceat(m, edges[:-1], axis=0)
    s2 = np.add.reduceat(m * m, edges[:-1], axis=0)

    splits = list(itertools.combinations(range(n_blocks), n_blocks // 2))
    if len(splits) > _MAX_SPLITS:
        keep = np.random.default_rng(seed).choice(len(splits), _MAX_SPLITS, replace=False)
        splits = [splits[i] for i in np.sort(keep)]
    is_mask = np.zeros((len(splits), n_blocks), dtype=bool)
    for i, blocks in enumerate(splits):
        is_mask[i, list(blocks)] = True

    def sharpe(mask):  # (splits, trials): mean / std (ddof=1) over the periods of the chosen blocks
        c = mask.astype(np.float64) @ count
        a, b = mask @ s1, mask @ s2
        mean = a / c[:, None]
        var = (b - c[:, None] * mean**2) / (c[:, None] - 1.0)
        std = np.sqrt(np.maximum(var, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(std > 0, mean / std, 0.0)

    sr_is, sr_oos = sharpe(is_mask), sharpe(~is_mask)
    best = np.argmax(sr_is, axis=1)  # ties: the first trial
    chosen = sr_oos[np.arange(len(splits)), best]
    # relative rank of the chosen trial out of sample, ties counted half: w in (0, 1)
    below = (sr_oos < chosen[:, None]).sum(axis=1)
    equal = (sr_oos == chosen[:, None]).sum(axis=1)
    w = (below + 0.5 * (equal - 1) + 1.0) / (n + 1.0)
    logits = np.log(w / (1.0 - w))
    return {
        "pbo": float(np.mean(logits <= 0.0)),
        "n_splits": len(splits),
        "n_blocks": n_blocks,
        "n_trials": n,
        "n_periods": t,
        "logit_median": float(np.median(logits)),
        "method": (f"CSCV (Bailey, Borwein, Lopez de Prado & Zhu): {n_blocks} contiguous blocks, "
                   f"{len(splits)} of C({n_blocks},{n_blocks // 2}) = {math.comb(n_blocks, n_blocks // 2)} "
                   "in-sample/out-of-sample splits, Sharpe ratio per trial"),
    }
