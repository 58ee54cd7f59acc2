"""Binary focal loss on logits (Lin et al. 2017) and its no-skill baseline."""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F
from torch import nn

_REDUCTIONS = ("none", "mean", "sum")


def _check_args(alpha: float | None, gamma: float, reduction: str) -> None:
    if alpha is not None and not (isinstance(alpha, Real) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"FocalLoss alpha must be in [0, 1] or None (no class weighting), got {alpha!r}")
    if not (isinstance(gamma, Real) and math.isfinite(gamma) and gamma >= 0.0):
        raise ValueError(f"FocalLoss gamma must be a finite number >= 0, got {gamma!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"FocalLoss reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """-alpha_t (1 - p_t)^gamma log(p_t), with p_t the probability given to the true class.

    alpha_t = alpha for y=1 and 1-alpha for y=0; alpha=None disables the weighting. Targets must
    be 0/1 (any float or int dtype) with the shape of ``logits``.
    """
    _check_args(alpha, gamma, reduction)
    if logits.shape != targets.shape:
        raise ValueError(f"focal_loss: logits shape {tuple(logits.shape)} != targets shape {tuple(targets.shape)}")
    targets = targets.to(logits.dtype)
    if ((targets != 0) & (targets != 1)).any():
        raise ValueError("focal_loss: targets must be 0 or 1 (drop unlabelled/NaN bars before the loss)")
    # -log p_t, stable for any logit size.
    nll = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if gamma != 0:
        # 1 - p_t = sigmoid(-s z) with s = +1 for y=1, -1 for y=0; exp(gamma * logsigmoid) keeps the
        # gradient finite where p_t -> 1, unlike (1 - p_t) ** gamma for gamma < 1.
        sign = 2.0 * targets - 1.0
        nll = torch.exp(gamma * F.logsigmoid(-sign * logits)) * nll
    if alpha is not None:
        nll = (alpha * targets + (1.0 - alpha) * (1.0 - targets)) * nll
    if reduction == "mean":
        return nll.mean()
    if reduction == "sum":
        return nll.sum()
    return nll


def constant_prediction_loss(
    base_rate: float,
    targets: torch.Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
) -> float:
    """Mean focal loss of always predicting probability ``base_rate``: the no-skill reference.

    Pass the TRAINING base rate, also for validation targets. Under focal loss (alpha, gamma) the
    base rate is a reference point, not the best constant, so a model can beat it with no skill.
    """
    if not 0.0 < base_rate < 1.0:
        raise ValueError(
            f"base_rate must be strictly between 0 and 1, got {base_rate!r}: "
            "targets of a single class have no meaningful baseline"
        )
    targets = torch.as_tensor(targets, dtype=torch.float32)
    logit = math.log(base_rate) - math.log1p(-base_rate)
    logits = torch.full_like(targets, logit)
    return float(focal_loss(logits, targets, alpha, gamma, "mean"))


def best_constant_probability(targets: torch.Tensor, alpha: float | None = 0.25, gamma: float = 2.0) -> float:
    """The constant probability with the lowest mean focal loss on ``targets``.

    Under focal loss this is not the base rate (alpha re-weights the classes, gamma discounts
    confident hits), so it is the honest no-skill bar: a model must beat it to show any skill.
    """
    targets = torch.as_tensor(targets, dtype=torch.float64)
    if targets.numel() == 0 or bool(torch.all(targets == targets[0])):
        raise ValueError("targets of a single class have no meaningful constant baseline")

    def loss(z: float) -> float:
        return float(focal_loss(torch.full_like(targets, z), targets, alpha, gamma, "mean"))

    lo, hi = -12.0, 12.0  # logits; the mean loss of a constant is unimodal in it
    for _ in range(80):  # golden-section search: the bracket shrinks to ~1e-15
        a, b = hi - 0.618033988749895 * (hi - lo), lo + 0.618033988749895 * (hi - lo)
        if loss(a) <= loss(b):
            hi = b
        else:
            lo = a
    return 1.0 / (1.0 + math.exp(-(lo + hi) / 2))


class FocalLoss(nn.Module):
    """nn.Module form of :func:`focal_loss`; gamma=0, alpha=None is exactly BCEWithLogitsLoss."""

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0, reduction: str = "mean") -> None:
        super().__init__()
        _check_args(alpha, gamma, reduction)
        self.alpha = alpha
        self.gamma = gamma
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, targets, self.alpha, self.gamma, self.reduction)

    def baseline(self, targets: torch.Tensor, p: float | None = None) -> float:
        """Mean loss of always predicting ``p`` (default: the mean of ``targets``)."""
        targets = torch.as_tensor(targets, dtype=torch.float32)
        if p is None:
            p = float(targets.mean())
        return constant_prediction_loss(p, targets, self.alpha, self.gamma)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"
