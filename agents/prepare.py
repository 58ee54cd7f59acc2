"""Training data: features, Triple Barrier labels and a purged split, normalised on training bars only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from datafeeds import load_ohlcv
from labeling import events_within, purged_train_val_split, triple_barrier_labels

from .config import TrainConfig
from .features import FeatureSpec, compute_features


@dataclass
class Prepared:
    """Normalised features, labels and the purged train/validation windows."""

    x: np.ndarray  # (N, F) float32, normalised with training statistics
    y: np.ndarray  # (N,) float32, NaN where a bar has no label
    names: list[str]
    spec: FeatureSpec
    mean: np.ndarray
    std: np.ndarray
    train_ends: np.ndarray  # bar positions of training windows' last bars (= labelled bars)
    val_ends: np.ndarray
    index: pd.DatetimeIndex
    holdout_start: pd.Timestamp | None
    source: str
    sha256: str


def prepare(cfg: TrainConfig) -> Prepared:
    """Load, cut the holdout, featurise, label and split; raises DataError/ValueError with a clear message."""
    df = load_ohlcv(cfg.data, start=cfg.start, end=cfg.end)
    cut = len(df) - int(round(len(df) * cfg.holdout))
    fit_df = df.iloc[:cut]
    pos, t1, x, names, spec, y = _featurise_and_label(cfg, fit_df, what="bars before the holdout")
    train_ends, val_ends = purged_train_val_split(pos, t1, cfg.val_fraction, purge=cfg.horizon)
    for name, ends in (("training", train_ends), ("validation", val_ends)):
        classes = np.unique(y[ends])
        if classes.size < 2:
            raise ValueError(
                f"{cfg.data}: every {name} label is {int(classes[0])} with --pt {cfg.pt} --sl {cfg.sl} "
                f"--horizon {cfg.horizon}; nothing to learn: use barriers the price can reach"
            )
    return _assemble(cfg, fit_df, x, names, spec, y, train_ends, val_ends,
                     holdout_start=df.index[cut] if cut < len(df) else None)


def prepare_segments(cfg: TrainConfig, df: pd.DataFrame, train: range, val: range | None) -> Prepared:
    """Prepare explicit bar segments of ``df`` (walk-forward folds): events whose whole label span
    lies inside ``train`` train, those inside ``val`` validate; nothing after the last segment is used."""
    stop = (val or train).stop
    part = df.iloc[:stop]
    pos, t1, x, names, spec, y = _featurise_and_label(cfg, part, what="bars up to the segment end")
    train_ends = events_within(pos, t1, train)
    val_ends = events_within(pos, t1, val) if val is not None else np.array([], dtype=np.int64)
    if train_ends.size == 0:
        raise ValueError(f"no labelled training window inside bars {train.start}..{train.stop - 1}; use longer segments")
    if val is not None and val_ends.size == 0:
        raise ValueError(f"no labelled validation window inside bars {val.start}..{val.stop - 1}; use longer segments")
    return _assemble(cfg, part, x, names, spec, y, train_ends, val_ends,
                     holdout_start=df.index[stop] if stop < len(df) else None)


def _featurise_and_label(cfg: TrainConfig, df: pd.DataFrame, *, what: str):
    """Features, labels and the label spans of the events that have a full window of features."""
    spec = cfg.feature_spec.pinned(df.columns)
    min_bars = spec.warmup + cfg.seq_len + cfg.horizon + 2
    if len(df) < min_bars:
        raise ValueError(
            f"{cfg.data}: {len(df)} {what}, but seq_len {cfg.seq_len} + feature warm-up "
            f"{spec.warmup} + horizon {cfg.horizon} need at least {min_bars}; use more data or lower --seq-len"
        )
    x, names = compute_features(df, spec)
    labels = triple_barrier_labels(df, config=cfg.tbm)
    pos = df.index.get_indexer(labels.index)
    t1 = df.index.get_indexer(labels["t1"])
    usable = pos >= spec.warmup + cfg.seq_len - 1  # a full window of finite features ends there
    if not usable.any():
        raise ValueError(f"{cfg.data}: no labelled bar has a full {cfg.seq_len}-bar window of features; lower --seq-len")
    y = np.full(len(df), np.nan, dtype=np.float32)
    y[pos] = labels["label"].to_numpy(np.float32)
    return pos[usable], t1[usable], x, names, spec, y


def _assemble(cfg, df, x, names, spec, y, train_ends, val_ends, *, holdout_start) -> Prepared:
    # normalisation from the bars the training windows cover, never from validation
    lo, hi = int(train_ends.min()) - cfg.seq_len + 1, int(train_ends.max()) + 1
    mean = np.nanmean(x[lo:hi].astype(np.float64), axis=0)
    std = np.nanstd(x[lo:hi].astype(np.float64), axis=0)
    std = np.where(std > 1e-12, std, 1.0)  # a constant feature (e.g. zero volume) stays 0, not NaN
    return Prepared(
        x=((x - mean) / std).astype(np.float32), y=y, names=names, spec=spec, mean=mean, std=std,
        train_ends=train_ends, val_ends=val_ends, index=df.index, holdout_start=holdout_start,
        source=str(df.attrs.get("source", cfg.data)), sha256=str(df.attrs.get("sha256", "")),
    )
