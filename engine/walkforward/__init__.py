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
conservative; V = mean within-fold variance of the trials' validation Sharpes) and, per fold, the
Probability of Backtest Overfitting (``engine.overfitting``, CSCV over the completed trials' per-bar
validation returns); ``--cpcv N,K`` adds the path Sharpe ratios of the latest selection under
combinatorial purged cross-validation (:mod:`engine.walkforward.cpcv`). ``--objective val_loss`` divides each
trial's validation focal loss by that of the
best constant prediction for the validation labels under the trial's own loss, so that searching
focal alpha/gamma cannot win by recalibration (1 = no skill). Trials are scored
with the fast simulator (``engine.fastsim``, parity-tested against backtrader trade for trade); the
test blocks use ``--engine`` (default backtrader, the reference). With ``--search strategy`` alone
every trial trades the same model, so each fold's model is trained once per process and the trials
are scored in batches of 16, one ``engine.fastsim.sweep`` call per batch (``--n-jobs`` is unused).
With ``--primary`` (meta-labeling) every trial trains on a primary rule's meta-labels and every backtest
trades that rule's sides, sized by probability unless ``--sizing fixed``; ``--search primary`` searches
the rule's parameters (each trial's own rule, rebuilt for the refit).

Embargo (``--embargo``, default 0): ``labeling.walk_forward_folds`` leaves that many bars out after
each test block. No fold trains on data after its own test block, so here it only removes
out-of-sample bars: the stitched curve joins across each gap (no return is earned in it) while its
CAGR counts the gap's calendar time, so the stitched CAGR understates the return rate.

Resuming and sharing: everything lives in the Optuna storage (default SQLite under ``<out>``):
trials, and each finished fold's result (a study user attribute). Rerunning the same command
continues; several processes or machines on one storage URL split the trials between them, and
exactly one of them refits each fold (a claim in the storage: held until its process dies when it
comes from this host, until its heartbeat is silent for 3 heartbeats when it comes from another;
see :mod:`engine.walkforward.storage`).
Storage is always an RDB (SQLAlchemy URL), never optuna's JournalFileStorage: only RDB storage has
worker heartbeats in optuna 5, which turn a killed worker's RUNNING trial into FAIL and re-queue
it. SQLite (60 s busy timeout) is fine for a few processes on one machine; for many workers or
several machines use PostgreSQL (the optuna docs advise against SQLite for parallel work).

Modules, one job each: ``config`` (the study settings), ``space`` (what each --search group tunes),
``cli`` (the argument parser and ``main``; ``__main__`` runs it), ``console`` (log lines, progress
bars, Ctrl-C), ``search`` (trial sampling and the per-fold trial total), ``storage`` (the Optuna
storage, fold results and the finalise claim), ``report`` (stitching, Deflated Sharpe, plots, summary,
report files), ``predict`` (a torch model's logits over bar positions), ``cpcv`` (the CPCV paths of a
selection) and ``run`` (the orchestration: per fold, search, claim, refit, test; then report).
"""

from __future__ import annotations

from datafeeds.lazy import lazy_exports
from engine.walkforward.cli import config_from_args, main
from engine.walkforward.config import OBJECTIVES, WalkForwardConfig

# the public API beyond the CLI, loaded (with torch and optuna) on first use: --help answers at once
_LAZY = {
    "run_walk_forward": "engine.walkforward.run",
    "open_storage": "engine.walkforward.storage",
    "stitch_equity": "engine.walkforward.report",
    "summary_lines": "engine.walkforward.report",
}

__all__ = ["OBJECTIVES", "WalkForwardConfig", "config_from_args", "main", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
