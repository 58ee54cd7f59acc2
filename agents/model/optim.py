"""AdamW that never imports torch._dynamo, bit-identical to ``torch.optim.AdamW(..., foreach=False)``.

Why: torch.optim imports ``torch._dynamo`` and sympy as soon as an optimizer is built (its
``add_param_group``, like ``step``, ``zero_grad`` and ``(load_)state_dict``, goes through
``torch._disable_dynamo``): memory a small container cannot spare (measurements: docs/DECISIONS.md).
This is torch 2.13's ``_single_tensor_adam`` (decoupled weight decay) op for op, so results
match torch's bit for bit (tests/test_optim.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class AdamW:
    """AdamW over one group of parameters; state is plain tensors and numbers (``weights_only`` safe)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("AdamW got an empty parameter list")
        for p in self.params:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"AdamW takes one group of tensors, got a {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError("AdamW can't optimize a non-leaf tensor")
        self._set_hyper(lr, betas, eps, weight_decay)
        # Allocated up front, not lazily as torch does: zeros either way, so the arithmetic is the same.
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        # Per parameter, like torch: a parameter without a gradient neither moves nor counts a step.
        # torch keeps a float32 tensor and bias-corrects with its .item(), a float equal to this int
        # (beta ** 5 == beta ** 5.0 in Python) up to 2**24 steps, where float32 stops counting.
        self.steps = [0] * len(self.params)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """One group, in torch's shape: what ``torch.amp.GradScaler`` reads to unscale the gradients."""
        return [{"params": self.params}]

    def _set_hyper(self, lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr!r} (must be >= 0)")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Invalid betas: {betas!r} (two numbers, each in [0, 1))")
        if not eps > 0.0:  # stricter than torch, which allows 0 and then divides 0 by 0
            raise ValueError(f"Invalid epsilon value: {eps!r} (must be > 0)")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay!r} (must be >= 0)")
        self.lr, self.betas = float(lr), (float(betas[0]), float(betas[1]))
        self.eps, self.weight_decay = float(eps), float(weight_decay)

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient (``_single_tensor_adam``'s ops, in order)."""
        lr, (beta1, beta2), eps, wd = self.lr, self.betas, self.eps, self.weight_decay
        for i, param in enumerate(self.params):
            grad = param.grad
            if grad is None:
                continue
            exp_avg, exp_avg_sq = self.exp_avg[i], self.exp_avg_sq[i]
            self.steps[i] += 1
            step = self.steps[i]
            if wd != 0:
                param.mul_(1 - lr * wd)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias_correction1 = 1 - beta1**step
            bias_correction2 = 1 - beta2**step
            step_size = lr / bias_correction1
            bias_correction2_sqrt = bias_correction2**0.5  # as torch writes it (math.sqrt agrees)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            param.addcdiv_(exp_avg, denom, value=-step_size)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                if p.grad.grad_fn is not None:
                    p.grad.detach_()
                else:
                    p.grad.requires_grad_(False)
                p.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        """Copies of the moments, the step counts and the hyperparameters; ``load_state_dict`` restores them."""
        return {"step": list(self.steps), "exp_avg": [t.clone() for t in self.exp_avg],
                "exp_avg_sq": [t.clone() for t in self.exp_avg_sq], "lr": self.lr, "betas": self.betas,
                "eps": self.eps, "weight_decay": self.weight_decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        keys = {"step", "exp_avg", "exp_avg_sq", "lr", "betas", "eps", "weight_decay"}
        if not isinstance(state, dict) or set(state) != keys:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"AdamW state must have keys {sorted(keys)}, got {got}")
        n = len(self.params)
        for name in ("step", "exp_avg", "exp_avg_sq"):
            if len(state[name]) != n:
                raise ValueError(f"AdamW state {name!r} has {len(state[name])} entries for {n} parameters")
        for name in ("exp_avg", "exp_avg_sq"):
            for i, (p, t) in enumerate(zip(self.params, state[name])):
                if not isinstance(t, torch.Tensor) or t.shape != p.shape:
                    shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                    raise ValueError(f"AdamW state {name}[{i}] is {shape}, parameter {i} is {tuple(p.shape)}")
        self._set_hyper(state["lr"], state["betas"], state["eps"], state["weight_decay"])
        self.steps = [int(s) for s in state["step"]]
        for mine, theirs in zip(self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"]):
            mine.copy_(theirs)  # into our own tensors: the caller's dict stays independent
