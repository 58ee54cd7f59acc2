"""The learner: causal features, lazy windows, TransformerAgent, focal loss, hardware profiles,
training (``python -m agents.train``), ONNX export and the OnnxAgent runtime.

Subpackages by job, each importing only those below it (``tests/test_layering.py``):
``training`` (settings, loop, staged steps, CLI, checkpoints, CPCV comparison) -> ``artifact`` (the agent
file: card, export, runtime, inspect, evaluation, baselines, verdict) -> ``data`` (features, store,
windows, preparation, feeds) and ``model`` (architecture, losses, optimiser) -> ``resources`` (hardware,
memory watchdog).

Every name loads its module on first use (PEP 562 ``__getattr__``): ``python -m agents.train --help``
answers without importing pandas or torch, and backtesting a saved agent (``OnnxAgent``) runs on
onnxruntime alone, without torch's second of import and ~1 GB of memory.
``from agents import *`` takes every name, so it loads torch.
"""

from typing import TYPE_CHECKING

from datafeeds.lazy import lazy_exports

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from .artifact.export import ExportError, export_agent
    from .artifact.metadata import AgentFileError
    from .artifact.runtime import OnnxAgent
    from .data.dataset import LazySequenceDataset
    from .data.features import (
        FEATURES, FeatureConfig, FeatureSpec, compute_features, fracdiff_weights, register_feature,
    )
    from .data.feed import ResidentWindows, prefetch
    from .data.pooled import PooledSequenceDataset, shuffled_ids
    from .data.store import FeatureStore
    from .model.config import ModelConfig
    from .model.losses import FocalLoss, constant_prediction_loss, focal_loss
    from .model.optim import AdamW
    from .model.transformer import TransformerAgent
    from .resources.hardware import (
        HardwareError, Profile, Resources, check_fits, choose_profile, detect, estimate_train_memory, require_cuda,
    )
    from .training.compare import compare_cpcv
    from .training.config import TrainConfig

_EXPORTS = {  # public name -> its module
    "FEATURES": ".data.features",
    "FeatureConfig": ".data.features",
    "FeatureSpec": ".data.features",
    "compute_features": ".data.features",
    "fracdiff_weights": ".data.features",
    "register_feature": ".data.features",
    "LazySequenceDataset": ".data.dataset",
    "ResidentWindows": ".data.feed",
    "prefetch": ".data.feed",
    "compare_cpcv": ".training.compare",
    "ModelConfig": ".model.config",
    "TrainConfig": ".training.config",
    "TransformerAgent": ".model.transformer",
    "FocalLoss": ".model.losses",
    "focal_loss": ".model.losses",
    "constant_prediction_loss": ".model.losses",
    "HardwareError": ".resources.hardware",
    "Profile": ".resources.hardware",
    "Resources": ".resources.hardware",
    "detect": ".resources.hardware",
    "choose_profile": ".resources.hardware",
    "require_cuda": ".resources.hardware",
    "estimate_train_memory": ".resources.hardware",
    "check_fits": ".resources.hardware",
    "ExportError": ".artifact.export",
    "export_agent": ".artifact.export",
    "AgentFileError": ".artifact.metadata",
    "OnnxAgent": ".artifact.runtime",
    "FeatureStore": ".data.store",
    "PooledSequenceDataset": ".data.pooled",
    "shuffled_ids": ".data.pooled",
    "AdamW": ".model.optim",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = list(_EXPORTS)
