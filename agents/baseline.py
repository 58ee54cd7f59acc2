"""The simple model every card stands beside: logistic regression on the last bar's features.

A Transformer that cannot beat a linear model on the features of the bar it decides at has learnt
nothing its sequence adds. Both are fitted on the same training events (labels, split and purge)
and scored on the same validation events; the verdict compares their validation AUCs with a
moving-block bootstrap (blocks of the label horizon: overlapping Triple Barrier labels make
neighbouring events dependent, and resampling single events would understate the uncertainty).

A second baseline on the features computed from price and volume alone is fitted when some feature
reads other data columns (e.g. ``obi`` from ``bid_size``/``ask_size``): a validation AUC far above
it points at those columns, which may carry information from the future.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LOOKAHEAD_MARGIN", "MAX_FIT_ROWS", "PRICE_VOLUME", "auc_difference", "auc_of", "fit_logistic",
           "linear_baselines"]

PRICE_VOLUME = frozenset({"open", "high", "low", "close", "volume"})  # the columns every OHLCV file has
# A validation AUC this far above the price-and-volume baseline, with other data columns in use, is
# flagged as possible look-ahead: on our planted tests real signals gave 0.0-0.03 over a linear model.
LOOKAHEAD_MARGIN = 0.10
MAX_FIT_ROWS = 200_000  # training events the logistic regression is fitted on at most (drawn evenly)
_LEVEL = 0.95
_BOOT_CELLS = 20_000_000  # resamples x events per bootstrap, bounding its time and memory


def auc_of(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of ``score`` (shape (B, n), or (n,)) against labels ``y`` of the same shape,
    ties counted half (the Mann-Whitney statistic); NaN for a row with one class only."""
    from scipy.stats import rankdata

    y = np.atleast_2d(np.asarray(y, dtype=bool))
    score = np.atleast_2d(np.asarray(score, dtype=np.float64))
    ranks = rankdata(score, axis=1)
    n_pos = y.sum(axis=1)
    n_neg = y.shape[1] - n_pos
    u = np.where(y, ranks, 0.0).sum(axis=1) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def auc_difference(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, *, block: int, n_boot: int = 1000,
                   seed: int = 0) -> dict:
    """AUC(a) - AUC(b) on the same events (in time order) and its 95% moving-block bootstrap interval.

    Each resample joins random blocks of ``block`` consecutive events until it has as many events;
    both models are scored on the same resample, so what they share cancels. ``n_boot`` drops for
    very many events (resamples x events <= 2e7, at least 100); the count used is returned.
    """
    y = np.asarray(y, dtype=bool)
    a, b = np.asarray(score_a, dtype=np.float64), np.asarray(score_b, dtype=np.float64)
    n = len(y)
    if not (len(a) == len(b) == n):
        raise ValueError(f"labels and scores must have one length, got {n}, {len(a)}, {len(b)}")
    if block < 1:
        raise ValueError(f"block must be >= 1 events, got {block}")
    diff = float(auc_of(y, a)[0] - auc_of(y, b)[0])
    block = min(int(block), n)
    # resamples x events stay under _BOOT_CELLS (at least 100 resamples); 2e6 cells a chunk bound memory
    n_boot = int(min(n_boot, max(100, _BOOT_CELLS // max(n, 1))))
    chunk = max(1, min(100, 2_000_000 // max(n, 1)))
    rng = np.random.default_rng(seed)
    k = -(-n // block)  # blocks per resample
    draws = []
    for lo in range(0, n_boot, chunk):
        m = min(chunk, n_boot - lo)
        starts = rng.integers(0, n - block + 1, size=(m, k))
        idx = (starts[:, :, None] + np.arange(block)).reshape(m, -1)[:, :n]
        draws.append(auc_of(y[idx], a[idx]) - auc_of(y[idx], b[idx]))
    d = np.concatenate(draws)
    d = d[np.isfinite(d)]
    tail = (1.0 - _LEVEL) / 2.0
    low, high = (float(v) for v in np.quantile(d, [tail, 1.0 - tail])) if len(d) else (float("nan"),) * 2
    return {"value": diff, "low": low, "high": high, "level": _LEVEL, "n_boot": int(len(d)), "block": block,
            "method": f"moving-block bootstrap of the validation events (blocks of {block})"}


def fit_logistic(x_train: np.ndarray, y_train: np.ndarray, *, seed: int = 0):
    """A fitted scikit-learn LogisticRegression (L2, C=1) on at most ``MAX_FIT_ROWS`` training rows."""
    from sklearn.linear_model import LogisticRegression

    x, y = np.asarray(x_train, dtype=np.float64), np.asarray(y_train)
    if len(x) > MAX_FIT_ROWS:
        keep = np.linspace(0, len(x) - 1, MAX_FIT_ROWS).astype(np.int64)
        x, y = x[keep], y[keep]
    return LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(x, y)


def linear_baselines(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                     agent_val_score: np.ndarray, *, names: list[str], sources: dict, block: int,
                     seed: int = 0) -> dict:
    """The card's ``linear_baseline`` section: the logistic regression's validation AUC and log-loss, the
    agent-minus-baseline AUC difference with its interval, and the price-and-volume-only baseline's AUC
    when other data columns are in use. Rows are the normalised features at each labelled bar."""
    from sklearn.metrics import log_loss

    y_tr, y_va = np.asarray(y_train) > 0.5, np.asarray(y_val) > 0.5
    out: dict = {"model": f"logistic regression (L2, C=1) on the last bar's {len(names)} normalised features"}
    if len(np.unique(y_tr)) < 2 or len(y_va) == 0:
        return {**out, "val_auc": None, "val_logloss": None, "auc_difference": None, "price_volume": None,
                "note": "not fitted: one training label class or no validation events"}
    model = fit_logistic(x_train, y_tr, seed=seed)
    p_va = model.predict_proba(np.asarray(x_val, dtype=np.float64))[:, 1]
    two_classes = len(np.unique(y_va)) == 2
    out.update(val_auc=float(auc_of(y_va, p_va)[0]) if two_classes else None, val_logloss=float(log_loss(y_va, p_va, labels=[False, True])),
               auc_difference=(auc_difference(y_va, agent_val_score, p_va, block=block, seed=seed)
                               if two_classes else None))
    other = sorted({c for col in names for c in sources.get(col, ())} - PRICE_VOLUME)
    out["price_volume"] = None
    if other:
        keep = [i for i, col in enumerate(names) if set(sources.get(col, ())) <= PRICE_VOLUME]
        pv = {"other_columns": other, "features": [names[i] for i in keep], "val_auc": None}
        if keep and two_classes:
            m = fit_logistic(np.asarray(x_train)[:, keep], y_tr, seed=seed)
            pv["val_auc"] = float(auc_of(y_va, m.predict_proba(np.asarray(x_val, np.float64)[:, keep])[:, 1])[0])
        out["price_volume"] = pv
    return out
