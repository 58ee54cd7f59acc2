"""Transformer encoder over a window of bar features -> one logit per window.

Read top to bottom: project features to d_model, add positions, encode, pool the steps into one
vector (``ModelConfig.pooling``), normalise, map to a logit. Window-level: the logit depends on the
given (L, F) window only.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig


def sinusoidal_positions(seq_len: int, d_model: int) -> torch.Tensor:
    """Vaswani et al. (2017) table (L, d_model): sin on even channels, cos on odd ones."""
    position = torch.arange(seq_len, dtype=torch.float32)[:, None]  # (L, 1)
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))  # (ceil(D/2),)
    table = torch.zeros(seq_len, d_model)  # (L, D)
    table[:, 0::2] = torch.sin(position * freq)  # (L, ceil(D/2))
    table[:, 1::2] = torch.cos(position * freq[: d_model // 2])  # (L, floor(D/2))
    return table


class TransformerAgent(nn.Module):
    """(B, L, F) float32 windows -> (B,) logits of P(label == 1)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.input_proj = nn.Linear(c.n_features, c.d_model)
        if c.positional == "learned":
            self.pos = nn.Parameter(torch.randn(c.seq_len, c.d_model) * 0.02)  # (L, D)
        else:
            # Not persistent: rebuilt from the config, so state_dicts stay the same across both kinds.
            self.register_buffer("pos", sinusoidal_positions(c.seq_len, c.d_model), persistent=False)
        self.drop = nn.Dropout(c.dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=c.d_model,
            nhead=c.n_heads,
            dim_feedforward=c.dim_feedforward,
            dropout=c.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=c.norm_first,
        )
        # enable_nested_tensor=False: padding-free windows gain nothing from it, and it blocks ONNX export.
        self.encoder = nn.TransformerEncoder(layer, num_layers=c.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.d_model)
        if c.pooling == "attention":
            self.query = nn.Parameter(torch.zeros(c.d_model))  # zero: uniform weights (the mean) at the start
        if c.pooling == "lags":
            self.lags = min(c.lags, c.seq_len)
            self.lag_proj = nn.Linear(c.d_model, c.lag_width)
            self.head = nn.Sequential(nn.Linear(self.lags * c.lag_width, c.d_model), nn.GELU(), nn.Dropout(c.dropout),
                                      nn.Linear(c.d_model, 1))
        else:
            self.head = nn.Linear(c.d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.ndim != 3 or x.shape[1] != c.seq_len or x.shape[2] != c.n_features:
            raise ValueError(
                f"TransformerAgent expects windows of shape (B, {c.seq_len}, {c.n_features}), got {tuple(x.shape)}"
            )
        h = self.input_proj(x)  # (B, L, D)
        h = self.drop(h + self.pos)  # (B, L, D) + (L, D)
        h = self.encoder(h)  # (B, L, D)
        if c.pooling == "lags":
            h = self.lag_proj(self.norm(h[:, -self.lags:]))  # (B, K, W): each recent bar, narrowed
            return self.head(h.flatten(1)).squeeze(-1)  # (B, K * W) -> (B,)
        if c.pooling == "mean":
            h = h.mean(dim=1)  # (B, D)
        elif c.pooling == "attention":
            w = torch.softmax(h @ self.query / math.sqrt(c.d_model), dim=1)  # (B, L): weight of each step
            h = (w.unsqueeze(-1) * h).sum(dim=1)  # (B, D)
        else:
            h = h[:, -1]  # (B, D): the last bar's state summarises the window
        return self.head(self.norm(h)).squeeze(-1)  # (B, 1) -> (B,)

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
