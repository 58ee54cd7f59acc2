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

import dataclasses
import hashlib
import io
import json
import logging
import os
import shlex
import socket
import sys
import time
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
from agents.metadata import build_card
from agents.prepare import prepare_segments
from agents.train import fit
from datafeeds import DataError, load_ohlcv, write_atomic
from engine import _search_space as space
from engine._wf_cli import _parser, config_from_args
from engine._wf_config import OBJECTIVES, _VALIDATION_ENGINE, WalkForwardConfig
from engine._wf_report import (_deflated_sharpe, _fmt, _plot_stitched, _plot_study, _stitched_result,
                               stitch_equity, summary_lines)
from engine._wf_search import _FINISHED, _check_not_surplus, _StopWhenFull, _SurplusTrial, _TrialSeededTPE
from engine._wf_storage import (_claim, _counts, _fail_stale, _fold_result, _heartbeat, _record_fold_result,
                                _redact, open_storage)
from engine.deflated_sharpe import sharpe_ratio
from engine.jsonable import jsonable
from engine.metrics import infer_periods_per_year
from engine.runner import run_backtest
from labeling import Fold, walk_forward_folds

matplotlib.use("Agg")  # headless, as engine.plotting
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)

__all__ = ["OBJECTIVES", "WalkForwardConfig", "config_from_args", "main", "open_storage", "run_walk_forward",
           "stitch_equity", "summary_lines"]


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
        result = _fold_result(study)
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
    if not _claim(ctx.storage, name, ctx.worker, ctx.cfg.heartbeat):
        return "blocked"
    with _heartbeat(ctx.storage, name, ctx.cfg.heartbeat):
        result = _finalise(ctx, fold, study)
    _record_fold_result(study, result)
    return result


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
    plots = _plot_study(study, cfg.out_dir, k, _save_figure)
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
def _report(ctx: _Context, results: list[dict], status: dict, seconds: float) -> dict:
    cfg = ctx.cfg
    curves, equity, bench_equity, stats, bench_stats = _stitched_result(results, cfg.cash, ctx.ppy)
    n_configs = sum(r["trials"]["complete"] + r["trials"]["pruned"] for r in results)
    dsr = _deflated_sharpe(equity, results, n_configs)
    png = cfg.out_dir / "stitched_equity.png"
    _plot_stitched(equity, bench_equity, [c.index[0] for c in curves[1:]], png,
                   f"{cfg.study_name}: walk-forward out-of-sample ({len(results)} folds) vs buy-and-hold", _save_figure)
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


# the report files are written here, through this module's `write_atomic` (workers share the output folder)
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
