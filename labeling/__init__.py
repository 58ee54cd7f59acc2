"""Labels for supervised learning on bars: Wilder ATR, Triple Barrier labels, their uniqueness weights,
purged splits."""

from .atr import atr
from .splits import (CPCVSplit, Fold, calendar_cut, cpcv_paths, cpcv_splits, events_within, purged_train_val_split,
                     walk_forward_folds)
from .tbm import TBMConfig, label_spans, triple_barrier_labels
from .weights import average_uniqueness

__all__ = [
    "atr",
    "TBMConfig",
    "triple_barrier_labels",
    "label_spans",
    "average_uniqueness",
    "Fold",
    "purged_train_val_split",
    "walk_forward_folds",
    "events_within",
    "calendar_cut",
    "CPCVSplit",
    "cpcv_splits",
    "cpcv_paths",
]
