"""The walk-forward search space: which hyperparameters each --search group lets Optuna choose.

Ranges are deliberately small (tiny models, few choices) so a default run finishes in minutes on a
laptop CPU; anything not searched keeps the value of the base TrainConfig / execution defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from agents import TrainConfig
from datafeeds.errors import did_you_mean
from labeling.rules import BarrierRules

GROUPS = ("model", "labels", "strategy")

# label search: vertical barrier choices; the folds' purge must cover the longest
HORIZONS = (5, 10, 15, 20)
# model search: the architecture choices
D_MODELS, N_LAYERS, N_HEADS, SEQ_LENS = (8, 16, 32), (1, 2), (1, 2, 4), (16, 32)

# TrainConfig fields each group sets per trial (their base values are then unused); the strategy
# group searches execution pt/sl, which leave the label pt/sl of the base in effect
SEARCHED_FIELDS = {
    "model": ("d_model", "n_layers", "n_heads", "dropout", "lr", "seq_len", "focal_alpha", "focal_gamma"),
    "labels": ("pt", "sl", "horizon"),
    "strategy": (),
}


@dataclass(frozen=True)
class Execution:
    """How a trial's (or fold's) agent is traded: strategy parameters besides the agent itself."""

    signal_rate: float | None = None  # None: threshold = train signal rate equals train base rate
    pt: float | None = None  # take-profit in ATRs at execution; None = the label pt
    sl: float | None = None  # stop in ATRs at execution; None = the label sl

    def __post_init__(self):
        if self.signal_rate is not None and not 0.0 < self.signal_rate < 1.0:
            raise ValueError(f"signal_rate must be in (0, 1), got {self.signal_rate}")
        for name in ("pt", "sl"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"execution {name} must be > 0 ATRs, got {v}")

    def threshold(self, train_proba, base_rate: float) -> float:
        """Signal threshold from the training predictions (never validation or test)."""
        import numpy as np  # on use: the CLI parser imports this module

        from agents.artifact.evaluation import suggest_threshold

        if self.signal_rate is None:
            return suggest_threshold(train_proba, base_rate)
        return float(np.quantile(np.asarray(train_proba, dtype=np.float64), 1.0 - self.signal_rate))

    def rules(self, cfg: TrainConfig, threshold: float) -> BarrierRules:
        """The trading rules of an agent trained with ``cfg``: its label barriers, with this execution's."""
        changes = {k: float(v) for k, v in (("pt", self.pt), ("sl", self.sl)) if v is not None}
        return BarrierRules.from_tbm(cfg.tbm, float(threshold), **changes)


def parse_groups(text: str) -> tuple[str, ...]:
    """'model,labels' -> ('model', 'labels'); unknown names raise ValueError with a suggestion."""
    names = [s.strip() for s in str(text).split(",") if s.strip()]
    if not names:
        raise ValueError(f"--search needs at least one of {', '.join(GROUPS)}")
    for name in names:
        if name not in GROUPS:
            raise ValueError(f"--search: unknown group {name!r};{did_you_mean(name, GROUPS)} groups: "
                             f"{', '.join(GROUPS)}")
    return tuple(g for g in GROUPS if g in names)  # canonical order, duplicates dropped


def overridden_base_fields(groups: tuple[str, ...], base: TrainConfig, default: TrainConfig) -> list[tuple[str, str]]:
    """(field, group) for each field of ``base`` that differs from ``default`` but that a searched group sets."""
    return [(name, g) for g in groups for name in SEARCHED_FIELDS[g]
            if getattr(base, name) != getattr(default, name)]


def max_horizon(groups: tuple[str, ...], base: TrainConfig) -> int:
    """Longest label horizon any trial can use (the purge between fold segments must cover it)."""
    return max(HORIZONS) if "labels" in groups else base.horizon


def largest(groups: tuple[str, ...], base: TrainConfig) -> TrainConfig:
    """The biggest model any trial can train (memory grows with d_model, layers, heads and seq_len)."""
    if "model" not in groups:
        return base
    return dataclasses.replace(base, d_model=max(D_MODELS), n_layers=max(N_LAYERS), n_heads=max(N_HEADS),
                               seq_len=max(SEQ_LENS))


def suggest(trial, groups: tuple[str, ...], base: TrainConfig) -> tuple[TrainConfig, Execution]:
    """Ask ``trial`` (an optuna Trial) for the searched hyperparameters; the rest stay as in ``base``."""
    changes: dict = {}
    execution = Execution()
    if "model" in groups:
        changes.update(
            d_model=trial.suggest_categorical("d_model", list(D_MODELS)),
            n_layers=trial.suggest_int("n_layers", min(N_LAYERS), max(N_LAYERS)),
            n_heads=trial.suggest_categorical("n_heads", list(N_HEADS)),  # each divides every d_model
            dropout=trial.suggest_float("dropout", 0.0, 0.3),
            lr=trial.suggest_float("lr", 3e-4, 3e-3, log=True),
            seq_len=trial.suggest_categorical("seq_len", list(SEQ_LENS)),
            focal_alpha=trial.suggest_float("focal_alpha", 0.25, 0.75),
            focal_gamma=trial.suggest_float("focal_gamma", 0.0, 3.0),
        )
    if "labels" in groups:
        changes.update(
            pt=trial.suggest_float("pt", 1.0, 3.0),
            sl=trial.suggest_float("sl", 1.0, 3.0),
            horizon=trial.suggest_categorical("horizon", list(HORIZONS)),
        )
    if "strategy" in groups:
        execution = Execution(
            # threshold via the fraction of training bars that would signal: robust to calibration
            signal_rate=trial.suggest_float("signal_rate", 0.1, 0.6),
            pt=trial.suggest_float("exec_pt", 1.0, 3.0),
            sl=trial.suggest_float("exec_sl", 1.0, 3.0),
        )
    return dataclasses.replace(base, **changes), execution


def from_params(params: dict, base: TrainConfig) -> tuple[TrainConfig, Execution]:
    """Rebuild a trial's configuration from its recorded params (the best trial, for the refit)."""
    model_keys = SEARCHED_FIELDS["model"] + SEARCHED_FIELDS["labels"]
    cfg = dataclasses.replace(base, **{k: params[k] for k in model_keys if k in params})
    execution = Execution(signal_rate=params.get("signal_rate"), pt=params.get("exec_pt"), sl=params.get("exec_sl"))
    return cfg, execution
