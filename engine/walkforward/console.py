"""What the walk-forward run shows on the console and how it stops: console logging, the per-trial
log lines, progress bars and Ctrl-C.

Light imports (tqdm; optuna only inside :func:`console_logging`): the report and the orchestration use it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import threading

from tqdm.auto import tqdm

# the walk-forward logger: `python -m engine.walkforward` shows its INFO lines under that name
log = logging.getLogger("engine.walkforward")


# ------------------------------------------------------------------------------------ console logging
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
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def _no_trial_failures(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (message.startswith("Trial ") and " failed " in message)


@contextlib.contextmanager
def console_logging(quiet: bool):
    """The command's console while it runs: walk-forward INFO lines unless ``quiet``, warnings of every
    library (optuna's and Python warnings included) as 'warning: ...' lines through tqdm. An
    application that configured logging itself (root handlers) keeps its handlers."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna_log, root = logging.getLogger("optuna"), logging.getLogger()
    saved = (log.level, list(optuna_log.handlers), optuna_log.propagate)
    handler = None
    if not root.handlers:
        handler = _ConsoleHandler()
        handler.setFormatter(_ConsoleFormatter())
        # a failing trial ends the run (no catch=), and the command prints its one line: optuna's
        # "Trial N failed ..." lines would repeat it
        handler.addFilter(_no_trial_failures)
        root.addHandler(handler)
    thread_hook = threading.excepthook

    def quiet_storage_errors(args):  # optuna's heartbeat thread meets the storage error the run reports
        if isinstance(args.exc_value, optuna.exceptions.StorageInternalError):
            log.debug("storage error in thread %s: %s", args.thread.name if args.thread else "?", args.exc_value)
            return
        thread_hook(args)

    threading.excepthook = quiet_storage_errors
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    optuna_log.handlers, optuna_log.propagate = [], True  # optuna's own "[W date]" handler off: ours formats
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        threading.excepthook = thread_hook
        log.setLevel(saved[0])
        optuna_log.handlers, optuna_log.propagate = saved[1], saved[2]
        if handler is not None:
            root.removeHandler(handler)


# ------------------------------------------------------------------------------------ log lines
def fmt(x, spec=".4f") -> str:
    """``x`` formatted by ``spec``, or 'n/a' for None (an AUC of one class, the Sharpe of a flat curve)."""
    return "n/a" if x is None else format(x, spec)


def format_params(params: dict) -> str:
    """``name=value`` pairs for a log line: floats to 4 significant digits, other values as they are."""
    return " ".join(f"{k}={_num(v)}" for k, v in params.items())


def _num(v) -> str:
    if not isinstance(v, float):  # ints (and bools, categorical strings) as they are
        return str(v)
    if v == 0 or not math.isfinite(v) or 1e-3 <= abs(v) < 1e5:
        return f"{v:.4g}"
    mantissa, _, exponent = f"{v:.2e}".partition("e")  # 0.000321 -> 3.21e-04, 3.2e-04 -> 3.2e-04
    return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"


def trial_line(fold: int, number: int, objective: str, value: float, scores: dict, params: dict) -> str:
    """The one line logged per finished trial; ``scores``: its ``auc``, ``sharpe``, ``trades`` and ``seconds``."""
    return (f"fold {fold} trial {number}: {objective} {value:.4f}  (AUC {fmt(scores['auc'], '.3f')}, Sharpe "
            f"{fmt(scores['sharpe'], '.2f')}, {scores['trades']} trades, {scores['seconds']:.1f} s)  "
            f"{format_params(params)}")


def pruned_line(fold: int, number: int, epoch: int, val_loss: float, seconds: float, params: dict) -> str:
    """The one line logged per pruned trial (``val_loss``: the validation loss ratio it was pruned on)."""
    return (f"fold {fold} trial {number}: pruned after epoch {epoch}, val_loss {val_loss:.4f}  ({seconds:.1f} s)  "
            f"{format_params(params)}")


class Progress:
    """Progress bars on stderr, drawn only on a terminal (tqdm's ``disable=None``) and never when off:
    the current fold's finished trials out of --trials (every worker's, read from the study), and the
    epochs of this process's running trial or refit. With --n-jobs > 1 only the fold bar is drawn
    (several trials run at once); it is updated from optuna callbacks under a lock."""

    def __init__(self, enabled: bool, *, trials: int, n_jobs: int = 1, file=None):
        self._disable = None if enabled else True
        self._trials, self._epoch_bars, self._file = trials, n_jobs == 1, file
        self._lock = threading.Lock()
        self._fold: int | None = None
        self._fold_bar = None

    def _bar(self, disable=None, **kw):
        return tqdm(disable=disable or self._disable, file=self._file or sys.stderr, dynamic_ncols=True, **kw)

    def fold(self, k: int, finished: int) -> None:
        """Show fold ``k`` with ``finished`` trials (opens its bar, clearing another fold's: a worker
        waiting on one fold works on the next)."""
        with self._lock:
            if self._fold != k:
                self._close_fold(keep=False)
                self._fold = k
                self._fold_bar = self._bar(total=self._trials, initial=finished, desc=f"fold {k}", unit="trial",
                                           leave=True)
            elif finished != self._fold_bar.n:
                self._fold_bar.n = finished
                self._fold_bar.refresh()

    def fold_done(self, k: int) -> None:
        """Fold ``k`` has its result: its bar stays on the screen as a finished line."""
        with self._lock:
            if self._fold == k:
                self._close_fold(keep=True)

    def _close_fold(self, keep: bool) -> None:
        if self._fold_bar is not None:
            self._fold_bar.leave = keep
            self._fold_bar.close()
        self._fold, self._fold_bar = None, None

    def epochs(self, desc: str, total: int):
        """A bar for the epochs of one trial or refit (a context manager; a no-op bar with --n-jobs > 1)."""
        return self._bar(total=total, desc=desc, unit="epoch", leave=False, disable=not self._epoch_bars)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._close_fold(keep=True)  # interrupted or failed: where the fold stood stays visible


@contextlib.contextmanager
def stop_on_interrupt(stop: threading.Event):
    """While the run lasts, Ctrl-C also sets ``stop``, which ``check_stop`` turns into a
    KeyboardInterrupt at the next epoch, trial or fold. That reaches trials in --n-jobs threads (which
    never see the main thread's KeyboardInterrupt), and a KeyboardInterrupt that Python swallowed:
    raised while the garbage collector ran a finaliser, it is only printed as 'Exception ignored in
    ...' (not printed here) and the run would go on."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield  # not the main thread, or Ctrl-C is ignored (a background job): leave it so
        return

    def on_sigint(signum, frame):
        stop.set()
        previous(signum, frame)  # Python's default raises KeyboardInterrupt

    hook = sys.unraisablehook

    def unraisable(info):
        if not (isinstance(info.exc_type, type) and issubclass(info.exc_type, KeyboardInterrupt)):
            hook(info)

    signal.signal(signal.SIGINT, on_sigint)
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = hook


def check_stop(stop: threading.Event) -> None:
    """Raise KeyboardInterrupt if Ctrl-C set ``stop`` (see :func:`stop_on_interrupt`)."""
    if stop.is_set():
        raise KeyboardInterrupt
