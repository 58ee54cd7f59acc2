"""The model's architecture: a frozen dataclass, validated on construction, recorded in every agent.

Importing this module is light (no numpy or torch): the trainer's settings build one without loading the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

_POSITIONAL = ("learned", "sinusoidal")
POOLING = ("last", "mean", "attention", "lags")  # how the encoded window becomes one vector


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a TransformerAgent; JSON round-trip via to_dict/from_dict."""

    n_features: int  # F, columns of the feature matrix
    seq_len: int  # L, bars per window
    d_model: int = 64  # width of the residual stream
    n_heads: int = 4  # attention heads; must divide d_model
    n_layers: int = 2  # encoder layers
    dim_feedforward: int = 128  # hidden width of each layer's MLP
    dropout: float = 0.1  # on embeddings, attention and MLP; inactive in eval()
    positional: str = "learned"  # "learned" (a trained (L, d_model) table) or "sinusoidal" (fixed)
    norm_first: bool = True  # pre-LN layers: steadier training without warm-up tricks
    # "last": the last step's state; "mean": the mean over steps; "attention": a learned query attends
    # over the steps; "lags": the last ``lags`` steps' states, each cut to ``lag_width`` channels,
    # side by side into an MLP, so every lag keeps its own weights (what a tree on lagged features sees).
    # "last" here is what agents exported before pooling was a choice used; TrainConfig picks the trained one
    pooling: str = "last"
    lags: int = 16  # steps read by pooling="lags" (at most seq_len)
    lag_width: int = 8  # channels kept per lag with pooling="lags"

    def __post_init__(self) -> None:
        for name in ("n_features", "seq_len", "d_model", "n_heads", "n_layers", "dim_feedforward", "lags", "lag_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"ModelConfig.d_model={self.d_model} must be divisible by n_heads={self.n_heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.positional not in _POSITIONAL:
            raise ValueError(f"ModelConfig.positional must be one of {_POSITIONAL}, got {self.positional!r}")
        if self.pooling not in POOLING:
            raise ValueError(f"ModelConfig.pooling must be one of {POOLING}, got {self.pooling!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ModelConfig.from_dict: unknown keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)
