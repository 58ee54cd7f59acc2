"""Train in steps, each in its own process, so a small container holds one step's imports at a time.

Python never gives back what an import takes, and one process holding all of training's imports does not fit
a small container (measurements: docs/DECISIONS.md). ``python -m agents.train`` is a light parent (argparse,
json, subprocess) that runs each step as ``python -m agents.training.staged STEP FOLDER``; a step's memory is
returned when it exits. The steps share the checkpoint folder:

- ``fit``: load, label, split, normalise; train with a checkpoint every epoch (the last one holds
  the best weights). Checks up front that the largest step fits what the container has left.
- ``evaluate``: the same preparation again (deterministic), the best weights -> metrics beside
  their baselines and the agent card (``card.json``) plus the parity batch (``parity.npy``).
- ``export``: card + weights -> the ONNX agent, parity-checked (torch and onnx only, no pandas).

Each step runs under :class:`agents.resources.memory.MemoryWatchdog`; the parent turns a step the kernel
killed into one line. The in-process API (:func:`agents.training.trainer.train`) runs the same functions.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from datafeeds.memory import memory_state, mib

from ..resources.memory import EXIT_MEMORY

STEPS = ("fit", "evaluate", "export")
JOB_FILE = "job.json"  # what the parent asks for: config, output, resume, command, quiet
CARD_FILE = "card.json"  # the evaluate step's card, embedded into the ONNX file by the export step
PARITY_FILE = "parity.npy"  # the windows the export's parity check runs on
# A step's imports and data, plus a margin: with less free the parent refuses to start it (docs/DECISIONS.md)
IMPORT_FLOOR = 240 * 2**20


def run(job: dict, folder: Path) -> int:
    """The parent: run the steps as child processes; the exit status of the first that fails, else 0.

    Prints one line for what a child cannot say itself (killed by the kernel, not started).
    """
    state = memory_state()
    if state.limit is not None and state.available < IMPORT_FLOOR:
        print(f"error: out of memory: training needs at least {mib(IMPORT_FLOOR)} to load torch and pandas, but the "
              f"container's {mib(state.limit)} limit leaves {mib(state.available)} ({mib(state.in_use)} in use)"
              ": give it more memory", file=sys.stderr)
        return 2
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = _lock(folder)
    except OSError as exc:
        print(f"error: cannot write the checkpoint folder {folder}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if isinstance(lock, str):
        print(f"error: another training is using the checkpoint folder {folder} ({lock}); wait for it to end, or "
              "give this one another --out or --checkpoint-dir", file=sys.stderr)
        return 2
    fresh = not (folder / "last.pt").exists()
    try:
        _write_json(folder / JOB_FILE, job)
        code = _run_steps(job, folder)
    except OSError as exc:
        print(f"error: cannot write the checkpoint folder {folder}: {exc.strerror or exc}", file=sys.stderr)
        code = 2
    finally:
        lock.close()  # the kernel also drops the lock if this process dies
    if code == 2 and fresh and not (folder / "last.pt").exists():  # refused before the first epoch: no litter
        for name in (JOB_FILE, LOCK_FILE):
            (folder / name).unlink(missing_ok=True)
        try:
            folder.rmdir()  # only if nothing else is in it
        except OSError:
            pass
    return code


LOCK_FILE = ".lock"  # held (flock) by the parent of the training that uses the folder; holds its pid


def _lock(folder: Path):
    """The open, exclusively locked lock file of ``folder``, or why it is taken (its holder's pid)."""
    import fcntl
    import os

    fh = open(folder / LOCK_FILE, "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip()
        fh.close()
        return f"pid {holder}" if holder.isdigit() else "a running process"
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


def _run_steps(job: dict, folder: Path) -> int:
    """Each step in its own child process, in order; the exit status of the first that fails, else 0."""
    for step in STEPS:
        if step in _STEP_LINES:  # a line per step, also through a pipe: a long step is work, not a hang
            print(_STEP_LINES[step], flush=True)
        kills = oom_kills()
        child = subprocess.Popen([sys.executable, "-m", "agents.training.staged", step, str(folder)],
                                 preexec_fn=_die_with_parent)
        try:
            code = child.wait()
        except KeyboardInterrupt:  # the child got the same SIGINT; let it finish its own message
            code = child.wait()
            return code if code > 0 else 130
        if code == 0:
            continue
        if code == -signal.SIGKILL or code == 128 + signal.SIGKILL:
            print(f"error: {_killed(step, job, folder, oom=kills is None or oom_kills() != kills)}", file=sys.stderr)
            return 1
        if code < 0:
            print(f"error: the {step} step ended by signal {-code}; {_next_step(job, folder)}", file=sys.stderr)
            return 1
        return code
    return 0


_STEP_LINES = {"evaluate": "evaluating: metrics beside the no-skill, logistic and gradient-boosting baselines; "
                           "adversarial validation",
               "export": "exporting: the ONNX agent, parity-checked against torch"}


def oom_kills(proc_root: Path = Path("/proc")) -> int | None:
    """The kernel's count of processes its OOM killer has killed (``oom_kill`` in /proc/vmstat, Linux
    4.13+; cgroup OOM kills included), or None where the kernel does not say."""
    try:
        for line in (proc_root / "vmstat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return None


def _killed(step: str, job: dict, folder: Path, *, oom: bool) -> str:
    """Why a step died of SIGKILL, and what to run next: the OOM killer (its counter moved while the
    step ran) or someone else's kill -9."""
    if not oom:
        return (f"the {step} step was killed (SIGKILL, not by the kernel's out-of-memory killer); "
                f"{_next_step(job, folder)}")
    limit = memory_state().limit
    where = f" at the container limit of {mib(limit)}" if limit else ""
    return f"out of memory: the {step} step was killed by the kernel{where}; {memory_advice(job, folder)}"


def _resume_command(job: dict) -> str:
    command = job["command"]
    return command if " --resume" in f"{command} " else f"{command} --resume"


def _next_step(job: dict, folder: Path) -> str:
    """What to run after a step died: resume from the last checkpoint, or start again if there is none."""
    if (folder / "last.pt").exists():
        return f"continue from the last checkpoint ({folder / 'last.pt'}) with: {_resume_command(job)}"
    return f"no epoch was checkpointed; start again with: {job['command']}"


def memory_advice(job: dict, folder: Path) -> str:
    """What to do after running out of memory. A resume must keep the batch size (the checkpoint is
    refused otherwise), so a smaller batch means starting again."""
    smaller = "lower --batch-size or --seq-len and start again without --resume"
    if (folder / "last.pt").exists():
        return f"give the container more memory and continue with: {_resume_command(job)}; or {smaller}"
    return f"{smaller}, or give the container more memory"


def _die_with_parent() -> None:
    """In the child before exec (Linux): the kernel kills it if the parent dies, so a killed
    ``python -m agents.train`` leaves no step running on behind a later ``--resume``."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: a killed parent may leave its step running
        pass


# ------------------------------------------------------------------------------------------ steps
def _fit(job: dict, folder: Path) -> None:
    from ..data.prepare import prepare
    from ..resources.hardware import choose_profile, detect, require_cuda
    from .config import TrainConfig
    from .trainer import fit, profile_record

    cfg = TrainConfig.from_dict(job["config"])
    if cfg.gpu:
        require_cuda()
    profile = choose_profile(detect(), cfg.profile, gpu=cfg.gpu)
    print(f"hardware: {profile.name} profile ({profile.reason})", flush=True)

    def on_epoch(rec, state):
        val = "n/a" if rec["val_loss"] is None else f"{rec['val_loss']:.4f}"
        print(f"epoch {rec['epoch']:>3}: train loss {rec['train_loss']:.4f}  val loss {val}"
              f"  ({rec['seconds']:.1f}s){'  *best' if state['best_epoch'] == rec['epoch'] else ''}", flush=True)

    prep = prepare(cfg)
    res = fit(cfg, prep, checkpoint_dir=folder, resume=job["resume"], on_epoch=on_epoch,
              progress=not job["quiet"], profile=profile)
    _write_json(folder / "fit.json", profile_record(res))


def _evaluate(job: dict, folder: Path) -> None:
    import numpy as np

    from ..data.prepare import prepare
    from .checkpoint import load_checkpoint
    from .config import TrainConfig
    from .trainer import make_card, parity_batch

    cfg = TrainConfig.from_dict(job["config"])
    prep = prepare(cfg)
    state = _best_state(load_checkpoint(folder), folder)
    model = _model(cfg.model_config(len(prep.names)), state["best_weights"])
    card = make_card(cfg, prep, model, state, json.loads((folder / "fit.json").read_text()), job["command"])
    np.save(folder / PARITY_FILE, parity_batch(cfg, prep))
    _write_json(folder / CARD_FILE, card)


def _export(job: dict, folder: Path) -> None:
    import numpy as np

    from ..artifact.export import export_agent
    from ..model.config import ModelConfig
    from .checkpoint import load_checkpoint

    card = json.loads((folder / CARD_FILE).read_text())
    state = _best_state(load_checkpoint(folder), folder)
    model = _model(ModelConfig.from_dict(card["model"]), state["best_weights"])
    export_agent(model, card, job["out"], np.load(folder / PARITY_FILE))
    _write_json(folder / CARD_FILE, card)  # now with the exporter used, as in the file


def _best_state(ckpt: dict | None, folder: Path) -> dict:
    if ckpt is None or ckpt.get("state", {}).get("best_weights") is None:
        raise ValueError(f"{folder}: no trained weights in the checkpoint; run the fit step first (without --resume)")
    return ckpt["state"]


def _model(config, weights):
    from ..model.transformer import TransformerAgent

    model = TransformerAgent(config)
    model.load_state_dict(weights)
    return model.eval()


def _write_json(path: Path, obj) -> None:
    from datafeeds import write_atomic

    write_atomic(path, json.dumps(obj, indent=1, allow_nan=False).encode())


def _step(step: str, folder: Path) -> int:
    """A child: run ``step`` under the memory watchdog; errors as one line with the CLI's exit codes."""
    from datafeeds import DataError

    from ..artifact.export import ExportError
    from ..resources.hardware import HardwareError
    from ..resources.memory import MemoryWatchdog

    job = json.loads((folder / JOB_FILE).read_text())
    try:
        with MemoryWatchdog(f"the {step} step", lambda: memory_advice(job, folder)):
            {"fit": _fit, "evaluate": _evaluate, "export": _export}[step](job, folder)
    except (DataError, HardwareError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f"error: {exc} (the last checkpoint is kept in {folder})", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"error: out of memory: the {step} step could not allocate; {memory_advice(job, folder)}",
              file=sys.stderr)
        return EXIT_MEMORY
    except OSError as exc:  # a full disk, a folder gone: files are written whole or not at all, so nothing is half-made
        print(f"error: the {step} step cannot write {exc.filename or 'its files'}: {exc.strerror or exc}; once it "
              f"can, {_next_step(job, folder)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: {_resume_command(job)}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in STEPS:
        sys.exit(f"usage: python -m agents.training.staged {{{'|'.join(STEPS)}}} FOLDER  "
                 "(run by python -m agents.train)")
    sys.exit(_step(sys.argv[1], Path(sys.argv[2])))
