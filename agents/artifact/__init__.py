"""The agent file and what is said about it: ``metadata`` (the card and its validation), ``export`` (ONNX,
parity-checked), ``runtime`` (``OnnxAgent``), ``inspect`` (the printed card), ``evaluation`` (metrics beside
no-skill baselines), ``baseline`` (logistic regression, LightGBM) and ``verdict`` (the card's one line).
Imports ``data``, ``model`` and ``resources``, never ``training``. Names load on first use.
"""

from typing import TYPE_CHECKING

from datafeeds.lazy import lazy_exports

if TYPE_CHECKING:
    from .export import ExportError, export_agent
    from .metadata import AgentFileError
    from .runtime import OnnxAgent

_EXPORTS = {"ExportError": ".export", "export_agent": ".export", "AgentFileError": ".metadata",
            "OnnxAgent": ".runtime"}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = list(_EXPORTS)
