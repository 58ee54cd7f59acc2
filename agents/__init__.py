"""The learner: causal features, lazy windows, TransformerAgent, focal loss, hardware profiles,
training (``python -m agents.train``), ONNX export and the OnnxAgent runtime."""

from .dataset import LazySequenceDataset
from .export import ExportError, export_agent
from .features import FEATURES, FeatureConfig, FeatureSpec, compute_features, fracdiff_weights, register_feature
from .hardware import (
    HardwareError,
    Profile,
    Resources,
    check_fits,
    choose_profile,
    detect,
    estimate_train_memory,
    require_cuda,
)
from .losses import FocalLoss, constant_prediction_loss, focal_loss
from .metadata import AgentFileError
from .model import ModelConfig, TransformerAgent
from .runtime import OnnxAgent

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
