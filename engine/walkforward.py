"""Walk-forward tuning: hyperparameters chosen on past data only, judged on the next unseen period.

    python -m engine.walkforward                          # bundled sp500, 3 folds x 5 trials
    python -m engine.walkforward --folds 3 --trials 20 --search model,labels
    python -m engine.walkforward --storage postgresql+psycopg2://user:pw@db/optuna   # N machines

Per fold k (``labeling.walk_forward_folds``: train, purge, validation, purge, test): an Optuna study
``<study>_fold<k>`` (TPE, median pruner fed the per-epoch validation loss) trains each trial on
train and scores it on validation; the best trial is retrained on train+validation for its best
epoch count, exported to ``<out>/fold<k>.onnx`` and backtested on the fold's test block. The test
blocks' equity curves, chained, are the out-of-sample result; the report gives how many
configurations were tried and the Deflated Sharpe Ratio of that result (N = trials of all folds,
conservative; V = mean within-fold variance of the trials' validation Sharpes). Trials are scored
with the fast simulator (``engine.fastsim``, parity-tested against backtrader trade for trade); the
test blocks use ``--engine`` (default backtrader, the reference).

Embargo (``--embargo``, default 0): ``labeling.walk_forward_folds`` leaves that many bars out after
each test block. No fold trains on data after its own test block, so here it only removes
out-of-sample bars: the stitched curve joins across each gap (no return is earned in it) while its
CAGR counts the gap's calendar time, so the stitched CAGR understates the return rate.

Resuming and sharing: everything lives in the Optuna storage (default SQLite under ``<out>``):
trials, and each finished fold's result (a study user attribute). Rerunning the same command
continues; several processes or machines on one storage URL split the trials between them.
Storage is always an RDB (SQLAlchemy URL), never optuna's JournalFileStorage: only RDB storage has
worker heartbeats in optuna 5, which turn a killed worker's RUNNING trial into FAIL and re-queue
it. SQLite (60 s busy timeout) is fine for a few processes on one machine; for many workers or
several machines use PostgreSQL (the optuna docs advise against SQLite for parallel work).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import io
import json
import math
import logging
import os
import re
import shlex
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import optuna
import pandas as pd
import torch
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from agents import FocalLoss, LazySequenceDataset, OnnxAgent, export_agent
from agents.evaluation import roc_auc
from agents.config import TrainConfig
from agents.metadata import build_card
from agents.prepare import prepare_segments
from agents.train import fit
from datafeeds import DataError, load_ohlcv, write_atomic
from engine import _search_space as space
from engine.jsonable import jsonable
from engine.deflated_sharpe import deflated_sharpe_ratio, mean_within_group_variance, sharpe_ratio
from engine.metrics import compute_stats, drawdown, infer_periods_per_year
from engine.runner import ENGINES, run_backtest
from labeling import Fold, walk_forward_folds

matplotlib.use("Agg")  # headless, as engine.plotting
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)

OBJECTIVES = {  # name -> optimisation direction
    "val_loss": "minimize",  # validation focal loss / its no-skill baseline (1 = no skill)
    "val_auc": "maximize",  # validation ROC AUC of the labelled bars
    "val_sharpe": "maximize",  # annualised Sharpe of a backtest on the validation block
}
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
_RESULT_ATTR = "fold_result"
_VALIDATION_ENGINE = "fast"  # every trial's validation backtest: engine.fastsim, parity-tested with backtrader
# everything not searched; a base option of a searched group must keep its value here (else refused)
_BASE = TrainConfig(seq_len=32, d_model=16, n_heads=2, n_layers=1, lr=1e-3, batch_size=256, holdout=0.0)


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
    cash: float = 100_000.0
    commission: float = 0.0005  # fraction of traded value per side
    slippage: float = 0.0
    engine: str = "backtrader"  # engine of each fold's test backtest (trials always use the fast one)
    heartbeat: int = 10  # (*) seconds between worker heartbeats; a trial silent for 3x is failed and retried
    base: TrainConfig = _BASE  # everything not searched

    def __post_init__(self):
        for name in ("test_frac", "timeout", "cash", "commission", "slippage"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {v}")
        if self.engine not in ENGINES:
            raise ValueError(f"--engine: unknown {self.engine!r};{_did_you_mean(self.engine, ENGINES)}"
                             f" choose from {', '.join(ENGINES)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective: unknown {self.objective!r};{_did_you_mean(self.objective, OBJECTIVES)}"
                             f" choose from {', '.join(OBJECTIVES)}")
        if self.scheme not in ("rolling", "anchored"):
            raise ValueError(f"--scheme must be rolling or anchored, got {self.scheme!r}")
        space.parse_groups(",".join(self.search))
        for name, group in space.overridden_base_fields(self.search, self.base, _BASE):
            raise ValueError(f"--{name.replace('_', '-')} is searched by --search {group}; drop it or remove "
                             f"{group!r} from --search")
        if "strategy" in self.search and self.objective != "val_sharpe":
            raise ValueError("--search strategy only changes the trading, which only --objective val_sharpe "
                             "scores; add --objective val_sharpe or drop the strategy group")
        for name in ("folds", "trials", "epochs", "n_jobs", "heartbeat"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.embargo < 0:
            raise ValueError(f"--embargo must be >= 0 bars, got {self.embargo}")
        if not 0.0 < self.test_frac < 1.0:
            raise ValueError(f"--test-frac must be in (0, 1), got {self.test_frac}")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"--timeout must be > 0 seconds, got {self.timeout}")
        if not (self.cash > 0 and self.commission >= 0 and 0 <= self.slippage < 1):
            raise ValueError(f"need --cash > 0, --commission >= 0, 0 <= --slippage < 1; got {self.cash}, "
                             f"{self.commission}, {self.slippage}")
        if self.study is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", self.study):
            raise ValueError(f"--study {self.study!r}: use letters, digits, '_', '-' and '.' only")
        # the base config describes the same data, seed and epochs (recorded in every agent card)
        object.__setattr__(self, "base", dataclasses.replace(
            self.base, data=self.data, start=self.start, end=self.end, seed=self.seed, epochs=self.epochs,
            patience=self.epochs))

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

    def fingerprint(self, data_sha256: str) -> dict:
        """What a study's trials depend on; reruns must match it (the (*) fields may differ)."""
        keep = {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("trials", "timeout", "storage", "n_jobs", "out", "heartbeat", "base", "study", "engine")}
        keep["search"] = list(self.search)
        keep["engines"] = {"validation": _VALIDATION_ENGINE, "test": self.engine}
        keep["base"] = self.base.to_dict()
        keep["data_sha256"] = data_sha256
        return json.loads(json.dumps(keep))


# ------------------------------------------------------------------------------------ sampler
class _TrialSeededTPE(optuna.samplers.BaseSampler):
    """TPE whose random stream is seeded by (seed, trial number) instead of once per process.

    One worker reproduces its runs; workers sharing a study draw different parameters (a TPE with
    the same seed in each would propose identical startup trials in every worker).
    """

    def __init__(self, seed: int, n_startup_trials: int):
        self._seed = int(seed)
        self._n_startup = int(n_startup_trials)
        self._local = threading.local()  # n_jobs threads each run their own trial

    def _tpe(self) -> optuna.samplers.TPESampler:
        return self._local.tpe

    def before_trial(self, study, trial):
        seed = int(np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # constant_liar
            # constant liar: running trials count as bad, so parallel workers spread out
            self._local.tpe = optuna.samplers.TPESampler(seed=seed, n_startup_trials=self._n_startup,
                                                         constant_liar=True)
        self._tpe().before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._tpe().infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._tpe().sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._tpe().sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values):
        self._tpe().after_trial(study, trial, state, values)


class _SurplusTrial(Exception):
    """This trial would exceed the per-fold total: other workers already hold the remaining ones."""


class _StopWhenFull:
    """Stop this worker's optimize loop once finished + in-flight trials (any worker) reach the total.

    MaxTrialsCallback counts finished trials only, so a worker would start one more trial while
    others' last trials run; that trial would then be refused as surplus (a FAIL record).
    """

    def __init__(self, cap: int):
        self.cap = cap

    def __call__(self, study: optuna.Study, trial) -> None:
        if len(study.get_trials(deepcopy=False, states=_LIVE)) >= self.cap:
            study.stop()


class _HideSurplus(logging.Filter):
    """optuna logs every failed trial with a traceback; a refused surplus trial is routine."""

    def __init__(self):
        super().__init__()
        self._pending: set[str] = set()  # its 'failed with value None' line follows the error line

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        m = re.match(r"Trial (\d+) failed", msg)
        if not m:
            return True
        if "_SurplusTrial" in msg:
            self._pending.add(m.group(1))
            return False
        if "with value None" in msg and m.group(1) in self._pending:
            self._pending.discard(m.group(1))
            return False
        return True


logging.getLogger("optuna.study._optimize").addFilter(_HideSurplus())


# ------------------------------------------------------------------------------------ storage
def open_storage(url: str, heartbeat: int = 10) -> optuna.storages.RDBStorage:
    """RDB storage with worker heartbeats: a trial whose worker stops beating for 3 heartbeats is
    failed and re-queued with the same parameters by the next worker that looks."""
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
                )
            if url.startswith("sqlite"):
                # write-ahead log: readers never block the writer, fewer 'database is locked' errors
                # between workers (the setting is stored in the database file)
                with storage.engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            return storage
        except ArgumentError as exc:
            raise ValueError(f"--storage {_redact(url)} is not a database URL ({exc}); e.g. "
                             "sqlite:///reports/optuna.db or postgresql+psycopg2://user:pw@host/db") from None
        except ImportError as exc:
            raise ValueError(f"--storage {_redact(url)}: its database driver is missing ({exc}); for PostgreSQL: "
                             "pip install psycopg2-binary") from None
        except SQLAlchemyError as exc:
            # workers starting together race to create the tables of a new database: retry a few times
            if attempt == 4:
                raise ValueError(f"cannot open the Optuna storage {_redact(url)}: {exc}".splitlines()[0]) from None
            time.sleep(0.5 + np.random.default_rng().random())


def _redact(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy understands: say nothing about it
        return "<storage>"


def _fail_stale(study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _counts(study) -> dict:
    c = {s: 0 for s in ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")}
    for t in study.get_trials(deepcopy=False):
        c[t.state.name] = c.get(t.state.name, 0) + 1
    return c


# ------------------------------------------------------------------------------------ the run
@dataclass
class _Context:
    cfg: WalkForwardConfig
    df: pd.DataFrame
    folds: list[Fold]
    storage: optuna.storages.RDBStorage
    fingerprint: dict
    ppy: float
    command: str
    spent: dict  # fold -> seconds of search in this process
    worker: str = dataclasses.field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    run_id: str = dataclasses.field(default_factory=lambda: os.urandom(4).hex())  # this call, for "this run" counts


def run_walk_forward(cfg: WalkForwardConfig, *, command: str = "") -> dict:
    """Run (or resume, or join) the study; write the report files and return the report dict."""
    t0 = time.perf_counter()
    df = load_ohlcv(cfg.data, start=cfg.start, end=cfg.end)
    folds = walk_forward_folds(len(df), n_folds=cfg.folds, scheme=cfg.scheme, test_frac=cfg.test_frac,
                               purge=cfg.purge, embargo=cfg.embargo)
    try:
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"--out {cfg.out_dir}: cannot create the folder ({exc.strerror or exc})") from None
    storage = open_storage(cfg.storage_url, cfg.heartbeat)
    fp = cfg.fingerprint(str(df.attrs.get("sha256", "")))
    fp["folds_bars"] = [[f.train.start, f.val.start, f.test.start, f.test.stop] for f in folds]
    ctx = _Context(cfg, df, folds, storage, fp, infer_periods_per_year(df.index), command, {})
    results: dict[int, dict] = {}
    status: dict[int, str] = {}  # what this run did per fold
    poll = min(5.0, float(cfg.heartbeat))
    storage_errors = 0
    while len(results) < len(folds):
        progressed = False
        for fold in folds:
            if fold.fold in results:
                continue
            try:
                outcome = _advance(ctx, fold)
            except optuna.exceptions.StorageInternalError as exc:
                # a busy database (SQLite under several workers): the step is redone, a trial in flight is lost
                storage_errors += 1
                if storage_errors > 10:
                    raise
                log.warning("fold %d: storage error (%s); retrying", fold.fold, exc.__cause__ or exc)
                time.sleep(1.0 + np.random.default_rng().random())
                continue
            if isinstance(outcome, dict):
                results[fold.fold] = outcome
                if outcome.get("run_id") == ctx.run_id:
                    status[fold.fold] = "finalised here"
                elif fold.fold not in status:
                    status[fold.fold] = "skipped: finished before this run"
                    onnx = outcome["onnx"]
                    if not Path(onnx["path"]).is_file():
                        log.warning("fold %d was finalised earlier; its agent %s (written on %s) is not here",
                                    fold.fold, onnx["path"], onnx["host"])
                else:
                    status[fold.fold] = f"finalised by {outcome['finalised_by']}"
                progressed = True
            else:
                status.setdefault(fold.fold, "working")
                progressed |= outcome == "progressed"
        if not progressed and len(results) < len(folds):
            log.info("waiting for other workers (trials or a fold's refit in flight)")
            time.sleep(poll)
    report = _report(ctx, [results[k] for k in sorted(results)], status, time.perf_counter() - t0)
    return report


def _fold_study(ctx: _Context, fold: Fold) -> optuna.Study:
    cfg = ctx.cfg
    study = optuna.create_study(
        storage=ctx.storage, study_name=f"{cfg.study_name}_fold{fold.fold}", direction=cfg.direction,
        load_if_exists=True,
        sampler=_TrialSeededTPE(cfg.seed + 7919 * fold.fold, n_startup_trials=min(10, max(1, cfg.trials // 2))),
        # epoch 1 is never pruned; from epoch 2 a trial worse than the median of earlier ones stops
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2),
    )
    saved = study.user_attrs.get("config")
    if saved is None:  # new study (a concurrent worker writing the same value is harmless)
        study.set_user_attr("config", ctx.fingerprint)
    elif saved != ctx.fingerprint:
        diff = sorted(k for k in set(saved) | set(ctx.fingerprint) if saved.get(k) != ctx.fingerprint.get(k))
        raise ValueError(
            f"study {study.study_name!r} in {_redact(ctx.cfg.storage_url)} was made with other settings "
            f"({', '.join(f'{k}={saved.get(k)!r} now {ctx.fingerprint.get(k)!r}' for k in diff)[:400]}); "
            "rerun with the original options or choose a new --study"
        )
    return study


def _advance(ctx: _Context, fold: Fold):
    """Do what can be done for ``fold`` now: its result (dict), 'progressed' or 'blocked'."""
    cfg = ctx.cfg
    study = _fold_study(ctx, fold)
    searched = False
    while True:
        result = study.user_attrs.get(_RESULT_ATTR)
        if result is not None:
            return result
        _fail_stale(study)
        c = _counts(study)
        done, running, waiting = c["COMPLETE"] + c["PRUNED"], c["RUNNING"], c["WAITING"]
        closed = study.user_attrs.get("search_closed")
        if not closed and (waiting > 0 or done + running < cfg.trials):
            # queued retries fill slots of the total, so they are part of cap - done - running
            _search(ctx, fold, study, n_trials=max(cfg.trials - done - running, waiting))
            searched = True
            continue
        if running > 0 or (waiting > 0 and not closed):
            # other workers' trials in flight (a dead worker's fail after the grace period and are retried)
            return "progressed" if searched else "blocked"
        break
    if c["COMPLETE"] == 0:
        raise RuntimeError(f"fold {fold.fold}: none of the {done} trials completed (all pruned or failed); "
                           "use more --trials or a different --search")
    outcome = _finalise_claimed(ctx, fold, study)
    return "progressed" if outcome == "blocked" and searched else outcome


def _search(ctx: _Context, fold: Fold, study: optuna.Study, n_trials: int) -> None:
    cfg = ctx.cfg
    left = None if cfg.timeout is None else cfg.timeout - ctx.spent.get(fold.fold, 0.0)
    t0 = time.perf_counter()
    try:
        if left is None or left > 0:
            study.optimize(
                _Objective(ctx, fold), n_trials=n_trials, timeout=left, n_jobs=cfg.n_jobs, gc_after_trial=True,
                callbacks=[MaxTrialsCallback(cfg.trials, states=_FINISHED), _StopWhenFull(cfg.trials)],
            )
    except _SurplusTrial:
        log.info("fold %d: the remaining trials are held by other workers", fold.fold)
    ctx.spent[fold.fold] = ctx.spent.get(fold.fold, 0.0) + time.perf_counter() - t0
    if cfg.timeout is not None and ctx.spent[fold.fold] >= cfg.timeout and not study.user_attrs.get("search_closed"):
        c = _counts(study)
        log.warning("fold %d: --timeout %gs reached after %d finished trials; finalising with those",
                    fold.fold, cfg.timeout, c["COMPLETE"] + c["PRUNED"])
        study.set_user_attr("search_closed", f"timeout {cfg.timeout}s by {ctx.worker}")


class _Objective:
    """One trial: train on the fold's train block, score on its validation block."""

    def __init__(self, ctx: _Context, fold: Fold):
        self.ctx, self.fold = ctx, fold

    def __call__(self, trial: optuna.Trial) -> float:
        cfg, fold = self.ctx.cfg, self.fold
        _check_not_surplus(trial, cfg.trials)
        trial.set_user_attr("worker", self.ctx.worker)
        trial.set_user_attr("run_id", self.ctx.run_id)
        t0 = time.perf_counter()
        tcfg, execution = space.suggest(trial, cfg.search, cfg.base)
        tcfg = dataclasses.replace(tcfg, epochs=cfg.epochs, patience=cfg.epochs)
        prep = prepare_segments(tcfg, self.ctx.df, fold.train, fold.val)
        y_tr = prep.y[prep.train_ends].astype(np.float64)
        y_va = prep.y[prep.val_ends].astype(np.float64)
        base_rate = float(y_tr.mean())
        loss_fn = FocalLoss(alpha=tcfg.focal_alpha, gamma=tcfg.focal_gamma)
        # focal losses with different alpha/gamma or labels are not comparable; their ratio to the
        # no-skill loss (always predict the training base rate) is: 1 = no skill, lower = better
        baseline = loss_fn.baseline(torch.from_numpy(y_va), base_rate)
        sign = 1.0 if cfg.direction == "minimize" else -1.0  # the pruner compares in the study's direction

        def on_epoch(record, state):
            trial.report(sign * record["val_loss"] / baseline, record["epoch"])
            if trial.should_prune():
                log.info("fold %d trial %d: pruned after epoch %d (validation loss ratio %.4f)", fold.fold,
                         trial.number, record["epoch"], record["val_loss"] / baseline)
                raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")

        res = fit(tcfg, prep, checkpoint_dir=None, on_epoch=on_epoch, progress=False)
        model, state = res["model"], res["state"]
        z_tr = _logits(model, prep.x, tcfg.seq_len, prep.train_ends)
        z_va = _logits(model, prep.x, tcfg.seq_len, prep.val_ends)
        threshold = execution.threshold(_sigmoid(z_tr), base_rate)
        val = _validation_backtest(self.ctx, fold, tcfg, execution, prep, model, threshold)
        scores = {
            "val_loss": state["best_val"] / baseline,
            "val_auc": roc_auc(y_va, z_va),
            "val_sharpe": val["sharpe"],
        }
        for key, value in {**scores, "best_epoch": state["best_epoch"], "threshold": threshold,
                           "val_sr": val["sr"], "val_return": val["total_return"], "val_trades": val["n_trades"],
                           "seconds": time.perf_counter() - t0}.items():
            trial.set_user_attr(key, value)
        value = scores[cfg.objective]
        if value is None:  # AUC with one class, Sharpe of a flat curve: score as no skill
            value = {"val_auc": 0.5, "val_sharpe": 0.0}[cfg.objective]
        log.info("fold %d trial %d: %s %.4f  (val AUC %s, val Sharpe %s, %d trades, %.1fs)", fold.fold, trial.number,
                 cfg.objective, value, _fmt(scores["val_auc"], ".3f"), _fmt(val["sharpe"], ".2f"), val["n_trades"],
                 time.perf_counter() - t0)
        return float(value)


def _check_not_surplus(trial: optuna.Trial, cap: int) -> None:
    # Trial numbers are given out in creation order; if `cap` live trials precede this one, the
    # study is full and another worker's trial got there first (MaxTrialsCallback alone only stops
    # a worker after it finished one trial too many).
    live = trial.study.get_trials(deepcopy=False, states=_LIVE)
    ahead = sum(1 for t in live if t.number < trial.number)
    if ahead >= cap:
        trial.set_user_attr("surplus", True)
        raise _SurplusTrial(f"trial {trial.number}: {ahead} trials already hold the {cap} slots")
    # two workers failing the same stale trial at once (SQLite has no row locks) queue it twice:
    # only the first copy runs
    me = next((t for t in live if t.number == trial.number), None)
    origin = None if me is None else me.system_attrs.get("failed_trial")
    if origin is not None and any(t.system_attrs.get("failed_trial") == origin for t in live if t.number < trial.number):
        trial.set_user_attr("surplus", True)
        raise _SurplusTrial(f"trial {trial.number}: a copy of failed trial {origin} already runs")


def _logits(model, x: np.ndarray, seq_len: int, ends: np.ndarray) -> np.ndarray:
    ds = LazySequenceDataset(x, np.zeros(len(x), dtype=np.float32), seq_len, index=ends)
    out = []
    model.eval()
    with torch.no_grad():
        for xb, _ in ds.iter_batches(1024):
            out.append(model(xb).float())
    return torch.cat(out).numpy().astype(np.float64) if out else np.array([], dtype=np.float64)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def _full_window_ends(x: np.ndarray, seq_len: int, segment: range) -> np.ndarray:
    """Bars of ``segment`` whose window of ``seq_len`` normalised feature rows is all finite."""
    ok_rows = np.isfinite(x).all(axis=1).astype(np.int64)
    csum = np.concatenate([[0], np.cumsum(ok_rows)])
    ends = np.arange(max(segment.start, seq_len - 1), min(segment.stop, len(x)))
    return ends[(csum[ends + 1] - csum[ends + 1 - seq_len]) == seq_len]


def _validation_backtest(ctx, fold, tcfg, execution, prep, model, threshold) -> dict:
    """Backtest the trial's torch model on every bar of the validation block (history for warm-up)."""
    part = ctx.df.iloc[: fold.val.stop]
    ends = _full_window_ends(prep.x, tcfg.seq_len, fold.val)
    prob = np.full(len(part), np.nan)
    prob[ends] = _sigmoid(_logits(model, prep.x, tcfg.seq_len, ends))
    bt = run_backtest(part, "agent", cash=ctx.cfg.cash, commission=ctx.cfg.commission, slippage=ctx.cfg.slippage,
                      start=part.index[fold.val.start], end=part.index[fold.val.stop - 1],
                      signal=pd.Series(prob, index=part.index), periods_per_year=ctx.ppy, benchmark=False,
                      engine=_VALIDATION_ENGINE, **execution.strategy_params(tcfg, threshold))
    return {"sharpe": bt.stats["sharpe"], "sr": sharpe_ratio(bt.equity.pct_change().dropna()),
            "total_return": bt.stats["total_return"], "n_trades": int(bt.stats["n_trades"])}


# ------------------------------------------------------------------------------------ finalising a fold
def _finalise_claimed(ctx: _Context, fold: Fold, study: optuna.Study):
    """Refit, export and test the fold's best trial, unless another live worker is already doing it."""
    name = f"{study.study_name}_finalise"
    if not _claim(ctx, name):
        return "blocked"
    stop = threading.Event()
    beat = threading.Thread(target=_claim_heartbeat, args=(ctx, name, stop), daemon=True)
    beat.start()
    try:
        result = _finalise(ctx, fold, study)
    finally:
        stop.set()
        beat.join()
    study.set_user_attr(_RESULT_ATTR, result)
    return result


def _claim(ctx: _Context, name: str) -> bool:
    """Atomically take the job of finalising a fold: creating a study of that name succeeds once.

    A claim whose worker stopped beating (3 heartbeats), or that was made by a dead process on this
    host, is stale: it is deleted and claimed anew.
    """
    try:
        marker = optuna.create_study(storage=ctx.storage, study_name=name)
    except optuna.exceptions.DuplicatedStudyError:
        try:
            info = optuna.load_study(study_name=name, storage=ctx.storage).user_attrs
        except KeyError:  # deleted meanwhile by a worker taking over a stale claim
            return False
        if not _claim_is_stale(info, 3 * ctx.cfg.heartbeat):
            return False
        log.warning("taking over the stale claim %s of %s", name, info.get("worker"))
        try:
            optuna.delete_study(study_name=name, storage=ctx.storage)
        except KeyError:
            pass
        return _claim(ctx, name)
    marker.set_user_attr("worker", ctx.worker)
    marker.set_user_attr("alive", time.time())
    return True


def _claim_is_stale(info: dict, grace: float) -> bool:
    alive = info.get("alive")
    if alive is None:
        return False  # just created; its owner writes the attributes next
    host, _, pid = str(info.get("worker", "")).rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
        return True
    return time.time() - float(alive) > grace


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim_heartbeat(ctx: _Context, name: str, stop: threading.Event) -> None:
    marker = optuna.load_study(study_name=name, storage=ctx.storage)
    while not stop.wait(ctx.cfg.heartbeat):
        marker.set_user_attr("alive", time.time())


def _finalise(ctx: _Context, fold: Fold, study: optuna.Study) -> dict:
    cfg, df, k = ctx.cfg, ctx.df, fold.fold
    t0 = time.perf_counter()
    best = study.best_trial
    tcfg, execution = space.from_params(best.params, cfg.base)
    best_epoch = int(best.user_attrs["best_epoch"])
    tcfg = dataclasses.replace(tcfg, epochs=best_epoch, patience=best_epoch)
    log.info("fold %d: refitting trial %d (%s) on train+validation for %d epoch(s)", k, best.number,
             best.params, best_epoch)
    # train+validation as one block: events whose label span lies inside it, nothing after it
    union = range(fold.train.start, fold.val.stop)
    prep = prepare_segments(tcfg, df, union, None)
    res = fit(tcfg, prep, checkpoint_dir=None, progress=False)
    model = res["model"]
    y_tr = prep.y[prep.train_ends].astype(np.float64)
    base_rate = float(y_tr.mean())
    z_tr = _logits(model, prep.x, tcfg.seq_len, prep.train_ends)
    threshold = execution.threshold(_sigmoid(z_tr), base_rate)
    loss_fn = FocalLoss(alpha=tcfg.focal_alpha, gamma=tcfg.focal_gamma)
    metrics = {
        "threshold": threshold,
        "threshold_rule": ("train signal rate = train base rate" if execution.signal_rate is None
                           else f"train signal rate = {execution.signal_rate:.4f} (searched)"),
        "train_loss": float(loss_fn(torch.from_numpy(z_tr), torch.from_numpy(y_tr))),
        "baseline_train_loss": loss_fn.baseline(torch.from_numpy(y_tr), base_rate),
        "train_auc": roc_auc(y_tr, z_tr),
        "label_balance": {"train_positive_rate": base_rate, "train_events": int(len(y_tr))},
        "best_epoch": best_epoch, "epochs_run": len(res["state"]["history"]), "history": res["state"]["history"],
        "selection": {"objective": cfg.objective, "value": best.value, "trial": best.number},
    }
    dates = {name: [str(df.index[r.start]), str(df.index[r.stop - 1])]
             for name, r in (("train", fold.train), ("validation", fold.val), ("test", fold.test))}
    card = build_card(tcfg, prep, model, metrics, ctx.command)  # the refit has no validation block
    card["walk_forward"] = {"study": cfg.study_name, "fold": k, **dates, "best_trial": best.number,
                            "params": best.params, "execution": dataclasses.asdict(execution)}
    onnx_path = cfg.out_dir / f"fold{k}.onnx"
    last = LazySequenceDataset(prep.x, prep.y, tcfg.seq_len, index=prep.train_ends[-64:])
    example = last.batch(np.arange(len(last)))[0].numpy()  # parity checked on real training windows
    export_agent(model, card, onnx_path, example)

    # the exported agent on the test block; features over all bars up to the test end (warm-up from history)
    agent = OnnxAgent.load(onnx_path)
    hist = df.iloc[: fold.test.stop]
    probs = agent.predict_proba(hist)
    bt = run_backtest(hist, "agent", cash=cfg.cash, commission=cfg.commission, slippage=cfg.slippage,
                      start=hist.index[fold.test.start], end=hist.index[-1], signal=probs,
                      periods_per_year=ctx.ppy, engine=cfg.engine, **execution.strategy_params(tcfg, agent.threshold))
    c = _counts(study)
    plots = _plot_study(study, cfg.out_dir, k)
    trades = json.loads(bt.trades.to_json(orient="records", date_format="iso")) if len(bt.trades) else []
    result = {
        "fold": k, **dates,
        "trials": {"complete": c["COMPLETE"], "pruned": c["PRUNED"],
                   "failed": sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                                 if not t.user_attrs.get("surplus"))},
        "trial_val_sr": [t.user_attrs.get("val_sr") for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))],
        "best_trial": best.number, "best_value": best.value, "params": best.params, "best_epoch": best_epoch,
        "execution": execution.strategy_params(tcfg, agent.threshold),
        "stats": bt.stats, "benchmark_stats": bt.benchmark_stats,
        "index": [str(t) for t in bt.equity.index], "equity": bt.equity.tolist(),
        "benchmark_equity": bt.benchmark_equity.tolist(), "trades": trades,
        "onnx": {"path": str(onnx_path.resolve()), "sha256": _sha256(onnx_path), "host": socket.gethostname()},
        "plots": plots, "finalised_by": ctx.worker, "run_id": ctx.run_id, "finalised_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": time.perf_counter() - t0,
    }
    _write_json(cfg.out_dir / f"fold{k}.json", result)
    return result


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------ output
def stitch_equity(curves: list[pd.Series], cash: float) -> pd.Series:
    """Chain the folds' test equity curves (each starting with ``cash``) into one curve from ``cash``:
    each fold's curve is rescaled to start where the previous one ended."""
    parts, level = [], float(cash)
    for eq in curves:
        part = eq.astype(np.float64) * (level / float(cash))
        parts.append(part)
        level = float(part.iloc[-1])
    out = pd.concat(parts)
    if not out.index.is_monotonic_increasing or out.index.has_duplicates:
        raise ValueError("fold test blocks overlap or are out of order; cannot stitch them")
    return out.rename("equity")


def _report(ctx: _Context, results: list[dict], status: dict, seconds: float) -> dict:
    cfg = ctx.cfg
    curves = [pd.Series(r["equity"], index=pd.DatetimeIndex(r["index"])) for r in results]
    bench = [pd.Series(r["benchmark_equity"], index=pd.DatetimeIndex(r["index"])) for r in results]
    equity, bench_equity = stitch_equity(curves, cfg.cash), stitch_equity(bench, cfg.cash)
    trades = pd.DataFrame([t for r in results for t in r["trades"]])
    if len(trades):
        for col in ("entry_time", "exit_time"):
            trades[col] = pd.to_datetime(trades[col])
    stats = compute_stats(equity, trades if len(trades) else None, periods_per_year=ctx.ppy)
    bench_stats = compute_stats(bench_equity, periods_per_year=ctx.ppy, exposure=1.0)
    n_configs = sum(r["trials"]["complete"] + r["trials"]["pruned"] for r in results)
    groups = [[s for s in r["trial_val_sr"] if s is not None] for r in results]
    var, var_per_fold = mean_within_group_variance(groups)
    dsr = deflated_sharpe_ratio(equity.pct_change().dropna(), [s for g in groups for s in g], n_trials=n_configs,
                                var_trial_sharpe=var)
    pooled = [s for g in groups for s in g]
    dsr["var_method"] = (
        "mean over folds with >= 2 completed trials of the within-fold variance (ddof=1) of the trials' "
        "per-bar validation Sharpes (0 if no such fold); folds validate on different periods, so pooling "
        "them would measure regime differences, not search spread")
    dsr["var_per_fold"] = var_per_fold
    dsr["var_pooled_across_folds"] = float(np.var(pooled, ddof=1)) if len(pooled) >= 2 else None  # for reference
    dsr["note"] = ("N = all trials of all folds (complete + pruned): conservative, as each fold selects only "
                   "among its own trials; V as in var_method; SR, skew, kurtosis of the stitched test returns")
    png = cfg.out_dir / "stitched_equity.png"
    _plot_stitched(equity, bench_equity, [c.index[0] for c in curves[1:]], png,
                   f"{cfg.study_name}: walk-forward out-of-sample ({len(results)} folds) vs buy-and-hold")
    report = {
        "study": cfg.study_name,
        "storage": _redact(cfg.storage_url),
        "command": ctx.command,
        "config": ctx.fingerprint,
        "objective": {"name": cfg.objective, "direction": cfg.direction},
        "search": list(cfg.search),
        "trials_per_fold": cfg.trials,
        "configurations_tried": n_configs,
        "trials": {k: sum(r["trials"][k] for r in results) for k in ("complete", "pruned", "failed")},
        "folds": [{k: v for k, v in r.items() if k not in ("index", "equity", "benchmark_equity", "trades")}
                  | {"this_run": status.get(r["fold"], "")} for r in results],
        "stitched": {"stats": stats, "benchmark_stats": bench_stats},
        "deflated_sharpe": dsr,
        "new_trials_this_run": sum(
            1 for f in ctx.folds for t in optuna.load_study(study_name=f"{cfg.study_name}_fold{f.fold}",
                                                            storage=ctx.storage).get_trials(deepcopy=False, states=_FINISHED)
            if t.user_attrs.get("run_id") == ctx.run_id),
        "files": {"report": str(cfg.out_dir / "report.json"), "stitched_equity_png": str(png)},
        "seconds": seconds,
    }
    _write_json(cfg.out_dir / "report.json", report)
    _write_csv(cfg.out_dir / "stitched_equity.csv", pd.DataFrame({"equity": equity, "benchmark": bench_equity}))
    return report


def _plot_study(study: optuna.Study, out: Path, k: int) -> dict:
    """Optimisation history and parameter importances of one fold (importances need >= 2 varied trials)."""
    paths = {"history": str(out / f"fold{k}_history.png"), "importance": None, "importance_note": None}
    # optuna's plots switch the global matplotlib style: keep that inside this block
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
        ax = optuna.visualization.matplotlib.plot_optimization_history(study)
        ax.set_title(f"fold {k}: optimisation history ({study.direction.name.lower()} {ax.get_ylabel()})")
        _save_figure(ax.figure, Path(paths["history"]))
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        varied = [p for p in (done[0].params if done else {}) if len({repr(t.params.get(p)) for t in done}) > 1]
        if len(done) < 2 or not varied:
            paths["importance_note"] = f"needs >= 2 completed trials with varied parameters ({len(done)} completed)"
            return paths
        try:
            ax = optuna.visualization.matplotlib.plot_param_importances(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            paths["importance_note"] = f"not computable: {exc}"
            return paths
        ax.set_title(f"fold {k}: hyperparameter importances", loc="left")  # replaces optuna's
        _save_figure(ax.figure, Path(out / f"fold{k}_importance.png"))
        paths["importance"] = str(out / f"fold{k}_importance.png")
    return paths


def _plot_stitched(equity: pd.Series, bench: pd.Series, boundaries, path: Path, title: str) -> None:
    fig, (a1, a2) = plt.subplots(2, 1, sharex=True, figsize=(12, 7), gridspec_kw={"height_ratios": [3, 1]})
    a1.plot(equity.index, equity.to_numpy(), label="walk-forward out-of-sample", color="tab:blue")
    a1.plot(bench.index, bench.to_numpy(), label="buy and hold", color="tab:gray", alpha=0.8)
    a2.fill_between(equity.index, drawdown(equity).to_numpy(), 0, color="tab:blue", alpha=0.4, label="strategy")
    a2.plot(bench.index, drawdown(bench).to_numpy(), color="tab:gray", lw=0.8, label="buy and hold")
    for ax in (a1, a2):
        for b in boundaries:
            ax.axvline(b, color="k", lw=0.6, ls="--", alpha=0.5)
    a1.set_title(title)
    a1.set_ylabel("equity")
    a2.set_ylabel("drawdown")
    a1.legend(loc="upper left")
    a1.grid(alpha=0.3)
    a2.grid(alpha=0.3)
    _save_figure(fig, path)


def _save_figure(fig, path: Path) -> None:
    """PNG of ``fig`` written atomically (workers may write the same fold's plots); closes ``fig``."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    write_atomic(path, buf.getvalue())


def _write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(jsonable(obj), indent=2, allow_nan=False).encode())


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_atomic(path, frame.to_csv().encode())


# ------------------------------------------------------------------------------------ CLI
def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f" did you mean {close[0]!r}?" if close else ""


class _Parser(argparse.ArgumentParser):
    """One-line errors (exit 2) with a suggestion for misspelt options."""

    def error(self, message):
        m = re.match(r"unrecognized arguments: (.*)", message)
        if m:
            opts = [s for a in self._actions for s in a.option_strings]
            bad = [w for w in m.group(1).split() if w.startswith("-")]
            hints = [f"{w}:{_did_you_mean(w.split('=')[0], opts)}" for w in bad if _did_you_mean(w.split("=")[0], opts)]
            if hints:
                message += " (" + "; ".join(hints) + ")"
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _choice(name: str, options):
    def parse(text: str) -> str:
        if text not in options:
            raise argparse.ArgumentTypeError(f"unknown {name} {text!r};{_did_you_mean(text, options)} "
                                             f"choose from {', '.join(options)}")
        return text
    return parse


def _search_arg(text: str) -> tuple[str, ...]:
    try:
        return space.parse_groups(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--search: ")) from None


def _parser() -> argparse.ArgumentParser:
    d, b = WalkForwardConfig(), WalkForwardConfig().base
    p = _Parser(
        prog="python -m engine.walkforward", allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Walk-forward tuning: per fold, Optuna picks hyperparameters on train/validation, the best "
        "is retrained on train+validation and traded on the next unseen test block; the chained test blocks "
        "are the out-of-sample result. Rerun the same command to resume; start it on several machines with "
        "one --storage URL to share the work.",
        epilog="Example: python -m engine.walkforward --folds 3 --trials 5   (bundled S&P 500, a few minutes on 2 cores). "
        "Outputs in --out: report.json, stitched_equity.png/.csv, fold<k>.onnx/.json, fold<k>_history.png, "
        "fold<k>_importance.png.",
    )
    g = p.add_argument_group("data and folds")
    g.add_argument("--data", default=d.data, help="bundled sample name (sp500, nasdaq, eurusd_1h, ...) or a CSV/Parquet path")
    g.add_argument("--start", default=None, help="first date used, e.g. 2005-01-01")
    g.add_argument("--end", default=None, help="last date used")
    g.add_argument("--folds", type=int, default=d.folds, help="number of walk-forward folds (test blocks)")
    g.add_argument("--scheme", type=_choice("scheme", ("rolling", "anchored")), default=d.scheme,
                   help="rolling: fixed-length train window; anchored: train always starts at the first bar")
    g.add_argument("--test-frac", type=float, default=d.test_frac, help="last fraction of the bars split into the test blocks")
    g.add_argument("--embargo", type=int, default=d.embargo,
                   help="bars left out after each test block. No fold trains on later data, so this only drops "
                   "out-of-sample bars: the stitched curve joins across each gap and its CAGR, which counts the "
                   "gaps' calendar time, then understates")
    g = p.add_argument_group("search")
    g.add_argument("--trials", type=int, default=d.trials, help="trials per fold, in total over all workers")
    g.add_argument("--timeout", type=float, default=None, help="seconds of search per fold (and process); then the fold is finalised with the trials it has")
    g.add_argument("--objective", type=_choice("objective", tuple(OBJECTIVES)), default=d.objective,
                   help="val_loss: validation focal loss / no-skill loss (minimised); val_auc: validation AUC; "
                   "val_sharpe: Sharpe of a backtest on the validation block")
    g.add_argument("--search", type=_search_arg, default=d.search, metavar="GROUPS",
                   help="comma list of: model (d_model, layers, heads, dropout, lr, seq_len, focal alpha/gamma), "
                   "labels (pt, sl, horizon), strategy (threshold as a training signal rate, pt/sl at execution; "
                   "needs --objective val_sharpe)")
    g.add_argument("--epochs", type=int, default=d.epochs, help="epochs per trial (the refit uses the best trial's best epoch)")
    g.add_argument("--seed", type=int, default=d.seed, help="sampler and model seed")
    g.add_argument("--n-jobs", type=int, default=d.n_jobs, help="trials in parallel threads in this process")
    g = p.add_argument_group("storage and output")
    g.add_argument("--study", default=None, help="study name (default: wf_<data>); fold k's Optuna study is <study>_fold<k>")
    g.add_argument("--storage", default=None, help="Optuna RDB URL shared by all workers, e.g. "
                   "postgresql+psycopg2://user:pw@host/db (default: sqlite:///<out>/optuna.db)")
    g.add_argument("--out", default=None, help="output folder (default: reports/<study>)")
    g.add_argument("--heartbeat", type=int, default=d.heartbeat, help="seconds between worker heartbeats; "
                   "a trial silent for 3 heartbeats (killed worker) is failed and retried")
    g = p.add_argument_group("trading costs")
    g.add_argument("--cash", type=float, default=d.cash)
    g.add_argument("--commission", type=float, default=d.commission, help="fraction of traded value per side")
    g.add_argument("--slippage", type=float, default=d.slippage, help="fraction of price, against the trade")
    g.add_argument("--engine", type=_choice("engine", ENGINES), default=d.engine,
                   help="engine of each fold's test backtest (backtrader: the reference; fast: engine.fastsim); "
                   "trials' validation backtests always use fast")
    g = p.add_argument_group("base model and labels (used for everything not searched; an option of a "
                             "searched group is refused)")
    g.add_argument("--seq-len", type=int, default=b.seq_len)
    g.add_argument("--d-model", type=int, default=b.d_model)
    g.add_argument("--n-heads", type=int, default=b.n_heads)
    g.add_argument("--n-layers", type=int, default=b.n_layers)
    g.add_argument("--lr", type=float, default=b.lr)
    g.add_argument("--batch-size", type=int, default=b.batch_size)
    g.add_argument("--pt", type=float, default=b.pt, help="take-profit barrier in ATRs")
    g.add_argument("--sl", type=float, default=b.sl, help="stop-loss barrier in ATRs")
    g.add_argument("--horizon", type=int, default=b.horizon, help="vertical barrier in bars")
    g.add_argument("--quiet", action="store_true", help="only the summary")
    return p


def config_from_args(args: argparse.Namespace) -> WalkForwardConfig:
    base = dataclasses.replace(
        WalkForwardConfig().base, seq_len=args.seq_len, d_model=args.d_model, n_heads=args.n_heads,
        n_layers=args.n_layers, lr=args.lr, batch_size=args.batch_size, pt=args.pt, sl=args.sl, horizon=args.horizon,
    )
    return WalkForwardConfig(
        data=args.data, start=args.start, end=args.end, folds=args.folds, scheme=args.scheme,
        test_frac=args.test_frac, embargo=args.embargo, trials=args.trials, timeout=args.timeout,
        storage=args.storage, study=args.study, n_jobs=args.n_jobs, seed=args.seed, objective=args.objective,
        search=tuple(args.search), epochs=args.epochs, out=args.out, cash=args.cash, commission=args.commission,
        slippage=args.slippage, engine=args.engine, heartbeat=args.heartbeat, base=base,
    )


def _fmt(x, spec=".4f"):
    return "n/a" if x is None else format(x, spec)


def _pct(x):
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def summary_lines(report: dict) -> list[str]:
    """The printed summary: per-fold table, stitched result vs buy-and-hold, search size and DSR."""
    lines = [f"study {report['study']}  storage {report['storage']}",
             f"{'fold':>4}  {'test period':<23} {'trials c/p':>10} {'best ' + report['objective']['name']:>16} "
             f"{'return':>8} {'sharpe':>7} {'trades':>6} {'B&H':>8}  this run"]
    for f in report["folds"]:
        s, b = f["stats"], f["benchmark_stats"]
        lines.append(f"{f['fold']:>4}  {f['test'][0][:10]}..{f['test'][1][:10]} "
                     f"{f['trials']['complete']:>6}/{f['trials']['pruned']:<3} {_fmt(f['best_value']):>16} "
                     f"{_pct(s['total_return']):>8} {_fmt(s['sharpe'], '.2f'):>7} {s['n_trades']:>6} "
                     f"{_pct(b['total_return']):>8}  {f['this_run']}")
    s, b, d = report["stitched"]["stats"], report["stitched"]["benchmark_stats"], report["deflated_sharpe"]
    lines += [
        f"stitched out-of-sample {s['start'][:10]}..{s['end'][:10]}: return {_pct(s['total_return'])}  "
        f"CAGR {_pct(s['cagr'])}  Sharpe {_fmt(s['sharpe'], '.2f')}  max DD {_pct(s['max_drawdown'])}  trades {s['n_trades']}",
        f"buy and hold, same bars:  return {_pct(b['total_return'])}  CAGR {_pct(b['cagr'])}  "
        f"Sharpe {_fmt(b['sharpe'], '.2f')}  max DD {_pct(b['max_drawdown'])}",
        f"configurations tried: {report['configurations_tried']} (all folds: {report['trials']['complete']} complete, "
        f"{report['trials']['pruned']} pruned; {report['trials']['failed']} failed)",
        f"deflated Sharpe ratio: {_fmt(d['dsr'], '.3f')}  (per-bar SR {_fmt(d['sharpe'])} vs SR0 {_fmt(d['sr0'])} "
        f"expected from the best of {d['n_trials']} skill-less trials, V {d['var_trial_sharpe']:.2e} within-fold; "
        "0.95+ = unlikely to be search luck)",
        f"new trials this run: {report['new_trials_this_run']}",
        f"wrote {report['files']['report']} and {report['files']['stitched_equity_png']}",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.quiet:
        log.setLevel(logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    command = "python -m engine.walkforward" + ("" if not argv else " " + shlex.join(argv))
    try:
        cfg = config_from_args(args)
        report = run_walk_forward(cfg, command=command)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # output folder or storage path not writable
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; finished trials are kept: rerun the same command to resume", file=sys.stderr)
        return 130
    for f in report["folds"]:
        if f["this_run"].startswith("skipped"):
            print(f"fold {f['fold']}: already finished ({f['trials']['complete'] + f['trials']['pruned']} trials), "
                  "resumed from the study: nothing recomputed")
    print("\n".join(summary_lines(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
