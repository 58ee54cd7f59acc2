"""The agent card: JSON metadata embedded in every exported ONNX agent.

An agent file must be usable with no other input, so it carries its feature spec, sequence
length, normalisation, Triple Barrier settings, threshold, data provenance and metrics.
"""

from __future__ import annotations

import json
from importlib import metadata as _importlib_metadata

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
