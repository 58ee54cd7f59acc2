"""Walk-forward orchestration: per fold, search, claim and finalise; then stitch and report.

The command line and the design notes are in :mod:`engine.walkforward`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import torch
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from agents import FocalLoss, LazySequenceDataset, OnnxAgent, export_agent
from agents.model.losses import best_constant_probability
from agents.artifact.evaluation import roc_auc
from agents.artifact.metadata import build_card
from agents.data.prepare import full_window_ends, prepare_segments
from agents.artifact.export import EXPORTER_MEMORY
from agents import TrainConfig, TransformerAgent, check_fits, detect, estimate_train_memory
from agents.training.trainer import fit
from datafeeds import is_universe, load_ohlcv
from engine.deflated_sharpe import sharpe_ratio
from engine.fastsim import sweep
from engine.metrics import infer_periods_per_year
from engine.runner import run_backtest
from engine.walkforward import space, universe
from engine.walkforward.config import VALIDATION_ENGINE, WalkForwardConfig
from engine.walkforward.predict import logits, sigmoid
from engine.walkforward.space import Execution
from engine.walkforward.cpcv import evaluate_cpcv
from engine.walkforward.console import Progress, check_stop, format_params, pruned_line, stop_on_interrupt, trial_line
from engine.walkforward.report import (deflated_sharpe, fold_pbo, member_contributions, pbo_summary, plot_stitched,
                                       plot_study, save_figure, stitched_result, write_csv, write_json)
from engine.walkforward.search import (FINISHED, LIVE, StopWhenFull, SurplusTrial, TrialSeededTPE, check_not_surplus,
                                       fail_interrupted)
from engine.walkforward.storage import (disk_full, fail_stale, fold_result, holds_claim, keep_alive, open_storage,
                                        record_fold_result, redact, release_claim, take_claim, trial_counts)
from labeling import Fold, cpcv_splits, walk_forward_folds

log = logging.getLogger("engine.walkforward")  # one logger for the modules of the walk-forward CLI


# ------------------------------------------------------------------------------------ the run
@dataclass
class _Context:
    cfg: WalkForwardConfig
    df: pd.DataFrame
    folds: list[Fold]
    storage: optuna.storages.RDBStorage
    fingerprint: dict
    ppy: dict  # fold -> bars per year, inferred from the bars up to its test block's end (nothing later moves a
               # fold's numbers; the last fold's, up to the last test bar, also the stitched curve's); "all": CPCV's
    command: str
    spent: dict  # fold -> seconds of search in this process
    progress: Progress
    fold_models: dict = dataclasses.field(default_factory=dict)  # fold -> _FittedTrial (strategy-only search)
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)  # Ctrl-C: trial threads stop too
    worker: str = dataclasses.field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    run_id: str = dataclasses.field(default_factory=lambda: os.urandom(4).hex())  # this call, for "this run" counts
    universe: universe.Universe | None = None  # a universe run (df is then its calendar, without prices)


def run_walk_forward(cfg: WalkForwardConfig, *, command: str = "", progress: bool = True) -> dict:
    """Run (or resume, or join) the study; write the report files and return the report dict.

    ``progress``: progress bars on stderr (drawn only on a terminal): finished trials of the fold
    (all workers) and epochs of the running trial.
    """
    t0 = time.perf_counter()
    members = None
    if is_universe(cfg.data):
        universe.check_options(cfg)
        members = universe.load(cfg)
        df = universe.calendar_frame(members)
        check_memory(cfg, max(len(f) for f in members.frames.values()))
    else:
        if cfg.normalise != "pooled" or cfg.max_positions is not None:
            raise ValueError(f"--normalise and --max-positions apply to a universe; {cfg.data} is one instrument")
        df = load_ohlcv(cfg.data, start=cfg.start, end=cfg.end)
        check_memory(cfg, len(df))
    folds = walk_forward_folds(len(df), n_folds=cfg.folds, scheme=cfg.scheme, test_frac=cfg.test_frac,
                               purge=cfg.purge, embargo=cfg.embargo)
    check_fold_geometry(cfg, folds, df)
    if members is not None:  # a window and a label at least, per member and fold (and CPCV split)
        warmup = _warmup(cfg, df)
        splits = cpcv_splits(len(df), *cfg.cpcv, purge=cfg.purge, embargo=warmup) if cfg.cpcv else []
        universe.check_members(members, folds, warmup + cfg.purge + 2, cfg.normalise, splits, warmup)
    try:
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"--out {cfg.out_dir}: cannot create the folder ({exc.strerror or exc})") from None
    storage = open_storage(cfg.storage_url, cfg.heartbeat)
    if members is None:
        fp = cfg.fingerprint(str(df.attrs.get("sha256", "")))
    else:
        fp = cfg.fingerprint(members.sha256, members.symbols)
    fp["folds_bars"] = [[f.train.start, f.val.start, f.test.start, f.test.stop] for f in folds]
    ppy = {f.fold: infer_periods_per_year(df.index[: f.test.stop]) for f in folds} | {
        "all": infer_periods_per_year(df.index)}
    ctx = _Context(cfg, df, folds, storage, fp, ppy, command, {},
                   Progress(progress, trials=cfg.trials, n_jobs=cfg.n_jobs), universe=members)
    with ctx.progress, stop_on_interrupt(ctx.stop):
        return _run(ctx, t0)


def _run(ctx: _Context, t0: float) -> dict:
    cfg, folds = ctx.cfg, ctx.folds
    results: dict[int, dict] = {}
    status: dict[int, str] = {}  # what this run did per fold
    poll = min(5.0, float(cfg.heartbeat))
    storage_errors = 0
    waiting = False  # the waiting line is logged once per wait, not every poll
    while len(results) < len(folds):
        progressed = False
        for fold in folds:
            if fold.fold in results:
                continue
            check_stop(ctx.stop)
            try:
                outcome = _advance(ctx, fold)
            except optuna.exceptions.StorageInternalError as exc:
                # a busy database (SQLite under several workers): the step is redone, a trial in flight is lost
                storage_errors += 1
                if storage_errors > 10 or disk_full(exc):  # a full disk stays full: no retries
                    raise
                log.warning("fold %d: storage error (%s); retrying", fold.fold, exc.__cause__ or exc)
                time.sleep(1.0 + np.random.default_rng().random())
                continue
            if isinstance(outcome, dict):
                results[fold.fold] = outcome
                ctx.progress.fold_done(fold.fold)
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
            if not waiting:
                log.info("waiting for other workers (trials or a fold's refit in flight)")
            waiting = True
            time.sleep(poll)
        else:
            waiting = False
    report = _report(ctx, [results[k] for k in sorted(results)], status, time.perf_counter() - t0)
    return report


# Memory a walk-forward run needs beyond its largest training or export (measurements: docs/DECISIONS.md)
_WALK_FORWARD_EXTRA = 200 * 2**20


def check_memory(cfg: WalkForwardConfig, n_rows: int) -> None:
    """Refuse, before any study is opened, a run the container cannot hold (HardwareError, one line)."""
    big = space.largest(cfg.search, cfg.base)
    model = big.model_config(len(big.feature_spec.columns))
    params = TransformerAgent(model).num_parameters()
    train = estimate_train_memory(n_rows, model.n_features, big.seq_len, big.batch_size or 64, params, 0,
                                  d_model=big.d_model, n_layers=big.n_layers, n_heads=big.n_heads,
                                  dim_feedforward=model.dim_feedforward)
    check_fits(max(train, EXPORTER_MEMORY["torchscript"]) + _WALK_FORWARD_EXTRA, detect(), what="the walk-forward run")


# Fewest labelled events a fold's training block must leave after its warm-up and horizon, and the
# fewest bars of a validation or test block: below these a trial trains or scores on noise of a few bars.
MIN_TRAIN_EVENTS = 100
MIN_BLOCK_BARS = 20


def check_fold_geometry(cfg: WalkForwardConfig, folds: list[Fold], df: pd.DataFrame) -> None:
    """Refuse, before any trial, folds too small to train or score on (ValueError, one line)."""
    warmup = _warmup(cfg, df)
    need_train = warmup + cfg.purge + MIN_TRAIN_EVENTS
    f = folds[0]  # all folds' blocks have the first one's sizes (rolling) or more training (anchored)
    val, test, train = len(f.val), len(f.test), len(f.train)
    if min(val, test) < MIN_BLOCK_BARS or train < need_train:
        raise ValueError(
            f"--folds {cfg.folds} on {len(df)} bars gives folds of {train} training, {val} validation and {test} test "
            f"bars; each fold needs >= {need_train} training bars (warm-up {warmup} + horizon {cfg.purge} + "
            f"{MIN_TRAIN_EVENTS} events) and >= {MIN_BLOCK_BARS} validation and test bars: use fewer --folds, a "
            "different --test-frac or more data")


def _warmup(cfg: WalkForwardConfig, df: pd.DataFrame) -> int:
    """Bars before the first event of the largest searched configuration: a window of features, and the primary
    rule's own warm-up before its first bet (events start at both)."""
    big = space.largest(cfg.search, cfg.base)
    return max(big.feature_spec.pinned(df.columns).warmup + big.seq_len - 1, space.primary_warmup(cfg.search, cfg.base))


def _fold_study(ctx: _Context, fold: Fold) -> optuna.Study:
    cfg = ctx.cfg
    study = optuna.create_study(
        storage=ctx.storage, study_name=f"{cfg.study_name}_fold{fold.fold}", direction=cfg.direction,
        load_if_exists=True,
        sampler=TrialSeededTPE(cfg.seed + 7919 * fold.fold, n_startup_trials=min(10, max(1, cfg.trials // 2))),
        # epoch 1 is never pruned; from epoch 2 a trial worse than the median of earlier ones stops
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2),
    )
    saved = study.user_attrs.get("config")
    if saved is None:  # new study (a concurrent worker writing the same value is harmless)
        study.set_user_attr("config", ctx.fingerprint)
    elif saved != ctx.fingerprint:
        diff = sorted(k for k in set(saved) | set(ctx.fingerprint) if saved.get(k) != ctx.fingerprint.get(k))
        raise ValueError(
            f"study {study.study_name!r} in {redact(ctx.cfg.storage_url)} was made with other settings "
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
        result = fold_result(study)
        if result is not None:
            return result
        fail_stale(study)
        c = trial_counts(study)
        done, running, waiting = c["COMPLETE"] + c["PRUNED"], c["RUNNING"], c["WAITING"]
        ctx.progress.fold(fold.fold, done)
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
        if (left is None or left > 0) and _strategy_only(cfg):
            _search_by_sweep(ctx, fold, study, n_trials, left)
        elif left is None or left > 0:
            study.optimize(
                _Objective(ctx, fold), n_trials=n_trials, timeout=left, n_jobs=cfg.n_jobs, gc_after_trial=True,
                callbacks=[MaxTrialsCallback(cfg.trials, states=FINISHED), StopWhenFull(cfg.trials),
                           lambda s, _: ctx.progress.fold(fold.fold,
                                                          len(s.get_trials(deepcopy=False, states=FINISHED))),
                           lambda s, _: check_stop(ctx.stop)],
            )
    except SurplusTrial:
        log.info("fold %d: the remaining trials are held by other workers", fold.fold)
    except KeyboardInterrupt:
        fail_interrupted(ctx.storage, study)
        raise
    ctx.spent[fold.fold] = ctx.spent.get(fold.fold, 0.0) + time.perf_counter() - t0
    if cfg.timeout is not None and ctx.spent[fold.fold] >= cfg.timeout and not study.user_attrs.get("search_closed"):
        c = trial_counts(study)
        log.warning("fold %d: --timeout %gs reached after %d finished trials; finalising with those",
                    fold.fold, cfg.timeout, c["COMPLETE"] + c["PRUNED"])
        study.set_user_attr("search_closed", f"timeout {cfg.timeout}s by {ctx.worker}")


class _Objective:
    """One trial: train on the fold's train block, score on its validation block."""

    def __init__(self, ctx: _Context, fold: Fold):
        self.ctx, self.fold = ctx, fold

    def __call__(self, trial: optuna.Trial) -> float:
        cfg, fold = self.ctx.cfg, self.fold
        check_not_surplus(trial, cfg.trials)
        trial.set_user_attr("worker", self.ctx.worker)
        trial.set_user_attr("run_id", self.ctx.run_id)
        t0 = time.perf_counter()
        tcfg, execution = space.suggest(trial, cfg.search, cfg.base, cfg.execution)
        if tcfg.primary:
            trial.set_user_attr("primary", tcfg.primary)
        tcfg = dataclasses.replace(tcfg, epochs=cfg.epochs, patience=cfg.epochs)
        sign = 1.0 if cfg.direction == "minimize" else -1.0  # the pruner compares in the study's direction

        with self.ctx.progress.epochs(f"fold {fold.fold} trial {trial.number}", tcfg.epochs) as bar:
            def on_epoch(epoch: int, ratio: float) -> None:
                check_stop(self.ctx.stop)  # after Ctrl-C: --n-jobs threads stop here too
                bar.update(1)
                bar.set_postfix_str(f"val_loss {ratio:.4f}")
                trial.report(sign * ratio, epoch)
                if trial.should_prune():
                    log.info("%s", pruned_line(fold.fold, trial.number, epoch, ratio, time.perf_counter() - t0,
                                               trial.params))
                    raise optuna.TrialPruned(f"pruned after epoch {epoch}")

            fitted = _fit_fold_model(self.ctx, fold, tcfg, on_epoch)
        threshold = execution.threshold(fitted.train_proba, fitted.base_rate)
        val = _validation_backtest(self.ctx, fold, fitted, execution, threshold)
        return _record_trial(self.ctx, fold, trial, fitted, threshold, val, time.perf_counter() - t0)


@dataclass(frozen=True)
class _FittedTrial:
    """A trial's model reduced to what scoring needs: its training output and validation signal."""

    tcfg: TrainConfig
    train_proba: np.ndarray  # on the training events: the threshold comes from these only
    base_rate: float  # positive rate of the training labels
    val_signal: pd.Series | dict  # probability on df[:val.stop]; NaN outside the validation block's full windows
                                  # (a universe: symbol -> that on the instrument's own bars)
    val_loss: float  # best validation focal loss / the best constant prediction's (1 = no skill)
    val_auc: float | None
    best_epoch: int


def _fit_fold_model(ctx: _Context, fold: Fold, tcfg: TrainConfig, on_epoch) -> _FittedTrial:
    """Train ``tcfg`` on the fold's train block; ``on_epoch(epoch, val_loss_ratio)`` after each epoch."""
    if ctx.universe is not None:
        prep = universe.prepare_fold(ctx.universe, tcfg, fold)
    else:
        prep = prepare_segments(tcfg, ctx.df, fold.train, fold.val)
    y_tr, y_va = prep.labels("train"), prep.labels("val")
    base_rate = float(y_tr.mean())
    loss_fn = FocalLoss(alpha=tcfg.focal_alpha, gamma=tcfg.focal_gamma)
    # focal losses with different alpha/gamma or labels are not comparable; their ratio to the best
    # constant prediction under the trial's own loss is: 1 = no skill, lower = better. The constant is
    # the best one for the validation labels themselves, so no recalibration can beat it: against the
    # training base rate, a search over alpha/gamma "won" on random walks (0.74-0.98 at validation AUCs
    # of 0.45-0.52), and against the training-fitted best constant, by the base rate's drift (0.93).
    baseline = loss_fn.baseline(torch.from_numpy(y_va), _best_constant(y_va, tcfg))
    res = fit(tcfg, prep, checkpoint_dir=None, on_epoch=lambda record, state: on_epoch(
        record["epoch"], record["val_loss"] / baseline), progress=False)
    model, state = res["model"], res["state"]
    if ctx.universe is not None:  # signals: symbol -> probability on its bars up to its validation block's end
        z_tr, z_va = universe.window_logits(model, prep, "train"), universe.window_logits(model, prep, "val")
        signals = universe.block_signals(ctx.universe, model, prep, fold.val, tcfg.seq_len)
        return _FittedTrial(tcfg, sigmoid(z_tr), base_rate, signals, state["best_val"] / baseline, roc_auc(y_va, z_va),
                            int(state["best_epoch"]))
    z_tr = logits(model, prep.x, tcfg.seq_len, prep.train_ends)
    z_va = logits(model, prep.x, tcfg.seq_len, prep.val_ends)
    # the validation backtest trades every bar of the block whose window is whole (history for warm-up)
    part = ctx.df.iloc[: fold.val.stop]
    ends = full_window_ends(prep.x, tcfg.seq_len, fold.val)
    prob = np.full(len(part), np.nan)
    prob[ends] = sigmoid(logits(model, prep.x, tcfg.seq_len, ends))
    return _FittedTrial(tcfg, sigmoid(z_tr), base_rate, pd.Series(prob, index=part.index),
                        state["best_val"] / baseline, roc_auc(y_va, z_va), int(state["best_epoch"]))


def _best_constant(y: np.ndarray, tcfg: TrainConfig) -> float:
    """The constant probability with the lowest focal loss on labels ``y`` (their rate if one class)."""
    try:
        return best_constant_probability(torch.from_numpy(y), tcfg.focal_alpha, tcfg.focal_gamma)
    except ValueError:  # one class: the constant equal to it
        return float(y.mean())


def _record_trial(ctx: _Context, fold: Fold, trial, fitted: _FittedTrial, threshold: float, val: dict,
                  seconds: float) -> float:
    """Store a scored trial's numbers on it, log its line; its objective value."""
    cfg = ctx.cfg
    scores = {"val_loss": fitted.val_loss, "val_auc": fitted.val_auc, "val_sharpe": val["sharpe"]}
    for key, value in {**scores, "best_epoch": fitted.best_epoch, "threshold": threshold, "val_sr": val["sr"],
                       "val_return": val["total_return"], "val_trades": val["n_trades"], "seconds": seconds,
                       "val_returns": val["returns"]}.items():  # per bar, for the PBO of the fold's selection
        trial.set_user_attr(key, value)
    value = scores[cfg.objective]
    if value is None:  # AUC with one class, Sharpe of a flat curve: score as no skill
        value = {"val_auc": 0.5, "val_sharpe": 0.0}[cfg.objective]
    shown = {"auc": fitted.val_auc, "sharpe": val["sharpe"], "trades": val["n_trades"], "seconds": seconds}
    log.info("%s", trial_line(fold.fold, trial.number, cfg.objective, value, shown, trial.params))
    return float(value)


def _validation_backtest(ctx, fold, fitted: _FittedTrial, execution, threshold) -> dict:
    """Backtest the trial's model on every bar of the validation block (fast engine; a universe: as a portfolio)."""
    if ctx.universe is not None:
        run = ctx.cfg.run_config(engine=VALIDATION_ENGINE, periods_per_year=ctx.ppy[fold.fold], benchmark=False)
        bt = universe.portfolio(ctx.universe, ctx.cfg, fitted.tcfg, fitted.val_signal, fold.val,
                                rules=execution.rules(fitted.tcfg, threshold), run=run)
        return universe.validation_scores(bt)
    part = ctx.df.iloc[: fold.val.stop]
    run = ctx.cfg.run_config(engine=VALIDATION_ENGINE, start=part.index[fold.val.start],
                             end=part.index[fold.val.stop - 1], periods_per_year=ctx.ppy[fold.fold], benchmark=False)
    signal, side = space.bets(fitted.tcfg, part, fitted.val_signal)
    bt = run_backtest(part, "agent", signal=signal, side=side, rules=execution.rules(fitted.tcfg, threshold),
                      costs=ctx.cfg.costs, run=run)
    returns = bt.equity.pct_change().dropna()
    return {"sharpe": bt.stats["sharpe"], "sr": sharpe_ratio(returns), "total_return": bt.stats["total_return"],
            "n_trades": int(bt.stats["n_trades"]), "returns": returns.tolist()}


# ------------------------------------------------------------------------------------ strategy-only search
# With --search strategy alone every trial trades the same model (the base config, the same seed): the
# fold's model is trained once per process and the trials are scored in batches, one fastsim.sweep call
# (numba, parallel over configurations) per batch instead of a backtest per trial. TPE proposes a
# batch with its running trials counted as bad (constant liar), as parallel workers do.
_SWEEP_BATCH = 16


def _strategy_only(cfg: WalkForwardConfig) -> bool:
    return tuple(cfg.search) == ("strategy",)


def _search_by_sweep(ctx: _Context, fold: Fold, study: optuna.Study, n_trials: int, seconds: float | None) -> None:
    """Run up to ``n_trials`` strategy trials of ``fold`` in sweep batches, within ``seconds`` if given."""
    cfg, t0 = ctx.cfg, time.perf_counter()
    fitted = ctx.fold_models.get(fold.fold)
    if fitted is None:
        tcfg = dataclasses.replace(cfg.base, epochs=cfg.epochs, patience=cfg.epochs)
        with ctx.progress.epochs(f"fold {fold.fold} model", tcfg.epochs) as bar:
            def on_epoch(epoch: int, ratio: float) -> None:
                check_stop(ctx.stop)
                bar.update(1)
                bar.set_postfix_str(f"val_loss {ratio:.4f}")

            fitted = _fit_fold_model(ctx, fold, tcfg, on_epoch)
        ctx.fold_models[fold.fold] = fitted
    started = 0
    # like study.optimize, at least one batch runs even if training the model used up the time
    while started < n_trials and (started == 0 or seconds is None or time.perf_counter() - t0 < seconds):
        check_stop(ctx.stop)
        if len(study.get_trials(deepcopy=False, states=LIVE)) >= cfg.trials and not study.get_trials(
                deepcopy=False, states=(TrialState.WAITING,)):
            return  # full: other workers hold the remaining slots
        batch: list[tuple[optuna.Trial, Execution]] = []
        told: set[int] = set()
        beating = _BatchHeartbeat(ctx.storage, cfg.heartbeat)
        try:
            surplus = None
            while len(batch) < min(_SWEEP_BATCH, n_trials - started):
                with warnings.catch_warnings():  # heartbeats are recorded by hand below
                    warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
                    trial = study.ask()
                # beats until told (as study.optimize's heartbeat thread does); a worker killed before telling
                # leaves RUNNING trials that go stale after the grace period and are retried
                beating.add(trial._trial_id)
                try:
                    check_not_surplus(trial, cfg.trials)
                except SurplusTrial as exc:
                    study.tell(trial, state=TrialState.FAIL)
                    told.add(trial.number)
                    surplus = exc
                    break
                trial.set_user_attr("worker", ctx.worker)
                trial.set_user_attr("run_id", ctx.run_id)
                trial.set_user_attr("batch", len(batch))
                batch.append((trial, space.suggest(trial, cfg.search, cfg.base, cfg.execution)[1]))
            started += len(batch)
            if batch:
                _score_batch(ctx, fold, study, fitted, batch, told)
            ctx.progress.fold(fold.fold, len(study.get_trials(deepcopy=False, states=FINISHED)))
            if surplus is not None:
                raise surplus
        finally:  # an error or Ctrl-C: the batch's trials not yet told fail (a rerun retries their slots)
            beating.stop()
            for trial, _ in batch:
                if trial.number not in told:
                    try:
                        study.tell(trial, state=TrialState.FAIL)
                    except Exception as exc:  # the database; fail_stale retries it after the grace period
                        log.warning("could not mark trial %d failed (%s)", trial.number, exc)


class _BatchHeartbeat:
    """Heartbeats for a batch's asked trials every ``interval`` seconds on a thread, until ``stop``."""

    def __init__(self, storage, interval: float):
        self._storage, self._ids, self._done = storage, [], threading.Event()
        self._thread = threading.Thread(target=self._run, args=(float(interval),), daemon=True, name="batch heartbeat")
        self._thread.start()

    def add(self, trial_id: int) -> None:
        self._storage.record_heartbeat(trial_id)
        self._ids.append(trial_id)

    def _run(self, interval: float) -> None:
        while not self._done.wait(interval):
            for trial_id in list(self._ids):
                try:
                    self._storage.record_heartbeat(trial_id)
                except Exception as exc:  # a busy database: the next beat retries
                    log.debug("heartbeat of trial id %d failed (%s)", trial_id, exc)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _score_batch(ctx: _Context, fold: Fold, study: optuna.Study, fitted: _FittedTrial,
                 batch: list, told: set) -> None:
    """Score a batch of strategy trials on the fold's model in one sweep; tell each its value."""
    t0 = time.perf_counter()
    thresholds = [execution.threshold(fitted.train_proba, fitted.base_rate) for _, execution in batch]
    rules = [execution.rules(fitted.tcfg, th) for (_, execution), th in zip(batch, thresholds)]
    rows = pd.DataFrame([{k: getattr(r, k) for k in ("threshold", "pt", "sl", "horizon", "sizing", "size_step")}
                         for r in rules])
    if ctx.universe is None:
        part = ctx.df.iloc[: fold.val.stop]
        run = ctx.cfg.run_config(start=part.index[fold.val.start], end=part.index[fold.val.stop - 1],
                                 periods_per_year=ctx.ppy[fold.fold])
        signal, side = space.bets(fitted.tcfg, part, fitted.val_signal)
        stats, curves = sweep(part, signal, rows, side=side, costs=ctx.cfg.costs, run=run, rules=rules[0],
                              equity=True)
    else:  # the validation block traded as a portfolio by every configuration
        run = ctx.cfg.run_config(periods_per_year=ctx.ppy[fold.fold], benchmark=False)
        stats, curves = universe.sweep_block(ctx.universe, ctx.cfg, fitted.tcfg, fitted.val_signal, fold.val, rows,
                                             rules=rules[0], run=run)
    each = (time.perf_counter() - t0) / len(batch)
    for j, ((trial, _), th, (_, row)) in enumerate(zip(batch, thresholds, stats.iterrows())):
        sharpe = None if np.isnan(row["sharpe"]) else float(row["sharpe"])
        # sweep's Sharpe is annualised from the same per-bar returns: / sqrt(ppy) is the per-bar one
        val = {"sharpe": sharpe, "sr": None if sharpe is None else sharpe / float(np.sqrt(ctx.ppy[fold.fold])),
               "total_return": float(row["total_return"]), "n_trades": int(row["n_trades"]),
               "returns": curves[j].pct_change().dropna().tolist()}
        try:
            value = _record_trial(ctx, fold, trial, fitted, th, val, each)
            study.tell(trial, value, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale by another worker: it retries it
            log.warning("fold %d trial %d: failed by another worker while this one scored it; its retry counts",
                        fold.fold, trial.number)
        told.add(trial.number)


# ------------------------------------------------------------------------------------ finalising a fold
def _finalise_claimed(ctx: _Context, fold: Fold, study: optuna.Study):
    """Refit, export and test the fold's best trial once: the result dict, or 'blocked' while another
    live worker holds the fold's claim (the rules, and what remains possible across hosts, are in
    :mod:`engine.walkforward.storage`)."""
    claim = take_claim(ctx.storage, f"{study.study_name}_finalise", ctx.worker, ctx.cfg.heartbeat)
    if claim is None:
        return "blocked"
    finished = False
    tmp = ctx.cfg.out_dir / f".fold{fold.fold}.{claim.token}.onnx"  # this worker's export until it has won
    for stale in ctx.cfg.out_dir.glob(f".fold{fold.fold}.*.onnx"):  # a killed worker's export: the claim is ours
        stale.unlink(missing_ok=True)
    try:
        # read again: since _advance looked, the previous holder may have recorded the result and exited
        result = fold_result(study)
        if result is not None:
            finished = True
            return result
        with keep_alive(ctx.storage, claim, ctx.cfg.heartbeat):
            result = _finalise(ctx, fold, study, tmp)
            finished = _publish(ctx, fold, study, claim, result, tmp)
        return result if finished else "blocked"
    finally:  # also on errors and Ctrl-C: a released claim is taken over at once
        tmp.unlink(missing_ok=True)
        release_claim(ctx.storage, claim, finished=finished)


def _publish(ctx: _Context, fold: Fold, study: optuna.Study, claim, result: dict, tmp: Path) -> bool:
    """Make ``result`` the fold's (its agent to fold<k>.onnx, fold<k>.json, the study record) if
    ``claim`` is still the fold's claim; False if another worker took it over meanwhile."""
    if not holds_claim(ctx.storage, claim):
        log.warning("fold %d: another worker took over this fold's refit while this worker's heartbeat was "
                    "silent; its result is kept and this one dropped", fold.fold)
        return False
    os.replace(tmp, ctx.cfg.out_dir / f"fold{fold.fold}.onnx")
    write_json(ctx.cfg.out_dir / f"fold{fold.fold}.json", result)
    attempt = 0
    while True:  # a refit is minutes of work: do not lose it to a busy database
        try:
            record_fold_result(study, result)
            return True
        except optuna.exceptions.StorageInternalError as exc:
            attempt += 1
            if attempt == 3 or disk_full(exc):
                raise
            log.warning("fold %d: storage error recording the result (%s); retrying", fold.fold, exc.__cause__ or exc)
            time.sleep(attempt)


def _finalise(ctx: _Context, fold: Fold, study: optuna.Study, onnx_tmp: Path) -> dict:
    """The fold's result: its best trial refit on train+validation, exported to ``onnx_tmp`` (moved to
    fold<k>.onnx by ``_publish``) and backtested on the test block."""
    cfg, df, k = ctx.cfg, ctx.df, fold.fold
    t0 = time.perf_counter()
    best = study.best_trial
    tcfg, execution = space.from_params(best.params, cfg.base, cfg.execution)
    best_epoch = int(best.user_attrs["best_epoch"])
    tcfg = dataclasses.replace(tcfg, epochs=best_epoch, patience=best_epoch)
    log.info("fold %d: refitting trial %d on train+validation for %d epoch(s)  %s", k, best.number, best_epoch,
             format_params(best.params))
    # train+validation as one block: events whose label span lies inside it, nothing after it
    union = range(fold.train.start, fold.val.stop)
    u = ctx.universe
    prep = (prepare_segments(tcfg, df, union, None) if u is None
            else universe.prepare_fold(u, tcfg, fold, refit=True))
    with ctx.progress.epochs(f"fold {k} refit", best_epoch) as bar:
        def on_epoch(record, state):
            check_stop(ctx.stop)
            bar.update(1)

        res = fit(tcfg, prep, checkpoint_dir=None, on_epoch=on_epoch, progress=False)
    model = res["model"]
    y_tr = prep.labels("train")
    base_rate = float(y_tr.mean())
    z_tr = (logits(model, prep.x, tcfg.seq_len, prep.train_ends) if u is None
            else universe.window_logits(model, prep, "train"))
    threshold = execution.threshold(sigmoid(z_tr), base_rate)
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
    # (a universe's df is its calendar: the same dates for every instrument)
    card = build_card(tcfg, prep, model, metrics, ctx.command)  # the refit has no validation block
    card["walk_forward"] = {"study": cfg.study_name, "fold": k, **dates, "best_trial": best.number,
                            "params": best.params, "primary": tcfg.primary,
                            "execution": dataclasses.asdict(execution)}
    if u is None:
        last = LazySequenceDataset(prep.x, prep.y, tcfg.seq_len, index=prep.train_ends[-64:])
        example = last.batch(np.arange(len(last)))[0].numpy()  # parity checked on real training windows
    else:
        last = prep.dataset("train", tcfg.seq_len)
        example = last.batch(np.arange(max(0, len(last) - 64), len(last)))[0].numpy()
    export_agent(model, card, onnx_tmp, example)

    # the exported agent on the test block; features over all bars up to the test end (warm-up from history)
    agent = OnnxAgent.load(onnx_tmp)
    rules = execution.rules(tcfg, agent.threshold)
    extra = {}
    if u is None:
        hist = df.iloc[: fold.test.stop]
        probs = agent.predict_proba(hist)
        run = cfg.run_config(start=hist.index[fold.test.start], end=hist.index[-1], periods_per_year=ctx.ppy[k])
        signal, side = space.bets(tcfg, hist, probs)
        bt = run_backtest(hist, "agent", signal=signal, side=side, rules=rules, costs=cfg.costs, run=run)
    else:  # the test block traded as a portfolio, each member from its own history
        bt = universe.portfolio(u, cfg, tcfg, universe.test_signals(u, agent, fold), fold.test, rules=rules,
                                run=cfg.run_config(periods_per_year=ctx.ppy[k]))
        extra = {"symbols": list(bt.contribution.index), "max_positions": u.max_positions,
                 "contribution": json.loads(bt.contribution.reset_index().to_json(orient="records"))}
    c = trial_counts(study)
    plots = plot_study(study, cfg.out_dir, k, save_figure)
    trades = json.loads(bt.trades.to_json(orient="records", date_format="iso")) if len(bt.trades) else []
    result = {
        "fold": k, **dates,
        "trials": {"complete": c["COMPLETE"], "pruned": c["PRUNED"],
                   "failed": sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                                 if not t.user_attrs.get("surplus"))},
        "trial_val_sr": [t.user_attrs.get("val_sr")
                         for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))],
        "pbo": fold_pbo(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))),
        "best_trial": best.number, "best_value": best.value, "params": best.params, "best_epoch": best_epoch,
        "val_sharpe": best.user_attrs.get("val_sharpe"),  # the selection's validation backtest
        "primary": tcfg.primary,  # the rule whose sides the fold traded (None: long on every bar)
        "execution": rules.to_dict(),  # threshold, barriers and sizing (sizing, size_step) of the test block
        "stats": bt.stats, "benchmark_stats": bt.benchmark_stats,
        "index": [str(t) for t in bt.equity.index], "equity": bt.equity.tolist(),
        "benchmark_equity": bt.benchmark_equity.tolist(), "trades": trades,
        "onnx": {"path": str((cfg.out_dir / f"fold{k}.onnx").resolve()), "sha256": _sha256(onnx_tmp),
                 "host": socket.gethostname()},
        "plots": plots, "finalised_by": ctx.worker, "run_id": ctx.run_id,
        "finalised_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": time.perf_counter() - t0,
        **extra,
    }
    return result


def _cpcv(ctx: _Context, results: list[dict]) -> dict | None:
    """CPCV of the latest fold's selected configuration (``--cpcv``), or None when not asked for."""
    if ctx.cfg.cpcv is None:
        return None
    last = results[-1]
    # kept in the last fold's study: a rerun or another worker reports it without retraining every split
    study = optuna.load_study(study_name=f"{ctx.cfg.study_name}_fold{last['fold']}", storage=ctx.storage)
    key = "cpcv_{}_{}".format(*ctx.cfg.cpcv)
    kept = study.user_attrs.get(key)
    if kept is not None and kept.get("params") == last["params"]:
        return kept
    log.info("cpcv: retraining fold %d's selection on every split of %d groups, %d tested", last["fold"],
             *ctx.cfg.cpcv)
    result = evaluate_cpcv(ctx.cfg, ctx.df, last["params"], int(last["best_epoch"]), ctx.ppy["all"], stop=ctx.stop,
                           members=ctx.universe)
    study.set_user_attr(key, json.loads(json.dumps(result)))
    return result


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------ output
def _report(ctx: _Context, results: list[dict], status: dict, seconds: float) -> dict:
    cfg = ctx.cfg
    # the stitched curve ends with the last fold's test block: its bars per year
    curves, equity, bench_equity, stats, bench_stats = stitched_result(results, cfg.cash, ctx.ppy[ctx.folds[-1].fold])
    n_configs = sum(r["trials"]["complete"] + r["trials"]["pruned"] for r in results)
    dsr = deflated_sharpe(equity, results, n_configs)
    png = cfg.out_dir / "stitched_equity.png"
    table = shares = None
    if ctx.universe is not None:
        table, shares = member_contributions(results, cfg.cash)
    plot_stitched(equity, bench_equity, [c.index[0] for c in curves[1:]], png,
                  f"{cfg.study_name}: walk-forward out-of-sample ({len(results)} folds) vs "
                  + ("equal-weight buy-and-hold" if ctx.universe is not None else "buy-and-hold"), save_figure,
                  members=shares)
    report = {
        "study": cfg.study_name,
        "storage": redact(cfg.storage_url),
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
        "pbo": pbo_summary(results),
        "cpcv": _cpcv(ctx, results),
        "new_trials_this_run": sum(
            1 for f in ctx.folds for t in optuna.load_study(study_name=f"{cfg.study_name}_fold{f.fold}",
                                                            storage=ctx.storage).get_trials(deepcopy=False,
                                                                                            states=FINISHED)
            if t.user_attrs.get("run_id") == ctx.run_id),
        "universe": None if ctx.universe is None else {
            "symbols": ctx.universe.symbols, "normalise": cfg.normalise, "max_positions": ctx.universe.max_positions,
            "calendar_bars": len(ctx.universe.calendar),
            "benchmark": "equal-weight buy-and-hold of the members traded in each test block",
            "contribution": [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
                             for row in table.reset_index().to_dict("records")],
            "contribution_note": ("fold k: the member's pnl / the fold's starting cash; overall: its pnl scaled as "
                                  "the stitched curve scales its fold, / the starting cash (the members' overall "
                                  "shares add up to the stitched return)")},
        "files": {"report": str(cfg.out_dir / "report.json"), "stitched_equity_png": str(png)},
        "seconds": seconds,
    }
    write_json(cfg.out_dir / "report.json", report)
    write_csv(cfg.out_dir / "stitched_equity.csv", pd.DataFrame({"equity": equity, "benchmark": bench_equity}))
    return report
