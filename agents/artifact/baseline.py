"""The simple models every card stands beside: logistic regression on the last bar's features, and
gradient boosting (LightGBM) on the last bars' features.

A Transformer that cannot beat a linear model on the features of the bar it decides at has learnt
nothing its sequence adds. Both are fitted on the same training events (labels, split and purge)
and scored on the same validation events; the verdict compares their validation AUCs with a
moving-block bootstrap (blocks of the label horizon: overlapping Triple Barrier labels make
neighbouring events dependent, and resampling single events would understate the uncertainty).

The gradient-boosting baseline sees what the Transformer's sequence could add: the last ``GBM_LAGS``
bars' features, flattened, with their interactions (the verdict compares the agent with the better
of the two). It is fitted with the agent's sample weights; its number of trees is chosen by early
stopping on the last 20% of its training events in time order, never on validation.

A second linear baseline on the features computed from price and volume alone is fitted when some feature
reads other data columns (e.g. ``obi`` from ``bid_size``/``ask_size``): a validation AUC far above
it points at those columns, which may carry information from the future.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

__all__ = ["GBM_LAGS", "GBM_MAX_CELLS", "GBM_PARAMS", "LOOKAHEAD_MARGIN", "MAX_FIT_ROWS", "PRICE_VOLUME",
           "auc_difference", "auc_of", "evenly", "fit_gbm", "fit_logistic", "gbm_baseline", "gbm_fit_rows",
           "linear_baselines"]

PRICE_VOLUME = frozenset({"open", "high", "low", "close", "volume"})  # the columns every OHLCV file has
# AUC this far over the price-and-volume baseline, other columns in use, flags look-ahead (docs/DECISIONS.md)
LOOKAHEAD_MARGIN = 0.10
MAX_FIT_ROWS = 200_000  # training events the logistic regression is fitted on at most (drawn evenly)
GBM_LAGS = 16  # bars the gradient-boosting baseline reads (at most seq_len)
# float32 cells (rows x lags x features) of the gradient-boosting baseline's training matrix at most (32 MiB):
# its memory stays about the same whatever the number of features
GBM_MAX_CELLS = 8_000_000
# fixed, not tuned, the same for every agent; bins from 20,000 rows: LightGBM's default sample (200,000)
# holds 12 bytes per cell while it bins, more than the matrix itself
GBM_PARAMS = {"n_estimators": 300, "learning_rate": 0.05, "num_leaves": 15, "min_child_samples": 100,
              "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.8, "reg_lambda": 1.0,
              "bin_construct_sample_cnt": 20_000, "deterministic": True, "force_row_wise": True, "verbose": -1}
GBM_STOP_FRACTION = 0.2  # the last training events (in time order) that early stopping watches
GBM_STOP_ROUNDS = 30  # trees without improvement there before it stops
# few threads for small data (LightGBM's docs; measurements: docs/DECISIONS.md)
_ROWS_PER_THREAD = 100_000
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


def evenly(n: int, k: int) -> np.ndarray:
    """``min(n, k)`` positions of ``range(n)`` spread evenly, first and last included, ascending (int64)."""
    return np.linspace(0, n - 1, k).astype(np.int64) if n > k else np.arange(n, dtype=np.int64)


def fit_logistic(x_train: np.ndarray, y_train: np.ndarray, *, seed: int = 0):
    """A fitted scikit-learn LogisticRegression (L2, C=1) on at most ``MAX_FIT_ROWS`` training rows."""
    from sklearn.linear_model import LogisticRegression

    x, y = np.asarray(x_train, dtype=np.float64), np.asarray(y_train)
    if len(x) > MAX_FIT_ROWS:
        keep = evenly(len(x), MAX_FIT_ROWS)
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
    out.update(val_auc=float(auc_of(y_va, p_va)[0]) if two_classes else None,
               val_logloss=float(log_loss(y_va, p_va, labels=[False, True])),
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


def gbm_fit_rows(n_columns: int) -> int:
    """Training rows the gradient-boosting baseline reads at most for rows of ``n_columns`` values:
    ``MAX_FIT_ROWS``, fewer for wide rows (``GBM_MAX_CELLS``)."""
    return max(1, min(MAX_FIT_ROWS, GBM_MAX_CELLS // max(1, n_columns)))


def _gbm_threads(n_rows: int) -> int:
    """LightGBM's threads: one per ``_ROWS_PER_THREAD`` rows, at most the CPUs this process may run on
    (its affinity mask, not the host's count)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        usable = os.cpu_count() or 1
    return max(1, min(usable, 1 + n_rows // _ROWS_PER_THREAD))


def fit_gbm(x_train: np.ndarray, y_train: np.ndarray, *, weight: np.ndarray | None = None, n_stop: int = 0,
            seed: int = 0):
    """A fitted LightGBM classifier (``GBM_PARAMS``) on the rows before the last ``n_stop``, which early-stop
    it (binary log-loss, weighted as the fit); rows in time order, ``weight`` None for weight 1 each."""
    import lightgbm  # here: only the evaluation fits it

    x, y = np.asarray(x_train, dtype=np.float32), np.asarray(y_train) > 0.5
    w = None if weight is None else np.asarray(weight, dtype=np.float64)
    model = lightgbm.LGBMClassifier(**GBM_PARAMS, n_jobs=_gbm_threads(len(y)), random_state=seed)
    if n_stop <= 0:
        return model.fit(x, y, sample_weight=w)
    cut = len(y) - n_stop  # slices, not masks: views, so the rows are not copied
    return model.fit(x[:cut], y[:cut], sample_weight=None if w is None else w[:cut],
                     eval_X=(x[cut:],), eval_y=(y[cut:],), eval_sample_weight=None if w is None else [w[cut:]],
                     eval_metric="binary_logloss",
                     callbacks=[lightgbm.early_stopping(GBM_STOP_ROUNDS, first_metric_only=True, verbose=False)])


def gbm_baseline(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | Iterable[np.ndarray],
                 y_val: np.ndarray, agent_val_score: np.ndarray, *, lags: int, weight: np.ndarray | None = None,
                 block: int, seed: int = 0) -> dict:
    """The card's ``gbm_baseline`` section: LightGBM's validation AUC and log-loss, the agent-minus-GBM AUC
    difference with its interval, the trees kept and the rows fitted.

    Rows are the last ``lags`` bars' normalised features, flattened oldest first; training rows in time
    order (the last ``GBM_STOP_FRACTION`` early-stop the fit). ``x_val``: an array, or its row blocks in
    order, so a large validation set is scored without being whole in memory.
    """
    from sklearn.metrics import log_loss

    x_tr = np.asarray(x_train, dtype=np.float32)
    y_tr, y_va = np.asarray(y_train) > 0.5, np.asarray(y_val) > 0.5
    n_stop = int(round(len(y_tr) * GBM_STOP_FRACTION))
    p = GBM_PARAMS
    out: dict = {"model": f"gradient boosting (LightGBM, at most {p['n_estimators']} trees of {p['num_leaves']} "
                          f"leaves, learning rate {p['learning_rate']}) on the last {lags} bars' "
                          f"{x_tr.shape[1] // max(1, lags)} normalised features, early-stopped on the last "
                          f"{GBM_STOP_FRACTION:.0%} of its training events",
                 "lags": int(lags), "train_rows": int(len(y_tr)), "stop_rows": n_stop}
    if len(np.unique(y_tr[: len(y_tr) - n_stop])) < 2 or len(y_va) == 0:
        return {**out, "val_auc": None, "val_logloss": None, "auc_difference": None, "n_estimators": None,
                "note": "not fitted: one training label class or no validation events"}
    model = fit_gbm(x_tr, y_tr, weight=weight, n_stop=n_stop, seed=seed)
    blocks = [x_val] if isinstance(x_val, np.ndarray) else x_val
    p_va = np.concatenate([model.predict_proba(np.asarray(b, dtype=np.float32))[:, 1] for b in blocks])
    if len(p_va) != len(y_va):
        raise ValueError(f"got {len(p_va)} validation rows for {len(y_va)} validation labels")
    two_classes = len(np.unique(y_va)) == 2
    out.update(val_auc=float(auc_of(y_va, p_va)[0]) if two_classes else None,
               val_logloss=float(log_loss(y_va, p_va, labels=[False, True])),
               auc_difference=(auc_difference(y_va, agent_val_score, p_va, block=block, seed=seed)
                               if two_classes else None),
               n_estimators=int(model.best_iteration_ or model.booster_.current_iteration()))
    return out
