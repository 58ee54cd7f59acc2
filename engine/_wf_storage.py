"""Walk-forward Optuna storage: opening it, trial counts, fold-result records and the finalise claim."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import warnings

import numpy as np
import optuna

# the walk-forward logger: `python -m engine.walkforward` shows its INFO lines under that name
log = logging.getLogger("engine.walkforward")

_RESULT_ATTR = "fold_result"  # study user attribute holding a finished fold's result


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


def _fold_result(study: optuna.Study) -> dict | None:
    """The fold's recorded result, or None while it is not finished."""
    return study.user_attrs.get(_RESULT_ATTR)


def _record_fold_result(study: optuna.Study, result: dict) -> None:
    study.set_user_attr(_RESULT_ATTR, result)


@contextlib.contextmanager
def _heartbeat(storage, name: str, interval: float):
    """Keep the claim ``name`` alive (a beat every ``interval`` s) while the block runs."""
    stop = threading.Event()
    beat = threading.Thread(target=_claim_heartbeat, args=(storage, name, interval, stop), daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()


def _claim(storage, name: str, worker: str, heartbeat: float) -> bool:
    """Atomically take the job of finalising a fold: creating a study of that name succeeds once.

    A claim whose worker stopped beating (3 heartbeats), or that was made by a dead process on this
    host, is stale: it is deleted and claimed anew.
    """
    try:
        marker = optuna.create_study(storage=storage, study_name=name)
    except optuna.exceptions.DuplicatedStudyError:
        try:
            info = optuna.load_study(study_name=name, storage=storage).user_attrs
        except KeyError:  # deleted meanwhile by a worker taking over a stale claim
            return False
        if not _claim_is_stale(info, 3 * heartbeat):
            return False
        log.warning("taking over the stale claim %s of %s", name, info.get("worker"))
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass
        return _claim(storage, name, worker, heartbeat)
    marker.set_user_attr("worker", worker)
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


def _claim_heartbeat(storage, name: str, interval: float, stop: threading.Event) -> None:
    marker = optuna.load_study(study_name=name, storage=storage)
    while not stop.wait(interval):
        marker.set_user_attr("alive", time.time())
