"""The walk-forward search space: which hyperparameters each --search group lets Optuna choose.

Ranges are deliberately small (tiny models, few choices) so a default run finishes in minutes on a
laptop CPU; anything not searched keeps the value of the base TrainConfig / execution defaults.
The primary group searches the parameters of the base's primary rule (``--primary`` names it): a trial's
TrainConfig.primary is its own spec, so its events, meta-labels and traded sides are that rule's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from agents import TrainConfig
from datafeeds.errors import did_you_mean
from labeling.rules import SIZINGS, BarrierRules

GROUPS = ("model", "labels", "strategy", "primary")

# label search: vertical barrier choices; the folds' purge must cover the longest
HORIZONS = (5, 10, 15, 20)
# model search: the architecture choices
D_MODELS, N_LAYERS, N_HEADS, SEQ_LENS = (8, 16, 32), (1, 2), (1, 2, 4), (16, 32)
# primary search: per rule (labeling.primary.PRIMARIES), each parameter's range in bars; smacross's ranges are
# disjoint, so every trial has fast < slow
PRIMARY_RANGES = {"momentum": {"lookback": (5, 60)}, "smacross": {"fast": (3, 15), "slow": (20, 80)}}
# strategy search, sizing by probability: the steps the sizes are rounded to (AFML 10.3; 0 = not rounded)
SIZE_STEPS = (0.0, 0.1, 0.25)

# TrainConfig fields each group sets per trial (their base values are then unused); the strategy
# group searches execution pt/sl, which leave the label pt/sl of the base in effect
SEARCHED_FIELDS = {
    "model": ("d_model", "n_layers", "n_heads", "dropout", "lr", "seq_len", "focal_alpha", "focal_gamma"),
    "labels": ("pt", "sl", "horizon"),
    "strategy": (),
    "primary": (),  # the base's primary names the rule; a parameter given a non-default value is refused
}


@dataclass(frozen=True)
class Execution:
    """How a trial's (or fold's) agent is traded: strategy parameters besides the agent itself."""

    signal_rate: float | None = None  # None: threshold = train signal rate equals train base rate
    pt: float | None = None  # take-profit in ATRs at execution; None = the label pt
    sl: float | None = None  # stop in ATRs at execution; None = the label sl
    sizing: str = BarrierRules.sizing  # "fixed", or "probability": AFML sizes from the agent's probability
    size_step: float = BarrierRules.size_step  # probability sizes rounded to multiples of it (0: not rounded)

    def __post_init__(self):
        if self.signal_rate is not None and not 0.0 < self.signal_rate < 1.0:
            raise ValueError(f"signal_rate must be in (0, 1), got {self.signal_rate}")
        for name in ("pt", "sl"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"execution {name} must be > 0 ATRs, got {v}")
        if self.sizing not in SIZINGS:
            raise ValueError(f"sizing: unknown {self.sizing!r};{did_you_mean(str(self.sizing), SIZINGS)} choose from "
                             f"{', '.join(SIZINGS)}")
        try:  # the check of the step, written once (labeling.rules)
            BarrierRules(size_step=self.size_step)
        except ValueError as exc:
            raise ValueError(str(exc).replace("size_step", "size-step")) from None
        object.__setattr__(self, "size_step", float(self.size_step))

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
        return BarrierRules.from_tbm(cfg.tbm, float(threshold), sizing=self.sizing, size_step=self.size_step,
                                     **changes)


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


def primary_name(base: TrainConfig) -> str | None:
    """The name of the base's primary rule (``momentum`` of ``momentum:lookback=20``); None without one."""
    return None if base.primary is None else base.primary.partition(":")[0].strip()


def primary_spec(name: str, params: dict) -> str:
    """``("momentum", {"lookback": 12})`` -> ``"momentum:lookback=12"``, the spelling ``parse_primary`` reads."""
    return f"{name}:" + ",".join(f"{k}={int(v)}" for k, v in params.items())


def check_primary(groups: tuple[str, ...], base: TrainConfig) -> None:
    """Refuse (ValueError, one line) ``--search primary`` without a base rule to search, and a base rule whose
    searched parameter is given a value other than its default (it would be unused)."""
    if "primary" not in groups:
        return
    if base.primary is None:
        raise ValueError(f"--search primary searches the parameters of a primary rule: name one with --primary "
                         f"({' or '.join(PRIMARY_RANGES)}), or remove 'primary' from --search")
    from labeling.primary import parse_primary  # on use: the rules' kernels load numpy and numba

    name, rule = primary_name(base), parse_primary(base.primary)  # a known rule: TrainConfig checked it
    if name not in PRIMARY_RANGES:
        raise ValueError(f"--search primary: no search ranges for the primary {name!r}; searchable: "
                         f"{', '.join(PRIMARY_RANGES)}")
    default = type(rule)()
    for key in PRIMARY_RANGES[name]:
        if getattr(rule, key) != getattr(default, key):
            raise ValueError(f"--primary {base.primary}: {key} is searched by --search primary; name the rule alone "
                             f"(--primary {name}) or remove 'primary' from --search")


def primary_warmup(groups: tuple[str, ...], base: TrainConfig) -> int:
    """Bars before any trial's primary rule can bet, at most (0 without a primary): its longest parameter
    (every parameter of a rule is a count of bars: momentum's lookback, smacross's slow mean)."""
    if base.primary is None:
        return 0
    if "primary" in groups:
        return max(hi for _, hi in PRIMARY_RANGES[primary_name(base)].values())
    from labeling.primary import parse_primary  # on use: the rules' kernels load numpy and numba

    rule = parse_primary(base.primary)
    return max((int(getattr(rule, f.name)) for f in dataclasses.fields(rule)), default=0)  # "both": none


def bets(cfg: TrainConfig, bars, signal):
    """(probability, sides) an agent trained with ``cfg`` trades on ``bars`` (a frame of bars) from its ``signal``,
    as ``run_backtest`` and ``sweep`` take them: its primary rule's sides (None, long on every bar, without a
    primary); a direction model trained with ``both`` bets its own way (``labeling.direction_bets``). Causal: the
    side at bar t reads bars <= t, so each backtest computes them on its own data."""
    if not cfg.primary:
        return signal, None
    import pandas as pd  # on use, as below

    from labeling.primary import BothRule, direction_bets, parse_primary, primary_side

    rule = parse_primary(cfg.primary)
    if isinstance(rule, BothRule):
        return direction_bets(signal if isinstance(signal, pd.Series) else pd.Series(signal, index=bars.index))
    return signal, primary_side(bars, rule)


def suggest(trial, groups: tuple[str, ...], base: TrainConfig,
            execution: Execution = Execution()) -> tuple[TrainConfig, Execution]:
    """Ask ``trial`` (an optuna Trial) for the searched hyperparameters; the rest stay as in ``base`` and in
    ``execution`` (the trading not searched: the sizing and its step)."""
    changes: dict = {}
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
        execution = dataclasses.replace(
            execution,
            # threshold via the fraction of training bars that would signal: robust to calibration
            signal_rate=trial.suggest_float("signal_rate", 0.1, 0.6),
            pt=trial.suggest_float("exec_pt", 1.0, 3.0),
            sl=trial.suggest_float("exec_sl", 1.0, 3.0),
        )
        if execution.sizing == "probability":
            execution = dataclasses.replace(execution,
                                            size_step=trial.suggest_categorical("size_step", list(SIZE_STEPS)))
    if "primary" in groups:  # the rule's parameters: its events, meta-labels and traded sides follow
        ranges = PRIMARY_RANGES[primary_name(base)]
        changes["primary"] = primary_spec(primary_name(base), {
            key: trial.suggest_int(f"primary_{key}", lo, hi, log=True) for key, (lo, hi) in ranges.items()})
    return dataclasses.replace(base, **changes), execution


def from_params(params: dict, base: TrainConfig, execution: Execution = Execution()) -> tuple[TrainConfig, Execution]:
    """Rebuild a trial's configuration from its recorded params (the best trial, for the refit); ``base`` and
    ``execution`` as given to :func:`suggest`."""
    model_keys = SEARCHED_FIELDS["model"] + SEARCHED_FIELDS["labels"]
    changes = {k: params[k] for k in model_keys if k in params}
    if any(k.startswith("primary_") for k in params):
        name = primary_name(base)
        changes["primary"] = primary_spec(name, {k: params[f"primary_{k}"] for k in PRIMARY_RANGES[name]
                                                 if f"primary_{k}" in params})
    execution = dataclasses.replace(execution, signal_rate=params.get("signal_rate"), pt=params.get("exec_pt"),
                                    sl=params.get("exec_sl"), size_step=params.get("size_step", execution.size_step))
    return dataclasses.replace(base, **changes), execution
