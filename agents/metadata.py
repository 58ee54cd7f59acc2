"""The agent card: JSON metadata embedded in every exported ONNX agent.

An agent file must be usable with no other input, so it carries its feature spec, sequence
length, normalisation, Triple Barrier settings, threshold, data provenance and metrics.
"""

from __future__ import annotations

import json
from importlib import metadata as _importlib_metadata

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the card module stays importable on its own
    from .config import TrainConfig
    from .model import TransformerAgent
    from .prepare import Prepared

METADATA_KEY = "tbm_agent"  # key in ModelProto.metadata_props holding the JSON card
FORMAT = "tbm-agent"
FORMAT_VERSION = 1  # bump on an incompatible change of the card or the model's input/output

_REQUIRED = {
    "format": str,
    "format_version": int,
    "package_version": str,
    "input_name": str,
    "output_name": str,
    "features": dict,
    "feature_names": list,
    "seq_len": int,
    "warmup": int,
    "normalisation": dict,
    "tbm": dict,
    "threshold": float,
    "model": dict,
    "dataset": dict,
    "metrics": dict,
    "training_command": str,
}


class AgentFileError(ValueError):
    """An agent file is missing, not ONNX, lacks our metadata, or was made by an incompatible version."""


def package_version() -> str:
    try:
        return _importlib_metadata.version("tbm-backtest")
    except _importlib_metadata.PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


def dumps(card: dict) -> str:
    return json.dumps(card, sort_keys=True, allow_nan=False)


def parse(text: str | None, *, path: str) -> dict:
    """Parse and validate a card read from ``path``; raise AgentFileError naming what is wrong."""
    if text is None:
        raise AgentFileError(
            f"{path}: ONNX file has no '{METADATA_KEY}' metadata; it was not exported by "
            "agents.export (train one with: python -m agents.train)"
        )
    try:
        card = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AgentFileError(f"{path}: '{METADATA_KEY}' metadata is not valid JSON ({exc})") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise AgentFileError(f"{path}: metadata is not a {FORMAT} card")
    version = card.get("format_version")
    if version != FORMAT_VERSION:
        raise AgentFileError(
            f"{path}: agent format version {version!r} (made by tbm-backtest "
            f"{card.get('package_version', '?')}) is incompatible with this version "
            f"({FORMAT_VERSION}, tbm-backtest {package_version()}); re-export or retrain the agent"
        )
    for key, kind in _REQUIRED.items():
        value = card.get(key)
        if kind is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, kind):
            raise AgentFileError(f"{path}: metadata field '{key}' is missing or not a {kind.__name__}")
    norm = card["normalisation"]
    n = len(card["feature_names"])
    if len(norm.get("mean", [])) != n or len(norm.get("std", [])) != n:
        raise AgentFileError(f"{path}: normalisation statistics do not match the {n} features")
    return card


def build_card(cfg: TrainConfig, prep: Prepared, model: TransformerAgent, metrics: dict, command: str) -> dict:
    """The card of a trained model: everything ``OnnxAgent`` needs, plus provenance and metrics."""
    import torch  # here, not at the top: reading agents (OnnxAgent) must not load torch

    idx = prep.index
    train_lo = int(prep.train_ends.min()) - cfg.seq_len + 1
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": package_version(),
        "torch_version": torch.__version__,
        "input_name": "x",
        "output_name": "logit",
        "output": "logit of P(upper barrier touched first); probability = sigmoid(logit)",
        "features": prep.spec.to_dict(),
        "feature_names": prep.names,
        "seq_len": cfg.seq_len,
        "warmup": prep.spec.warmup + cfg.seq_len - 1,
        "normalisation": {"mean": prep.mean.tolist(), "std": prep.std.tolist()},
        "tbm": cfg.tbm.to_dict(),
        "threshold": float(metrics["threshold"]),
        "model": model.config.to_dict(),
        "dataset": {
            "name": cfg.data,
            "source": prep.source,
            "sha256": prep.sha256,
            "first_bar": str(idx[0]),
            "last_bar_used": str(idx[-1]),  # nothing after this bar was seen in training
            "holdout_start": None if prep.holdout_start is None else str(prep.holdout_start),
            "train": [str(idx[train_lo]), str(idx[int(prep.train_ends.max())])],
            # None for a refit that trains on its validation block too (walk-forward)
            "validation": ([str(idx[int(prep.val_ends.min())]), str(idx[int(prep.val_ends.max())])]
                           if len(prep.val_ends) else None),
        },
        "metrics": metrics,
        "train_config": cfg.to_dict(),
        "training_command": command,
    }
