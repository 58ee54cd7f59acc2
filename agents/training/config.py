"""The trainer's settings: a frozen dataclass, validated on construction, recorded in every agent.

Importing this module is light (no numpy, pandas or torch): the CLIs build their parsers from
:func:`field_defaults` without constructing a config, so ``--help`` answers at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import TYPE_CHECKING

from labeling.rules import TBMConfig

from ..model.config import ModelConfig

if TYPE_CHECKING:
    from ..data.features import FeatureSpec

LR_SCHEDULES = ("constant", "onecycle", "cosine")


def field_defaults(cls) -> SimpleNamespace:
    """The plain defaults of a config dataclass's fields, without constructing (and validating) one;
    fields with a default factory are left out (a factory may build and validate a config)."""
    return SimpleNamespace(**{f.name: f.default for f in fields(cls) if f.default is not dataclasses.MISSING})


# Upper bounds of the numeric options: far above any useful value, low enough that a typo (1e20, 65536)
# is one line before anything is built, not a 48 GiB allocation or an overflow deep in torch or numba.
_INT_LIMITS = {"seq_len": 4096, "epochs": 100_000, "patience": 100_000, "d_model": 4096, "n_heads": 64,
               "n_layers": 48, "batch_size": 1 << 20}
MAX_LR = 1.0
MAX_FOCAL_GAMMA = 10.0
MAX_SEED = 2**32 - 1  # numpy's seed range


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (recorded in the exported agent)."""

    data: str = "sp500"  # a sample name or CSV/Parquet path, or a universe (datafeeds.load_universe)
    start: str | None = None  # first bar used (inclusive)
    end: str | None = None  # last bar of the loaded period (inclusive)
    holdout: float = 0.2  # last fraction of the loaded bars never touched, kept for backtests
    # Fractional differentiation is left out by default: with its window capped at 100 bars it keeps
    # much of the price level, so training and validation features drift apart (adversarial AUC
    # 0.96 with it vs 0.83 without on sp500). Add it back with --features.
    # None: FeatureSpec.default()
    features: tuple[str, ...] | None = ("log_ret", "rsi", "macd", "atr", "volume_z", "obi")
    seq_len: int = 32  # bars per window (64 learnt no more on planted signals, at twice the time: docs/LEARNER.md)
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    # 0.3 with lr 1e-3: the sign product found from every init seed tried, not some (docs/LEARNER.md)
    dropout: float = 0.3
    positional: str = "learned"  # learned | sinusoidal (ModelConfig.positional)
    # last | mean | attention | lags (ModelConfig.pooling); lags: interactions between bars (docs/LEARNER.md)
    pooling: str = "lags"
    epochs: int = 12  # upper bound; early stopping usually ends sooner
    patience: int = 4  # epochs without validation improvement before stopping
    batch_size: int | None = None  # None: the hardware profile's
    lr: float = 1e-3  # peak learning rate
    # constant; onecycle = linear warm-up over the first ``warmup`` of the steps then cosine decay to 0
    # over the rest of ``epochs``; cosine = the same without warm-up
    lr_schedule: str = "constant"
    warmup: float = 0.1  # fraction of all steps spent warming up with lr_schedule=onecycle
    weight_decay: float = 1e-2
    val_fraction: float = 0.2  # last fraction of the labelled events used for validation
    seed: int = 0
    # the Triple Barrier labels (labeling.rules.TBMConfig, whose defaults these are)
    pt: float = TBMConfig.pt  # take-profit barrier, in ATRs
    sl: float = TBMConfig.sl  # stop-loss barrier, in ATRs
    horizon: int = TBMConfig.horizon  # vertical barrier, in bars
    atr_period: int = TBMConfig.atr_period
    # focal loss (Lin et al. 2017); the defaults, alpha None and gamma 0, are plain cross-entropy: with
    # alpha 0.25 and gamma 2 the learner barely moved on planted interactions (docs/LEARNER.md)
    focal_alpha: float | None = None  # weight of positives; None = unweighted
    focal_gamma: float = 0.0
    # per-label loss weight: "uniqueness" = the label's average uniqueness (AFML ch. 4; mean 1 over the
    # training labels), so a cluster of overlapping Triple Barrier labels counts as the few independent
    # ones it is rather than as many; "none" = every label 1 (the losses the models before it used)
    sample_weights: str = "uniqueness"  # uniqueness | none
    threshold: float | None = None  # None: chosen from training predictions
    # a primary rule (labeling.primary, e.g. "momentum:lookback=20"): the events are its bets and the labels
    # their meta-labels (did the bet's profit-taker come first); None: every bar, long (the plain labels)
    primary: str | None = None
    # universes: normalisation statistics from the pooled training bars of all instruments (one set,
    # so the agent can trade any instrument) or from each instrument's own (per-symbol: comparable
    # scales for price-level features such as MACD, but the agent then trades its own symbols only)
    normalise: str = "pooled"  # pooled | per-symbol
    profile: str = "auto"  # auto | beast | safe
    gpu: bool = False  # require CUDA
    # how batches reach the model (agents.data.feed): auto = the profile's (beast on CUDA: resident);
    # host | resident | prefetch; every feed gives the same batches for a seed
    feed: str = "auto"
    compile: bool = False  # torch.compile the model for training (CUDA; off unless it measurably helps)

    def __post_init__(self):
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"--holdout must be in [0, 1), got {self.holdout}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        for name, most in _INT_LIMITS.items():
            value = getattr(self, name)
            if value is None and name == "batch_size":
                continue
            if not 1 <= value <= most:
                raise ValueError(f"--{name.replace('_', '-')} must be in 1..{most:,}, got {value}")
        if not (0 < self.lr <= MAX_LR):
            raise ValueError(f"--lr must be in (0, {MAX_LR:g}], got {self.lr}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"--threshold must be in [0, 1], got {self.threshold}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"--seed must be in 0..{MAX_SEED:,}, got {self.seed}")
        if self.focal_alpha is not None and not 0.0 <= self.focal_alpha <= 1.0:
            raise ValueError(f"--focal-alpha must be in [0, 1] (or negative for none), got {self.focal_alpha}")
        if not 0 <= self.focal_gamma <= MAX_FOCAL_GAMMA:
            raise ValueError(f"--focal-gamma must be in [0, {MAX_FOCAL_GAMMA:g}], got {self.focal_gamma}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"--warmup must be in [0, 1), got {self.warmup}")
        if self.sample_weights not in ("uniqueness", "none"):
            raise ValueError(f"--sample-weights must be uniqueness or none, got {self.sample_weights!r}")
        if self.normalise not in ("pooled", "per-symbol"):
            raise ValueError(f"--normalise must be pooled or per-symbol, got {self.normalise!r}")
        if self.profile not in ("auto", "beast", "safe"):
            raise ValueError(f"--profile must be auto, beast or safe, got {self.profile!r}")
        if self.feed not in ("auto", "host", "resident", "prefetch"):
            raise ValueError(f"--feed must be auto, host, resident or prefetch, got {self.feed!r}")
        if self.primary is not None:
            from labeling.primary import parse_primary  # on use: the rules' kernels load numpy and numba

            try:
                parse_primary(self.primary)
            except ValueError as exc:
                raise ValueError(f"--primary: {exc}") from None
        self.tbm  # validates pt/sl/horizon/atr_period
        self.feature_spec  # unknown feature names fail here, with a suggestion
        self.model_config(1)  # validates d_model/n_heads/dropout

    @property
    def tbm(self) -> TBMConfig:
        return TBMConfig(pt=self.pt, sl=self.sl, horizon=self.horizon, atr_period=self.atr_period)

    @property
    def feature_spec(self) -> FeatureSpec:
        from ..data.features import FeatureSpec  # on use: features load pandas and numba

        return FeatureSpec.default() if self.features is None else FeatureSpec.from_names(list(self.features))

    def model_config(self, n_features: int) -> ModelConfig:
        return ModelConfig(
            n_features=n_features, seq_len=self.seq_len, d_model=self.d_model,
            n_heads=self.n_heads, n_layers=self.n_layers, dropout=self.dropout,
            positional=self.positional, pooling=self.pooling,
        )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["features"] = None if self.features is None else list(self.features)
        if d["primary"] is None:  # configs without one record what they recorded before it existed
            del d["primary"]
        return d

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """The inverse of :meth:`to_dict` (validated like any construction)."""
        data = dict(data)
        if data.get("features") is not None:
            data["features"] = tuple(data["features"])
        return cls(**data)

    # fields that may differ when resuming (they do not change what an epoch computes)
    RESUMABLE_CHANGES = ("epochs", "patience", "profile", "feed")
