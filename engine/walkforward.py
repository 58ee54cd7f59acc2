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
continues; several processes or machines on one storage URL split the trials between them, and
exactly one of them refits each fold (a claim in the storage: held until its process dies when it
comes from this host, until its heartbeat is silent for 3 heartbeats when it comes from another;
see ``engine._wf_storage``).
Storage is always an RDB (SQLAlchemy URL), never optuna's JournalFileStorage: only RDB storage has
worker heartbeats in optuna 5, which turn a killed worker's RUNNING trial into FAIL and re-queue
it. SQLite (60 s busy timeout) is fine for a few processes on one machine; for many workers or
several machines use PostgreSQL (the optuna docs advise against SQLite for parallel work).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import shlex
import sys

from engine._wf_cli import _parser, config_from_args
from engine._wf_config import OBJECTIVES, WalkForwardConfig

# the public API beyond the CLI, loaded (with torch and optuna) on first use: --help answers at once
_LAZY = {
    "run_walk_forward": "engine._wf_run",
    "open_storage": "engine._wf_storage",
    "stitch_equity": "engine._wf_report",
    "summary_lines": "engine._wf_report",
}

__all__ = ["OBJECTIVES", "WalkForwardConfig", "config_from_args", "main", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine.walkforward' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    command = "python -m engine.walkforward" + ("" if not argv else " " + shlex.join(argv))
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from agents.hardware import HardwareError
    from datafeeds import DataError
    from engine._wf_report import summary_lines
    from engine._wf_run import run_walk_forward

    try:
        with _console_logging(quiet=args.quiet):
            report = run_walk_forward(cfg, command=command, progress=not args.quiet)
    except (DataError, ValueError, HardwareError) as exc:  # HardwareError: the container is too small
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # output folder or storage path not writable
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # CPython quirk: when the interrupt landed in code compiled from a string (exec/eval, as inside
        # dataclasses or SQLAlchemy), `python -m` dies by SIGINT at exit even though it was caught here;
        # a string exec clears that flag, so the exit status is 130 as printed
        exec("")
        print("\ninterrupted; finished trials are kept: rerun the same command to resume", file=sys.stderr)
        return 130
    for f in report["folds"]:
        if f["this_run"].startswith("skipped"):
            print(f"fold {f['fold']}: already finished ({f['trials']['complete'] + f['trials']['pruned']} trials), "
                  "resumed from the study: nothing recomputed")
    print("\n".join(summary_lines(report)))
    return 0


class _ConsoleFormatter(logging.Formatter):
    """Plain lines: the message alone, 'warning: ' / 'error: ' before the serious ones; no traceback
    (an error that ends the run is reported once, by ``main`` or by Python itself)."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage().rstrip()  # a captured Python warning ends with a newline
        if record.levelno >= logging.ERROR:
            return f"error: {msg}"
        return f"warning: {msg}" if record.levelno >= logging.WARNING else msg


class _ConsoleHandler(logging.Handler):
    """Writes log lines with tqdm.write, so open progress bars are redrawn below them, not broken."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _console_logging(quiet: bool):
    """The command's console while it runs: walk-forward INFO lines unless ``quiet``, warnings of every
    library (optuna's and Python warnings included) as 'warning: ...' lines through tqdm. An
    application that configured logging itself (root handlers) keeps its handlers."""
    import optuna

    from engine._wf_run import log

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna_log, root = logging.getLogger("optuna"), logging.getLogger()
    saved = (log.level, list(optuna_log.handlers), optuna_log.propagate)
    handler = None
    if not root.handlers:
        handler = _ConsoleHandler()
        handler.setFormatter(_ConsoleFormatter())
        root.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    optuna_log.handlers, optuna_log.propagate = [], True  # optuna's own "[W date]" handler off: ours formats
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        log.setLevel(saved[0])
        optuna_log.handlers, optuna_log.propagate = saved[1], saved[2]
        if handler is not None:
            root.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
