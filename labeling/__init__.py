"""Labels for supervised learning on bars: Wilder ATR, Triple Barrier labels, purged splits."""

from .atr import atr
from .splits import Fold, calendar_cut, events_within, purged_train_val_split, walk_forward_folds
from .tbm import TBMConfig, label_spans, triple_barrier_labels

__all__ = [
    "atr",
    "TBMConfig",
    "triple_barrier_labels",
    "label_spans",
    "Fold",
    "purged_train_val_split",
    "walk_forward_folds",
    "events_within",
    "calendar_cut",
]
