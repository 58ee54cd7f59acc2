"""Honest metrics for a trained agent: every loss beside its no-skill baselines, AUC, drift check.

``cfg`` is the run's `TrainConfig`, read by attribute only: artifact/ never imports training/.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..model.losses import FocalLoss, best_constant_probability
from .baseline import GBM_LAGS, MAX_FIT_ROWS, evenly, gbm_baseline, gbm_fit_rows, linear_baselines

if TYPE_CHECKING:
    from ..data.prepare import Prepared
    from ..model.transformer import TransformerAgent


def roc_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC AUC, or None where it is undefined (one class only)."""
    from sklearn.metrics import roc_auc_score  # here: training imports this module; sklearn is heavy

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
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rng = np.random.default_rng(seed)

    def _take(x):
        x = np.asarray(x, dtype=np.float32)
        return x[rng.choice(len(x), max_rows, replace=False)] if len(x) > max_rows else x

    a, b = _take(train_x), _take(val_x)
    if len(a) < 5 or len(b) < 5:
        return None
    x = np.concatenate([a, b])
    y = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    from ..resources.hardware import detect

    clf = HistGradientBoostingClassifier(max_iter=100, max_depth=3, random_state=seed)
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    # OpenMP would start a thread per host core; on a busy or CPU-limited machine extra threads only wait
    with threadpool_limits(limits=detect().effective_cpus, user_api="openmp"):
        proba = cross_val_predict(clf, x, y, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, proba))


# Working-set growth of `evaluate` over torch and the data (measurements: docs/DECISIONS.md)
EVALUATION_MEMORY = 100 * 2**20
# Windows per forward pass when scoring: attention maps grow with it, the speed does not (docs/DECISIONS.md)
SCORE_BATCH = 256


def predict_logits(model, ds, device, batch_size: int = SCORE_BATCH) -> np.ndarray:
    """Logits of ``model`` over every window of ``ds`` (a LazySequenceDataset), in order."""
    model.eval()
    out = []
    with torch.no_grad():
        for xb, _ in ds.iter_batches(batch_size):
            out.append(model(xb.to(device)).float().cpu())
    return torch.cat(out).numpy().astype(np.float64)


def mean_loss(model, ds, loss_fn, device, batch_size: int = SCORE_BATCH) -> float:
    """``loss_fn`` over every window of ``ds`` (a dataset, or `agents.data.feed.ResidentWindows`), batch by batch:
    memory stays one batch whatever its size."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for xb, yb in ds.iter_batches(batch_size):
            logits = model(xb.to(device)).float().cpu().double()
            total += float(loss_fn(logits, yb.cpu().double())) * len(yb)
            count += len(yb)
    return total / count


def loss_of(loss_fn, logits: np.ndarray, y: np.ndarray) -> float:
    """``loss_fn`` of float64 logits and targets given as numpy arrays."""
    return float(loss_fn(torch.from_numpy(logits), torch.from_numpy(y.astype(np.float64))))


def weights_summary(cfg, prep) -> dict:
    """What the card records of the sample weights: the scheme and the training labels' uniqueness."""
    u = np.asarray(prep.weights("train"), dtype=np.float64)
    q = np.quantile(u, [0.0, 0.5, 1.0]) if len(u) else [None] * 3
    return {"scheme": cfg.sample_weights,
            "uniqueness": {"min": q[0], "median": q[1], "max": q[2], "mean": float(u.mean()) if len(u) else None},
            # sum of uniqueness: how many independent labels the overlapping ones are worth
            "effective_train_events": float(u.sum()), "train_events": int(len(u)),
            "note": ("loss weight = uniqueness / its mean over the training labels"
                     if cfg.sample_weights == "uniqueness"
                     else "every label weighs 1; the uniqueness is recorded for reference")}


def loss_weights(cfg, prep) -> np.ndarray | None:
    """Each training window's loss weight (``--sample-weights``): the label's average uniqueness scaled to
    mean 1, or None (every label 1). The trainer trains with these, and the GBM baseline fits with them."""
    if cfg.sample_weights == "none":
        return None
    u = np.asarray(prep.weights("train"), dtype=np.float64)
    return u / u.mean() if len(u) else u


# Validation cells (rows x lags x features) the gradient-boosting baseline scores per block.
_VAL_BLOCK_CELLS = 4_000_000


def gbm_baseline_of(cfg, prep: Prepared, y_tr: np.ndarray, y_va: np.ndarray, z_va: np.ndarray) -> dict:
    """The card's ``gbm_baseline``: LightGBM on the last min(seq_len, GBM_LAGS) bars of training windows drawn
    evenly (`gbm_fit_rows`), read in time order with the agent's sample weights; validation scored in blocks."""
    k = min(cfg.seq_len, GBM_LAGS)
    cols = k * len(prep.names)
    ids = evenly(len(y_tr), gbm_fit_rows(cols))
    ids = ids[np.argsort(prep.end_times("train", ids), kind="stable")]  # a universe's ids run instrument by instrument
    weights = loss_weights(cfg, prep)
    step = max(1, _VAL_BLOCK_CELLS // cols)
    val_blocks = (prep.last_windows("val", k, np.arange(lo, min(lo + step, len(y_va))))
                  for lo in range(0, len(y_va), step))
    return gbm_baseline(prep.last_windows("train", k, ids), y_tr[ids], val_blocks, y_va, z_va, lags=k,
                        weight=None if weights is None else weights[ids], block=cfg.horizon, seed=cfg.seed)


def primary_alone(rule: str, y_val: np.ndarray, ret_val: np.ndarray | None = None) -> dict:
    """The second baseline of a meta-labelled agent: its primary taking every bet. Its precision is the share of
    the bets that paid (the validation meta-labels' mean), which the agent's precision at its threshold must beat;
    with the bets' returns (``ret_val``: side x return at the barrier touched, gross of costs), their mean and the
    Sharpe of taking every bet, per bet (mean / standard deviation, not annualised: bets overlap)."""
    out = {"rule": rule, "val_bets": int(len(y_val)), "val_precision": float(np.mean(y_val)) if len(y_val) else None}
    if ret_val is not None:
        r = np.asarray(ret_val, dtype=np.float64)
        sd = float(np.std(r, ddof=1)) if len(r) > 1 else 0.0
        out.update(val_mean_return=float(np.mean(r)) if len(r) else None,
                   val_sharpe_per_bet=float(np.mean(r)) / sd if sd > 0 else None)
    return out


def evaluate(cfg, prep: Prepared, model: TransformerAgent, best_epoch: int, history: list) -> dict:
    """Metrics stored in the agent card: every loss next to its no-skill baseline."""
    loss_fn = FocalLoss(alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
    train_ds, val_ds = prep.dataset("train", cfg.seq_len), prep.dataset("val", cfg.seq_len)
    y_tr, y_va = prep.labels("train"), prep.labels("val")
    z_tr = predict_logits(model, train_ds, torch.device("cpu"))
    z_va = predict_logits(model, val_ds, torch.device("cpu"))
    base_rate = float(y_tr.mean())
    p_tr, p_va = 1 / (1 + np.exp(-z_tr)), 1 / (1 + np.exp(-z_va))
    threshold = cfg.threshold if cfg.threshold is not None else suggest_threshold(p_tr, base_rate)
    # No-skill references, all fitted on training labels and scored on each set: the base rate (the
    # issue's baseline, and the best constant under log-loss) and, for focal loss, the best constant,
    # which lies elsewhere; a model beating only the base rate under focal loss may just be recalibrated.
    p_const = best_constant_probability(torch.from_numpy(y_tr), cfg.focal_alpha, cfg.focal_gamma)
    bce = FocalLoss(alpha=None, gamma=0.0)  # = binary cross-entropy (log-loss)
    # the baseline fits on at most MAX_FIT_ROWS training windows, spread evenly: reading only those keeps
    # a large universe's rows out of memory
    fit_ids = evenly(len(y_tr), MAX_FIT_ROWS)
    baseline = linear_baselines(prep.last_rows("train", fit_ids), y_tr[fit_ids], prep.last_rows("val"), y_va, z_va,
                                names=list(prep.names), sources=prep.spec.sources(), block=cfg.horizon,
                                seed=cfg.seed)
    return {
        "train_loss": loss_of(loss_fn, z_tr, y_tr),
        "val_loss": loss_of(loss_fn, z_va, y_va),
        "val_loss_note": "from the epoch with the lowest validation loss (early stopping): optimistic",
        "baseline_train_loss": loss_fn.baseline(torch.from_numpy(y_tr), base_rate),
        "baseline_val_loss": loss_fn.baseline(torch.from_numpy(y_va), base_rate),
        "best_constant_p": p_const,
        "best_constant_train_loss": loss_fn.baseline(torch.from_numpy(y_tr), p_const),
        "best_constant_val_loss": loss_fn.baseline(torch.from_numpy(y_va), p_const),
        "val_logloss": loss_of(bce, z_va, y_va),
        "baseline_val_logloss": bce.baseline(torch.from_numpy(y_va), base_rate),
        "val_auc": roc_auc(y_va, z_va),
        "train_auc": roc_auc(y_tr, z_tr),
        "linear_baseline": baseline,
        "gbm_baseline": gbm_baseline_of(cfg, prep, y_tr, y_va, z_va),
        "sample_weights": weights_summary(cfg, prep),
        "threshold": threshold,
        "threshold_rule": "given" if cfg.threshold is not None else "train signal rate = train base rate",
        "val_at_threshold": precision_recall(y_va, p_va, threshold),
        "label_balance": {"train_positive_rate": base_rate, "val_positive_rate": float(y_va.mean()),
                          "train_events": int(len(y_tr)), "val_events": int(len(y_va))},
        # a price rule's bets alone (not "both", whose bets are the model's own)
        **({"primary": primary_alone(cfg.primary, y_va, None if getattr(prep, "bet_ret", None) is None
                                     else prep.bet_ret[prep.val_ends])}
           if cfg.primary and cfg.primary.split(":")[0] != "both" else {}),
        # features at each labelled bar: does validation look like training?
        "adversarial_auc": adversarial_auc(prep.rows("train"), prep.rows("val"), seed=cfg.seed),
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "history": history,
    }
