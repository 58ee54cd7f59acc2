"""The agent against its baselines across combinatorial purged cross-validation paths (AFML ch. 12).

One validation split gives one AUC per model, and one split can flatter any of them. Here the agent, the
logistic baseline and the gradient-boosting baseline are each retrained on every CPCV split of a frame
(same labels, training events, sample weights and normalisation) and scored on the split's test groups.
A path takes every group once; its AUC is the mean of its groups' AUCs, each from the model that did not
train on that group. The paired difference (agent minus baseline) is taken path by path.

Early stopping never sees a test group: the agent stops on, and the GBM baseline early-stops on, the last
``STOP_FRACTION`` of the split's training events (the agent's inner training events purged ``horizon``
bars before them, so no inner training label reaches into them).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import pandas as pd

from labeling import cpcv_paths, cpcv_splits

from ..artifact.baseline import GBM_LAGS, GBM_STOP_FRACTION, MAX_FIT_ROWS, evenly, fit_gbm, fit_logistic, gbm_fit_rows
from ..artifact.evaluation import loss_weights, predict_logits, roc_auc
from ..data.prepare import full_window_ends, prepare_blocks
from .config import TrainConfig

log = logging.getLogger(__name__)

STOP_FRACTION = GBM_STOP_FRACTION  # the last share of a split's training events that early-stops the agent
MODELS = ("agent", "logistic", "gbm")


def _test_ends(prep, seq_len: int, r: range) -> np.ndarray:
    """Labelled bars of test group ``r`` with a full window of finite features."""
    ends = full_window_ends(prep.x, seq_len, r)
    return ends[np.isfinite(prep.y[ends])]


def _inner_split(ends: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(inner train, stop) events of a split's time-ordered training events: the last ``STOP_FRACTION`` stop,
    and the training events whose label could reach the first of them (``horizon`` bars) are purged."""
    n_stop = max(1, int(round(len(ends) * STOP_FRACTION)))
    before, stop = ends[: len(ends) - n_stop], ends[len(ends) - n_stop:]
    return before[before + horizon < stop[0]], stop


def _split_scores(cfg: TrainConfig, df: pd.DataFrame, sp) -> dict:
    """Train the three models on one split's training blocks; each test group's labels and scores."""
    import torch  # here: torch only when a comparison runs

    from .trainer import fit

    prep = prepare_blocks(cfg, df, sp.train)
    inner, stop = _inner_split(prep.train_ends, cfg.horizon)
    if len(inner) == 0 or len(np.unique(prep.y[inner])) < 2 or len(np.unique(prep.y[stop])) < 2:
        raise ValueError(f"split {sp.split} (test groups {sp.test_groups}): too few training events of both classes "
                         f"to train and early-stop on; use fewer groups or more bars")
    t0 = time.perf_counter()
    res = fit(cfg, dataclasses.replace(prep, train_ends=inner, val_ends=stop), checkpoint_dir=None, progress=False)
    agent_seconds = time.perf_counter() - t0
    # the baselines fit on all the split's training events, in time order; GBM early-stops on the same tail
    y_tr = prep.labels("train") > 0.5
    ids = evenly(len(y_tr), MAX_FIT_ROWS)
    logistic = fit_logistic(prep.last_rows("train", ids), y_tr[ids], seed=cfg.seed)
    k = min(cfg.seq_len, GBM_LAGS)
    ids = evenly(len(y_tr), gbm_fit_rows(k * len(prep.names)))
    weights = loss_weights(cfg, prep)
    gbm = fit_gbm(prep.last_windows("train", k, ids), y_tr[ids], weight=None if weights is None else weights[ids],
                  n_stop=int(round(len(ids) * GBM_STOP_FRACTION)), seed=cfg.seed)
    groups = {}
    for g, r in zip(sp.test_groups, sp.test):
        test = dataclasses.replace(prep, val_ends=_test_ends(prep, cfg.seq_len, r))
        y = test.labels("val") > 0.5
        if len(y) == 0:
            groups[g] = {"events": 0, "positive_rate": None, "auc": dict.fromkeys(MODELS)}
            continue
        scores = {
            "agent": predict_logits(res["model"], test.dataset("val", cfg.seq_len), torch.device("cpu")),
            "logistic": logistic.predict_proba(np.asarray(test.last_rows("val"), np.float64))[:, 1],
            "gbm": gbm.predict_proba(test.last_windows("val", k))[:, 1],
        }
        groups[g] = {"events": int(len(y)), "positive_rate": float(y.mean()),
                     "auc": {m: roc_auc(y, s) for m, s in scores.items()}}
    return {"split": sp.split, "test_groups": list(sp.test_groups), "train_events": int(len(prep.train_ends)),
            "inner_train_events": int(len(inner)), "stop_events": int(len(stop)),
            "best_epoch": int(res["state"]["best_epoch"]), "epochs_run": len(res["state"]["history"]),
            "agent_seconds": agent_seconds, "gbm_trees": int(gbm.best_iteration_ or gbm.booster_.current_iteration()),
            "groups": groups}


def compare_cpcv(cfg: TrainConfig, df: pd.DataFrame, n_groups: int, k_test: int, *, on_split=None) -> dict:
    """Agent, logistic and GBM validation AUC on every CPCV path of ``df`` and the paired differences.

    ``cfg`` sets the agent, labels and features (its ``holdout`` and ``val_fraction`` are not used: CPCV
    decides what is tested; ``data`` only names ``df`` in errors). ``on_split(record)`` is called after each
    split (progress).
    """
    spec = cfg.feature_spec.pinned(df.columns)
    purge, embargo = cfg.horizon, spec.warmup + cfg.seq_len - 1
    splits = cpcv_splits(len(df), n_groups, k_test, purge=purge, embargo=embargo)
    t0 = time.perf_counter()
    records = []
    for sp in splits:
        rec = _split_scores(cfg, df, sp)
        records.append(rec)
        log.info("cpcv split %d/%d (test groups %s): best epoch %d, %.0f s", sp.split + 1, len(splits),
                 sp.test_groups, rec["best_epoch"], rec["agent_seconds"])
        if on_split is not None:
            on_split(rec)
    by_split = {r["split"]: r for r in records}
    paths = []
    for path in cpcv_paths(splits, n_groups):
        aucs = {m: [by_split[s]["groups"][g]["auc"][m] for g, s in path] for m in MODELS}
        if any(a is None for v in aucs.values() for a in v):
            continue  # a test group with one label class: no AUC on this path
        mean = {m: float(np.mean(v)) for m, v in aucs.items()}
        paths.append({"groups": [[g, s] for g, s in path], "auc": mean,
                      "agent_minus_logistic": mean["agent"] - mean["logistic"],
                      "agent_minus_gbm": mean["agent"] - mean["gbm"],
                      "agent_minus_best": mean["agent"] - max(mean["logistic"], mean["gbm"])})
    return {"n_groups": n_groups, "k_test": k_test, "n_splits": len(splits), "n_paths": len(paths),
            "purge": purge, "embargo": embargo, "bars": len(df), "first_bar": str(df.index[0]),
            "last_bar": str(df.index[-1]), "paths": paths, "splits": records,
            "summary": summarise(paths), "seconds": time.perf_counter() - t0,
            "note": ("paths share training data, so their spread is not an interval; a difference positive on "
                     "every path is consistent, not significant")}


def summarise(paths: list[dict]) -> dict:
    """Median, min and max over paths of each model's AUC and of each paired difference, and the share of
    paths on which the agent is ahead."""
    out: dict = {}
    keys = [f"auc_{m}" for m in MODELS] + ["agent_minus_logistic", "agent_minus_gbm", "agent_minus_best"]
    for key in keys:
        v = np.array([p["auc"][key[4:]] if key.startswith("auc_") else p[key] for p in paths], dtype=np.float64)
        out[key] = ({"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()),
                     **({"share_positive": float(np.mean(v > 0))} if not key.startswith("auc_") else {})}
                    if len(v) else None)
    return out
