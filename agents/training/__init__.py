"""Training, the top of ``agents``: ``config`` (``TrainConfig``, the run's settings), ``trainer`` (the loop and
pipeline, in process), ``staged`` (its steps in child processes), ``cli`` (``python -m agents.train``),
``checkpoint`` (resumable state) and ``compare`` (the agent against its baselines across CPCV paths, which
retrains it). Names load on first use.
"""

from typing import TYPE_CHECKING

from datafeeds.lazy import lazy_exports

if TYPE_CHECKING:
    from .compare import compare_cpcv
    from .config import TrainConfig

_EXPORTS = {"TrainConfig": ".config", "compare_cpcv": ".compare"}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = list(_EXPORTS)
