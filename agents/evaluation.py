"""Honest metrics for a trained agent: model loss beside the no-skill baseline, AUC, drift check."""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict


def roc_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC AUC, or None where it is undefined (one class only)."""
    y = np.asarray(y)
    if np.unique(y).size < 2:
        return None
    return float(roc_auc_score(y, p))


def suggest_threshold(train_proba: np.ndarray, base_rate: float) -> float:
    """Threshold at which the model signals on the training set as often as positives occur there.

    Chosen on training predictions only (never validation), so validation precision/recall at it is
    an honest estimate; focal loss shifts probabilities, so 0.5 would be arbitrary.
    """
    q = float(np.clip(1.0 - base_rate, 0.0, 1.0))
    return float(np.quantile(np.asarray(train_proba, dtype=np.float64), q))


def precision_recall(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """Precision, recall and signal rate of ``p >= threshold``; precision is None with no signals."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(p) >= threshold
    tp = int(np.sum(pred & y))
    n_pred = int(pred.sum())
    return {
        "precision": tp / n_pred if n_pred else None,
        "recall": tp / int(y.sum()) if y.any() else None,
        "signal_rate": n_pred / len(y) if len(y) else None,
    }


def adversarial_auc(train_x: np.ndarray, val_x: np.ndarray, *, seed: int = 0, max_rows: int = 20_000) -> float | None:
    """Cross-validated AUC of a classifier telling training rows from validation rows.

    ~0.5: validation looks like training; near 1: the feature distribution drifted (e.g. price-level
    features), so validation scores say little about the future.
    """
    rng = np.random.default_rng(seed)

    def _take(x):
        x = np.asarray(x, dtype=np.float32)
        return x[rng.choice(len(x), max_rows, replace=False)] if len(x) > max_rows else x

    a, b = _take(train_x), _take(val_x)
    if len(a) < 5 or len(b) < 5:
        return None
    x = np.concatenate([a, b])
    y = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    clf = HistGradientBoostingClassifier(max_iter=100, max_depth=3, random_state=seed)
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    proba = cross_val_predict(clf, x, y, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, proba))
