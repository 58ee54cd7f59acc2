"""The network and how it learns: ``config`` (``ModelConfig``, light), ``transformer`` (``TransformerAgent``),
``losses`` (focal loss and its no-skill baseline) and ``optim`` (AdamW without torch._dynamo).
Imports neither ``data`` nor anything above. Names load on first use.
"""

from typing import TYPE_CHECKING

from datafeeds.lazy import lazy_exports

if TYPE_CHECKING:
    from .config import ModelConfig
    from .losses import FocalLoss, constant_prediction_loss, focal_loss
    from .optim import AdamW
    from .transformer import TransformerAgent

_EXPORTS = {
    "ModelConfig": ".config",
    "TransformerAgent": ".transformer",
    "FocalLoss": ".losses",
    "focal_loss": ".losses",
    "constant_prediction_loss": ".losses",
    "AdamW": ".optim",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = list(_EXPORTS)
