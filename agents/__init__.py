"""The learner: causal features, lazy windows, TransformerAgent, focal loss, hardware profiles,
training (``python -m agents.train``), ONNX export and the OnnxAgent runtime.

Every name loads its module on first use (PEP 562 ``__getattr__``): ``python -m agents.train --help``
answers without importing pandas or torch, and backtesting a saved agent (``OnnxAgent``) runs on
onnxruntime alone, without torch's second of import and ~1 GB of memory.
``from agents import *`` takes every name, so it loads torch.
"""

from typing import TYPE_CHECKING

from datafeeds.lazy import lazy_exports

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from .compare import compare_cpcv
    from .config import ModelConfig, TrainConfig
    from .dataset import LazySequenceDataset
    from .export import ExportError, export_agent
    from .feed import ResidentWindows, prefetch
    from .features import FEATURES, FeatureConfig, FeatureSpec, compute_features, fracdiff_weights, register_feature
    from .hardware import (
        HardwareError, Profile, Resources, check_fits, choose_profile, detect, estimate_train_memory, require_cuda,
    )
    from .losses import FocalLoss, constant_prediction_loss, focal_loss
    from .metadata import AgentFileError
    from .model import TransformerAgent
    from .optim import AdamW
    from .pooled import PooledSequenceDataset, shuffled_ids
    from .runtime import OnnxAgent
    from .store import FeatureStore

_EXPORTS = {  # public name -> its module
    "FEATURES": ".features",
    "FeatureConfig": ".features",
    "FeatureSpec": ".features",
    "compute_features": ".features",
    "fracdiff_weights": ".features",
    "register_feature": ".features",
    "LazySequenceDataset": ".dataset",
    "ResidentWindows": ".feed",
    "prefetch": ".feed",
    "compare_cpcv": ".compare",
    "ModelConfig": ".config",
    "TrainConfig": ".config",
    "TransformerAgent": ".model",
    "FocalLoss": ".losses",
    "focal_loss": ".losses",
    "constant_prediction_loss": ".losses",
    "HardwareError": ".hardware",
    "Profile": ".hardware",
    "Resources": ".hardware",
    "detect": ".hardware",
    "choose_profile": ".hardware",
    "require_cuda": ".hardware",
    "estimate_train_memory": ".hardware",
    "check_fits": ".hardware",
    "ExportError": ".export",
    "export_agent": ".export",
    "AgentFileError": ".metadata",
    "OnnxAgent": ".runtime",
    "FeatureStore": ".store",
    "PooledSequenceDataset": ".pooled",
    "shuffled_ids": ".pooled",
    "AdamW": ".optim",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = list(_EXPORTS)
