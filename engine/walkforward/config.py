"""Walk-forward study settings: the frozen config, its checks and the fingerprint reruns must match."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from agents.training.config import TrainConfig, field_defaults
from datafeeds.errors import did_you_mean
from engine.config import RunConfig
from engine.walkforward import space
from labeling.rules import BarrierRules, Costs

OBJECTIVES = {  # name -> optimisation direction
    "val_loss": "minimize",  # validation focal loss / the best constant prediction's (1 = no skill)
    "val_auc": "maximize",  # validation ROC AUC of the labelled bars
    "val_sharpe": "maximize",  # annualised Sharpe of a backtest on the validation block
}
VALIDATION_ENGINE = "fast"  # every trial's validation backtest: engine.fastsim, parity-tested with backtrader
# everything not searched; a base option of a searched group must keep its value here (else refused)
BASE_OVERRIDES = dict(seq_len=32, d_model=16, n_heads=2, n_layers=1, lr=1e-3, batch_size=256, holdout=0.0)


def base_defaults():
    """The base TrainConfig's defaults as a namespace, without constructing one (the CLI's --help)."""
    d = field_defaults(TrainConfig)
    d.__dict__.update(BASE_OVERRIDES)
    return d


def _base() -> TrainConfig:
    return TrainConfig(**BASE_OVERRIDES)


# Upper bounds of the counts (beyond them a run is a typo, or overflows a sleep or a thread pool):
# folds are bounded by the data; --epochs as TrainConfig's; a heartbeat of a day.
_INT_LIMITS = {"folds": 1_000, "trials": 1_000_000, "epochs": 100_000, "n_jobs": 256, "heartbeat": 86_400}
MAX_TIMEOUT = 10_000_000  # seconds per fold: ~4 months


def check_cpcv(n: int, k: int) -> None:
    """``--cpcv N,K``: N contiguous groups, K of them tested per split (C(N,K) trainings)."""
    if not (isinstance(n, int) and isinstance(k, int) and 2 <= n <= 16 and 1 <= k < n):
        raise ValueError(f"--cpcv N,K needs 2 <= N <= 16 groups and 1 <= K < N test groups, got {n},{k}")


@dataclass(frozen=True)
class WalkForwardConfig:
    """One walk-forward study; the fields marked (*) may change between runs of the same study."""

    data: str = "sp500"  # bundled sample name or a CSV/Parquet path
    start: str | None = None
    end: str | None = None
    folds: int = 3
    scheme: str = "rolling"  # rolling | anchored (expanding train)
    test_frac: float = 0.3  # last fraction of the bars split into the folds' test blocks
    embargo: int = 0  # bars left out after each test block (out-of-sample bars only; see the module docstring)
    trials: int = 5  # (*) trials per fold, in total over all workers (complete + pruned)
    timeout: float | None = None  # (*) seconds of search per fold and process; then the fold is finalised
    storage: str | None = None  # (*) Optuna RDB URL; None = sqlite:///<out>/optuna.db
    study: str | None = None  # None = wf_<data>
    n_jobs: int = 1  # (*) trials run in parallel threads in this process
    seed: int = 0
    objective: str = "val_loss"
    search: tuple[str, ...] = ("model",)
    epochs: int = 3  # epochs per trial; the refit uses the best trial's best epoch
    out: str | None = None  # (*) None = reports/<study>
    cash: float = RunConfig.cash
    commission: float = Costs.commission  # fraction of traded value per side
    slippage: float = Costs.slippage
    engine: str = RunConfig.engine  # engine of each fold's test backtest (trials always use the fast one)
    # how entries are sized (BarrierRules.sizing); None: "probability" with a primary rule in base (a meta-model's
    # probability is a bet size, AFML 10.1: what the main command does for such an agent), else "fixed"
    sizing: str | None = None
    size_step: float = BarrierRules.size_step  # rounds probability sizes (AFML 10.3); --search strategy searches it
    heartbeat: int = 10  # (*) seconds between worker heartbeats; a trial silent for 3x is failed and retried
    cpcv: tuple[int, int] | None = None  # (*) (groups, test groups): CPCV of the latest selection; None = off
    # a universe only: how its pooled training normalises features, and the portfolio's positions at once
    # (None: one per instrument)
    normalise: str = "pooled"
    max_positions: int | None = None
    base: TrainConfig = dataclasses.field(default_factory=_base)  # everything not searched

    def __post_init__(self):
        for name in ("test_frac", "timeout", "cash", "commission", "slippage"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {v}")
        try:  # the checks of the trading costs, cash and engine, written once (labeling.rules, engine.config)
            self.costs, self.run_config()
        except ValueError as exc:
            raise ValueError(f"--{exc}") from None
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective: unknown {self.objective!r};{did_you_mean(self.objective, OBJECTIVES)}"
                             f" choose from {', '.join(OBJECTIVES)}")
        if self.scheme not in ("rolling", "anchored"):
            raise ValueError(f"--scheme must be rolling or anchored, got {self.scheme!r}")
        space.parse_groups(",".join(self.search))
        for name, group in space.overridden_base_fields(self.search, self.base, _base()):
            raise ValueError(f"--{name.replace('_', '-')} is searched by --search {group}; drop it or remove "
                             f"{group!r} from --search")
        space.check_primary(self.search, self.base)
        try:  # sizing and step, checked once (space.Execution, labeling.rules)
            execution = self.execution
        except ValueError as exc:
            raise ValueError(f"--{exc}") from None
        if self.size_step != 0.0 and execution.sizing != "probability":
            raise ValueError("--size-step rounds the sizes of --sizing probability (the default with a --primary); "
                             "add --sizing probability or drop --size-step")
        if self.size_step != 0.0 and "strategy" in self.search:
            raise ValueError("--size-step is searched by --search strategy; drop it or remove 'strategy' from --search")
        if "strategy" in self.search and self.objective != "val_sharpe":
            raise ValueError("--search strategy only changes the trading, which only --objective val_sharpe "
                             "scores; add --objective val_sharpe or drop the strategy group")
        for name, most in _INT_LIMITS.items():
            if not 1 <= getattr(self, name) <= most:
                raise ValueError(f"--{name.replace('_', '-')} must be in 1..{most:,}, got {getattr(self, name)}")
        if self.embargo < 0:
            raise ValueError(f"--embargo must be >= 0 bars, got {self.embargo}")
        if not 0.0 < self.test_frac < 1.0:
            raise ValueError(f"--test-frac must be in (0, 1), got {self.test_frac}")
        if self.timeout is not None and not 0 < self.timeout <= MAX_TIMEOUT:
            raise ValueError(f"--timeout must be in (0, {MAX_TIMEOUT:,}] seconds, got {self.timeout}")
        if self.cpcv is not None:
            check_cpcv(*self.cpcv)
        if self.normalise not in ("pooled", "per-symbol"):
            raise ValueError(f"--normalise must be pooled or per-symbol, got {self.normalise!r}")
        if self.max_positions is not None and not 1 <= self.max_positions <= 10_000:
            raise ValueError(f"--max-positions must be in 1..10,000, got {self.max_positions}")
        if self.study is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.study):
            # it names the output folder reports/<study>: '..' or '.hidden' would land elsewhere
            raise ValueError(f"--study {self.study!r}: use letters, digits, '_', '-' and '.', starting with a "
                             "letter or digit")
        # the base config describes the same data, seed and epochs (recorded in every agent card)
        object.__setattr__(self, "base", dataclasses.replace(
            self.base, data=self.data, start=self.start, end=self.end, seed=self.seed, epochs=self.epochs,
            patience=self.epochs, normalise=self.normalise))

    @property
    def execution(self) -> space.Execution:
        """How every backtest of the run sizes its entries (the strategy group searches the rest, and the step
        when the sizing is by probability)."""
        sizing = self.sizing or ("probability" if self.base.primary else "fixed")
        return space.Execution(sizing=sizing, size_step=self.size_step)

    @property
    def costs(self) -> Costs:
        return Costs(commission=self.commission, slippage=self.slippage)

    def run_config(self, **changes) -> RunConfig:
        """How a backtest of this walk-forward runs: its cash and engine, with ``changes`` (period, ...)."""
        return RunConfig(cash=self.cash, engine=self.engine).replace(**changes)

    @property
    def study_name(self) -> str:
        if self.study:
            return self.study
        stem = Path(self.data).name.split(".")[0] if ("/" in self.data or "." in self.data) else self.data
        return "wf_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("reports") / self.study_name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out_dir / 'optuna.db').resolve()}"

    @property
    def purge(self) -> int:
        """Bars between train/validation/test: the longest label horizon any trial can use."""
        return space.max_horizon(self.search, self.base)

    @property
    def direction(self) -> str:
        return OBJECTIVES[self.objective]

    def fingerprint(self, data_sha256: str, universe: list[str] | None = None) -> dict:
        """What a study's trials depend on; reruns must match it (the (*) fields may differ). ``universe``: the
        symbols of a universe run."""
        keep = {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("trials", "timeout", "storage", "n_jobs", "out", "heartbeat", "base", "study", "engine",
                             "cpcv", "normalise", "max_positions")}
        keep["search"] = list(self.search)
        keep["engines"] = {"validation": VALIDATION_ENGINE, "test": self.engine}
        keep["base"] = self.base.to_dict()  # with the primary rule, when there is one
        # the sizing as traded, recorded only where it is not the default one: studies made before it resume
        del keep["sizing"], keep["size_step"]
        if self.execution != space.Execution():
            keep["sizing"] = {"sizing": self.execution.sizing, "size_step": self.execution.size_step}
        keep["data_sha256"] = data_sha256
        if universe is not None:  # recorded for a universe only: single-instrument studies made before resume
            keep["universe"] = {"symbols": list(universe), "normalise": self.normalise,
                                "max_positions": self.max_positions}
        return json.loads(json.dumps(keep))
