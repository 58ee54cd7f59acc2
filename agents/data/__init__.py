"""What the model reads: ``features`` (the causal registry; kernels in ``_feature_kernels``), ``store`` (a
universe's features and labels on disk), ``dataset`` and ``pooled`` (lazy windows over one or many
instruments), ``prepare`` (labels, purged split, normalisation) and ``feed`` (batches to the device).
Imports neither ``model`` nor anything above. Names load on first use.
"""

from typing import TYPE_CHECKING

from datafeeds.lazy import lazy_exports

if TYPE_CHECKING:
    from .dataset import LazySequenceDataset
    from .features import FEATURES, FeatureConfig, FeatureSpec, compute_features, fracdiff_weights, register_feature
    from .feed import ResidentWindows, prefetch
    from .pooled import PooledSequenceDataset, shuffled_ids
    from .store import FeatureStore

_EXPORTS = {
    "FEATURES": ".features",
    "FeatureConfig": ".features",
    "FeatureSpec": ".features",
    "compute_features": ".features",
    "fracdiff_weights": ".features",
    "register_feature": ".features",
    "FeatureStore": ".store",
    "LazySequenceDataset": ".dataset",
    "PooledSequenceDataset": ".pooled",
    "shuffled_ids": ".pooled",
    "ResidentWindows": ".feed",
    "prefetch": ".feed",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = list(_EXPORTS)
