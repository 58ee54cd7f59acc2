"""The learner: causal features, lazy windows, TransformerAgent, focal loss, hardware profiles,
training (``python -m agents.train``), ONNX export and the OnnxAgent runtime.

Names that need torch load it on first use (PEP 562 ``__getattr__``): backtesting a saved agent
(``OnnxAgent``) runs on onnxruntime alone, without torch's second of import and ~1 GB of memory.
``from agents import *`` takes every name, so it loads torch.
"""

import importlib
from typing import TYPE_CHECKING

from .features import FEATURES, FeatureConfig, FeatureSpec, compute_features, fracdiff_weights, register_feature
from .metadata import AgentFileError
from .runtime import OnnxAgent

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from .dataset import LazySequenceDataset
    from .export import ExportError, export_agent
    from .hardware import (
        HardwareError, Profile, Resources, check_fits, choose_profile, detect, estimate_train_memory, require_cuda,
    )
    from .losses import FocalLoss, constant_prediction_loss, focal_loss
    from .model import ModelConfig, TransformerAgent

_NEEDS_TORCH = {  # public name -> its module
    "LazySequenceDataset": ".dataset",
    "ExportError": ".export",
    "export_agent": ".export",
    "HardwareError": ".hardware",
    "Profile": ".hardware",
    "Resources": ".hardware",
    "check_fits": ".hardware",
    "choose_profile": ".hardware",
    "detect": ".hardware",
    "estimate_train_memory": ".hardware",
    "require_cuda": ".hardware",
    "FocalLoss": ".losses",
    "constant_prediction_loss": ".losses",
    "focal_loss": ".losses",
    "ModelConfig": ".model",
    "TransformerAgent": ".model",
}


def __getattr__(name: str):
    module = _NEEDS_TORCH.get(name)
    if module is None:
        raise AttributeError(f"module 'agents' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_NEEDS_TORCH))


__all__ = [
    "FEATURES",
    "FeatureConfig",
    "FeatureSpec",
    "compute_features",
    "fracdiff_weights",
    "register_feature",
    "LazySequenceDataset",
    "ModelConfig",
    "TransformerAgent",
    "FocalLoss",
    "focal_loss",
    "constant_prediction_loss",
    "HardwareError",
    "Profile",
    "Resources",
    "detect",
    "choose_profile",
    "require_cuda",
    "estimate_train_memory",
    "check_fits",
    "ExportError",
    "export_agent",
    "AgentFileError",
    "OnnxAgent",
]
