"""Labels for supervised learning on bars: Wilder ATR, Triple Barrier labels, their uniqueness weights,
purged splits, bet sizes from probabilities (AFML ch. 10); and the trading rules that share the labels'
barriers (``labeling.rules``).

Names load their module on first use (PEP 562), so the command lines read the rules' defaults without numba.
"""

from typing import TYPE_CHECKING

from datafeeds.lazy import lazy_exports

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from .average_true_range import atr
    from .bet_sizing import average_active, bet_size, entry_sizes
    from .primary import PRIMARIES, BothRule, MomentumRule, SmaCrossRule, direction_bets, parse_primary, primary_side
    from .rules import BarrierRules, Costs, TBMConfig
    from .splits import (CPCVSplit, Fold, calendar_cut, cpcv_paths, cpcv_splits, events_within,
                         purged_train_val_split, walk_forward_folds)
    from .tbm import event_sides, label_spans, triple_barrier_labels
    from .weights import average_uniqueness

_EXPORTS = {  # public name -> its module
    "atr": ".average_true_range",  # the module is not named atr: its import would shadow the function
    "TBMConfig": ".rules",
    "BarrierRules": ".rules",
    "Costs": ".rules",
    "triple_barrier_labels": ".tbm",
    "event_sides": ".tbm",
    "bet_size": ".bet_sizing",
    "entry_sizes": ".bet_sizing",
    "average_active": ".bet_sizing",
    "PRIMARIES": ".primary",
    "SmaCrossRule": ".primary",
    "MomentumRule": ".primary",
    "parse_primary": ".primary",
    "primary_side": ".primary",
    "direction_bets": ".primary",
    "BothRule": ".primary",
    "label_spans": ".tbm",
    "average_uniqueness": ".weights",
    "Fold": ".splits",
    "purged_train_val_split": ".splits",
    "walk_forward_folds": ".splits",
    "events_within": ".splits",
    "calendar_cut": ".splits",
    "CPCVSplit": ".splits",
    "cpcv_splits": ".splits",
    "cpcv_paths": ".splits",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = list(_EXPORTS)
