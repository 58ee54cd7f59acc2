"""Trial sampling and the per-fold trial total: seeded TPE, surplus-trial refusal, stop-when-full."""

from __future__ import annotations

import logging
import re
import threading
import warnings

import numpy as np
import optuna
from optuna.trial import TrialState

log = logging.getLogger("engine.walkforward")  # one logger for the modules of the walk-forward CLI

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def position(study: optuna.Study, number: int) -> int:
    """Trials before trial ``number`` that did not fail: a trial's place in the study's history. A run
    interrupted and resumed numbers its trials differently (a failed trial keeps its number, its retry
    takes a new one) but gives each new trial the position it had in an uninterrupted run."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.number < number and t.state != TrialState.FAIL)


def draw_position(study: optuna.Study, trial) -> int:
    """The position that seeds ``trial``'s draw: its ``position``, or the next one no live or finished
    trial holds. A failed trial frees its position (a resumed run draws what the uninterrupted one drew);
    with several workers a failure while later trials run must not hand out a position in use twice."""
    trials = study.get_trials(deepcopy=False)
    taken = {t.system_attrs.get("draw_position") for t in trials
             if t.state != TrialState.FAIL and t.number != trial.number}
    p = position(study, trial.number)
    while p in taken:
        p += 1
    return p


class TrialSeededTPE(optuna.samplers.BaseSampler):
    """TPE whose random stream is seeded by (seed, trial position) instead of once per process.

    One worker reproduces its runs, also across kills and resumes (``position``); workers sharing a
    study draw different parameters (a TPE with the same seed in each would propose identical startup
    trials in every worker).
    """

    def __init__(self, seed: int, n_startup_trials: int):
        self._seed = int(seed)
        self._n_startup = int(n_startup_trials)
        self._local = threading.local()  # n_jobs threads each run their own trial
        self.started: set[int] = set()  # ids of the trials this process started (see fail_interrupted)

    def _tpe(self) -> optuna.samplers.TPESampler:
        return self._local.tpe

    def before_trial(self, study, trial):
        self.started.add(trial._trial_id)
        draw = draw_position(study, trial)
        study._storage.set_trial_system_attr(trial._trial_id, "draw_position", draw)
        seed = int(np.random.SeedSequence([self._seed, draw]).generate_state(1)[0])
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


class SurplusTrial(Exception):
    """This trial would exceed the per-fold total: other workers already hold the remaining ones."""


class StopWhenFull:
    """Stop this worker's optimize loop once finished + in-flight trials (any worker) reach the total.

    MaxTrialsCallback counts finished trials only, so a worker would start one more trial while
    others' last trials run; that trial would then be refused as surplus (a FAIL record).
    """

    def __init__(self, cap: int):
        self.cap = cap

    def __call__(self, study: optuna.Study, trial) -> None:
        if len(study.get_trials(deepcopy=False, states=LIVE)) >= self.cap:
            study.stop()


class _HideRoutineFailures(logging.Filter):
    """optuna logs every failed trial with a traceback; two failures are routine: a refused surplus
    trial, and a trial stopped by Ctrl-C (the command line says so in one line; the trial is FAIL and
    a rerun runs a new one in its slot)."""

    ROUTINE = ("SurplusTrial", "KeyboardInterrupt")

    def __init__(self):
        super().__init__()
        self._pending: set[str] = set()  # its 'failed with value None' line follows the error line

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        m = re.match(r"Trial (\d+) failed", msg)
        if not m:
            return True
        if any(f"because of the following error: {name}(" in msg for name in self.ROUTINE):
            self._pending.add(m.group(1))
            return False
        if "with value None" in msg and m.group(1) in self._pending:
            self._pending.discard(m.group(1))
            return False
        return True


logging.getLogger("optuna.study._optimize").addFilter(_HideRoutineFailures())


def check_not_surplus(trial: optuna.Trial, cap: int) -> None:
    # Trial numbers are given out in creation order; if `cap` live trials precede this one, the
    # study is full and another worker's trial got there first (MaxTrialsCallback alone only stops
    # a worker after it finished one trial too many).
    live = trial.study.get_trials(deepcopy=False, states=LIVE)
    ahead = sum(1 for t in live if t.number < trial.number)
    if ahead >= cap:
        trial.set_user_attr("surplus", True)
        raise SurplusTrial(f"trial {trial.number}: {ahead} trials already hold the {cap} slots")
    # two workers failing the same stale trial at once (SQLite has no row locks) queue it twice:
    # only the first copy runs
    me = next((t for t in live if t.number == trial.number), None)
    origin = None if me is None else me.system_attrs.get("failed_trial")
    if origin is not None and any(t.system_attrs.get("failed_trial") == origin
                                  for t in live if t.number < trial.number):
        trial.set_user_attr("surplus", True)
        raise SurplusTrial(f"trial {trial.number}: a copy of failed trial {origin} already runs")


def fail_interrupted(storage, study: optuna.Study) -> None:
    """Mark FAIL the trials this process started that are still RUNNING: after Ctrl-C, one that was
    interrupted outside its objective (optuna fails the others) before its first heartbeat would
    otherwise stay RUNNING for ever, and every worker would wait for it."""
    sampler = study.sampler
    for trial_id in sorted(getattr(sampler, "started", ())):
        try:
            if storage.get_trial(trial_id).state == TrialState.RUNNING:
                storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except (KeyError, optuna.exceptions.UpdateFinishedTrialError):
            pass  # finished meanwhile
        except Exception as exc:  # the database: the trial stays RUNNING, a rerun waits for it
            log.warning("could not mark the interrupted trial (id %d) failed (%s)", trial_id, exc.__cause__ or exc)
