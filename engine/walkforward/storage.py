"""Walk-forward Optuna storage: opening it, trial counts, fold-result records and the finalise claim."""

from __future__ import annotations

import errno

import contextlib
import dataclasses
import logging
import os
import threading
import time
import warnings

import numpy as np
import optuna

from datafeeds.process import pid_alive, pid_space

# the walk-forward logger: `python -m engine.walkforward` shows its INFO lines under that name
log = logging.getLogger("engine.walkforward")

_RESULT_ATTR = "fold_result"  # study user attribute holding a finished fold's result


def open_storage(url: str, heartbeat: int = 10) -> optuna.storages.RDBStorage:
    """RDB storage with worker heartbeats: a trial whose worker stops beating for 3 heartbeats is
    failed and re-queued with the same parameters by the next worker that looks."""
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    sqlite = url.startswith("sqlite")
    # sqlite: no implicit BEGIN from the driver; every transaction begins with BEGIN IMMEDIATE (below)
    engine_kwargs = ({"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite
                     else {"pool_pre_ping": True})
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
                )
            if sqlite:
                # write-ahead log: fewer 'database is locked' errors between workers (the setting is
                # stored in the database file; it cannot be changed inside a transaction)
                with storage.engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
                _serialize_sqlite_transactions(storage.engine)
            return storage
        except ArgumentError as exc:
            raise ValueError(f"--storage {redact(url)} is not a database URL ({exc}); e.g. "
                             "sqlite:///reports/optuna.db or postgresql+psycopg2://user:pw@host/db") from None
        except ImportError as exc:
            raise ValueError(f"--storage {redact(url)}: its database driver is missing ({exc}); for PostgreSQL: "
                             "pip install psycopg2-binary") from None
        except SQLAlchemyError as exc:
            # workers starting together race to create the tables of a new database: retry a few times
            if attempt == 4:
                raise ValueError(f"cannot open the Optuna storage {redact(url)}: {exc}".splitlines()[0]) from None
            time.sleep(0.5 + np.random.default_rng().random())


def _serialize_sqlite_transactions(engine) -> None:
    """Begin every SQLite transaction with BEGIN IMMEDIATE (the write lock, waited for up to the busy
    timeout), so that optuna's read-then-write steps are atomic between processes.

    The sqlite3 driver begins a transaction only at the first write, after the reads: two workers
    could both read a queued (WAITING) retry of a dead worker's trial, both set it RUNNING and both
    run it (the second then fails with "Cannot tell a COMPLETE trial"); likewise both could fail one
    stale trial and queue two retries. Transactions are short, so serializing them costs little for
    the few processes SQLite is meant for here.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk or quota: retrying cannot help."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "disk is full" in str(exc) or "No space left on device" in str(exc):  # SQLite's words, a driver's
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def redact(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy understands: say nothing about it
        return "<storage>"


def fail_stale(study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def trial_counts(study) -> dict:
    c = {s: 0 for s in ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")}
    for t in study.get_trials(deepcopy=False):
        c[t.state.name] = c.get(t.state.name, 0) + 1
    return c


def fold_result(study: optuna.Study) -> dict | None:
    """The fold's recorded result, or None while it is not finished."""
    return study.user_attrs.get(_RESULT_ATTR)


def record_fold_result(study: optuna.Study, result: dict) -> None:
    study.set_user_attr(_RESULT_ATTR, result)


# ------------------------------------------------------------------------------------ the finalise claim
# One worker refits, exports and tests each fold. The claim is a marker study "<fold study>_finalise.<g>":
# creating a study of a given name succeeds once, so generation g is held by exactly one worker, and a
# takeover of a stale generation g is the creation of generation g + 1 (again one winner; nothing is
# deleted while the fold is open, so two workers taking over at once cannot delete each other's claim).
# The marker's one attribute "claim" (written in one statement) says who holds it: worker, pid, the pid
# namespace (``pid_space``), the pid's start time, a random token, and "alive", renewed every heartbeat.
#
# Stale, i.e. may be taken over:
#  - released by its holder (refit failed or interrupted);
#  - in this pid namespace: only when its process is dead (or the pid now names another process),
#    never by time: a live holder's heartbeat may be late for any length of time under load
#    (a busy database, two cores shared by several trainings);
#  - elsewhere (another host or container): when its "alive" value has not changed for 3 heartbeats
#    of this process's clock (clocks of other hosts are not compared).
# The holder re-reads the fold's result after claiming (a previous holder may have recorded it and
# exited since) and, before recording its own, checks it still holds the top generation (``holds_claim``):
# a holder that was taken over drops its result and its exported file. What remains possible: a worker
# on another host that is alive but silent past the grace period may duplicate the *work* (both refit);
# the recorded result and fold<k>.onnx are the last holder's, unless the old holder stalls for longer
# than the new holder's whole refit exactly between its ``holds_claim`` check and its write (milliseconds).
_CLAIM_ATTR = "claim"
_GRACE_BEATS = 3


@dataclasses.dataclass(frozen=True)
class Claim:
    """A held finalise claim: the marker study ``f"{base}.{generation}"`` carrying ``token``."""

    base: str
    generation: int
    token: str
    worker: str

    @property
    def name(self) -> str:
        return f"{self.base}.{self.generation}"


_seen: dict[str, tuple] = {}  # marker name -> (its claim value, when this process first saw that value)
_seen_lock = threading.Lock()


def _pid_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux: clock ticks since boot), to tell a reused pid; else None."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22; the name in parentheses may contain spaces


def _claim_is_stale(info: dict | None, grace: float, *, here: str, now: float, seen: dict, name: str) -> str | None:
    """Why the claim ``info`` (a marker's "claim" value; None: not written yet) may be taken over, or None.

    ``here`` is this process's ``pid_space()``; ``now`` a monotonic clock; ``seen`` this process's
    record of when it first saw each marker's current value (updated here).
    """
    info = info or {}
    if info.get("released"):
        return "released by its worker"
    pid = info.get("pid")
    if info.get("pid_space") == here and isinstance(pid, int):
        if pid == os.getpid():  # this process: stale unless it is one of the claims it holds now
            return None if info.get("token") in _held else "left by an earlier run in this process"
        if not pid_alive(pid):
            return f"its process {pid} is gone"
        start = info.get("pid_start")
        if start is not None and start != _pid_start(pid):
            return f"its process {pid} is gone (the pid now names another process)"
        return None  # alive: never stale by time, however late its heartbeat
    # another host (or a marker whose worker died before writing it): silent for `grace` of our clock
    value = repr(sorted(info.items()))
    with _seen_lock:
        last = seen.get(name)
        if last is None or last[0] != value:
            seen[name] = (value, now)
            return None
    return f"no heartbeat for {now - last[1]:.0f} s" if now - last[1] > grace else None


_held: set[str] = set()  # tokens of the claims this process holds


def _top_generation(storage, base: str) -> tuple[int, dict | None]:
    """The highest generation of the marker ``base`` and its claim value: (-1, None) if there is none.

    Raises KeyError if that marker was deleted while being read.
    """
    g = -1
    while True:
        try:
            storage.get_study_id_from_name(f"{base}.{g + 1}")
        except KeyError:
            break
        g += 1
    if g < 0:
        return g, None
    return g, storage.get_study_user_attrs(storage.get_study_id_from_name(f"{base}.{g}")).get(_CLAIM_ATTR)


def take_claim(storage, base: str, worker: str, heartbeat: float) -> Claim | None:
    """Take the job of finalising a fold (marker ``base``), or None while another live worker holds it."""
    try:
        top, info = _top_generation(storage, base)
    except KeyError:  # deleted meanwhile (a holder cleaning up after recording the fold): look again later
        return None
    if top >= 0:
        why = _claim_is_stale(info, _GRACE_BEATS * heartbeat, here=pid_space(), now=time.monotonic(),
                              seen=_seen, name=f"{base}.{top}")
        if why is None:
            return None
        (log.info if why.startswith("released") else log.warning)(
            "taking over the claim %s of %s: %s", base, (info or {}).get("worker", "a worker"), why)
    claim = Claim(base, top + 1, os.urandom(8).hex(), worker)
    try:
        study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], claim.name)
    except optuna.exceptions.DuplicatedStudyError:
        return None  # another worker claimed (or took over) first
    _held.add(claim.token)
    storage.set_study_user_attr(study_id, _CLAIM_ATTR, _claim_value(claim))
    return claim


def _claim_value(claim: Claim, **extra) -> dict:
    pid = os.getpid()
    return {"worker": claim.worker, "pid": pid, "pid_space": pid_space(), "pid_start": _pid_start(pid),
            "token": claim.token, "alive": time.time(), **extra}


def _marker(storage, claim: Claim) -> tuple[int, dict] | None:
    """The marker of ``claim`` (study id, claim value) if it still carries the claim's token."""
    try:
        study_id = storage.get_study_id_from_name(claim.name)
        info = storage.get_study_user_attrs(study_id).get(_CLAIM_ATTR) or {}
    except KeyError:
        return None
    return (study_id, info) if info.get("token") == claim.token else None


def holds_claim(storage, claim: Claim) -> bool:
    """Whether ``claim`` is still the fold's claim: its marker carries its token and nobody took it over."""
    mine = _marker(storage, claim)
    if mine is None or mine[1].get("released"):
        return False
    try:
        storage.get_study_id_from_name(f"{claim.base}.{claim.generation + 1}")
    except KeyError:
        return True
    return False


def release_claim(storage, claim: Claim, *, finished: bool) -> None:
    """Give ``claim`` up. ``finished`` (the fold's result is recorded): delete the fold's markers;
    else mark it released, so the next worker takes the fold over at once."""
    _held.discard(claim.token)
    try:
        if finished:
            top = claim.generation
            while True:  # generations above ours: late claimers that found the result recorded
                try:
                    storage.get_study_id_from_name(f"{claim.base}.{top + 1}")
                except KeyError:
                    break
                top += 1
            for g in range(top, -1, -1):  # top down: a lower generation is never missing under a higher one
                try:
                    storage.delete_study(storage.get_study_id_from_name(f"{claim.base}.{g}"))
                except KeyError:
                    pass
        else:
            mine = _marker(storage, claim)
            if mine is not None:
                storage.set_study_user_attr(mine[0], _CLAIM_ATTR, {**mine[1], "released": True})
    except optuna.exceptions.StorageInternalError as exc:
        # harmless: a leftover marker of a finished fold is never read; an unreleased one goes stale
        log.warning("could not release the claim %s (%s)", claim.name, exc.__cause__ or exc)


@contextlib.contextmanager
def keep_alive(storage, claim: Claim, interval: float):
    """Keep ``claim`` alive (a beat every ``interval`` s) while the block runs."""
    stop = threading.Event()
    beat = threading.Thread(target=_claim_heartbeat, args=(storage, claim, interval, stop), daemon=True,
                            name=f"heartbeat {claim.name}")
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()


def _claim_heartbeat(storage, claim: Claim, interval: float, stop: threading.Event) -> None:
    """Renew the claim's "alive" value until ``stop``; a failed beat is logged, never raised (a thread's
    traceback would only clutter the console: a lost claim is caught by ``holds_claim`` before recording)."""
    while not stop.wait(interval):
        try:
            mine = _marker(storage, claim)
            if mine is None:
                log.warning("the claim %s was taken over by another worker; this refit's result will be dropped",
                            claim.name)
                return
            storage.set_study_user_attr(mine[0], _CLAIM_ATTR, {**mine[1], "alive": time.time()})
        except Exception as exc:  # a busy or unreachable database: try again at the next beat
            log.warning("heartbeat of the claim %s failed (%s); retrying", claim.name, exc.__cause__ or exc)
