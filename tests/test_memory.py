"""agents.resources.memory on fake cgroup trees, the watchdog's rule, and the staged trainer's parent."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from agents.training import staged
from agents.resources.memory import MemoryWatchdog
from datafeeds.memory import MIB, MemoryState, memory_state


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _proc(tmp_path: Path, cgroup: str, available_kb: int = 900_000_000) -> Path:
    proc = tmp_path / "proc"
    _write(proc, "self/cgroup", cgroup)
    _write(proc, "meminfo", f"MemTotal: 1000000000 kB\nMemAvailable: {available_kb} kB\n")
    return proc


def test_v1_limit_of_an_ancestor_usage_where_it_applies_and_refaults(tmp_path):
    cg = tmp_path / "cg"
    _write(cg, "memory/pod/memory.limit_in_bytes", f"{488 * MIB}\n")
    _write(cg, "memory/pod/memory.usage_in_bytes", f"{300 * MIB}\n")
    _write(cg, "memory/pod/memory.failcnt", "7\n")
    _write(cg, "memory/pod/memory.stat", f"total_cache {150 * MIB}\ntotal_rss {140 * MIB}\ntotal_shmem {10 * MIB}\n"
                                         f"total_inactive_file {100 * MIB}\ntotal_workingset_refault_anon 5\n"
                                         "total_workingset_refault_file 30\ntotal_pgmajfault 999\n")
    _write(cg, "memory/pod/job/memory.limit_in_bytes", "9223372036854771712\n")  # unlimited leaf
    _write(cg, "memory/pod/job/memory.usage_in_bytes", f"{200 * MIB}\n")
    s = memory_state(cg, _proc(tmp_path, "4:memory:/pod/job\n"))
    # in use: anonymous + shared memory; the page cache is the kernel's to reclaim, the code reserve stays
    assert (s.version, s.limit, s.usage, s.in_use) == (1, 488 * MIB, 300 * MIB, 150 * MIB)
    assert s.path.endswith("memory/pod") and s.limit_hits == 7 and s.refaults == 35
    assert s.available == (488 - 150 - 64) * MIB


def test_v2_events_refaults_and_the_host_cap(tmp_path):
    cg = tmp_path / "cg"
    _write(cg, "cgroup.controllers", "cpu memory\n")
    _write(cg, "job/memory.max", f"{2048 * MIB}\n")
    _write(cg, "job/memory.current", f"{100 * MIB}\n")
    _write(cg, "job/memory.events", "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    _write(cg, "job/memory.stat", f"inactive_file {30 * MIB}\nworkingset_refault 44\npgmajfault 3\n")  # pre-5.9
    s = memory_state(cg, _proc(tmp_path, "0::/job\n", available_kb=500 * 1024))
    assert (s.version, s.limit, s.limit_hits, s.refaults) == (2, 2048 * MIB, 12, 44)
    assert s.in_use == 70 * MIB  # no anon/shmem breakdown: usage less inactive file cache
    assert s.available == 500 * MIB  # the host has less left than the cgroup would allow


def test_no_cgroup_means_no_limit(tmp_path):
    s = memory_state(tmp_path / "none", _proc(tmp_path, ""))
    assert s.limit is None and s.available == 900_000_000 * 1024


def _state(usage_mib, refaults, limit_mib=488):
    return MemoryState(limit_mib * MIB, usage_mib * MIB, usage_mib * MIB, 0, refaults, 10**12, 1, "/x")


def test_watchdog_stops_only_after_seconds_of_thrashing_at_the_limit():
    stops = []
    dog = MemoryWatchdog("the fit step", "last checkpoint: ck/last.pt", seconds=3.0, interval=0.25,
                         min_refaults=64, on_stop=stops.append)
    quiet, thrash = _state(480, 1000), _state(480, 1200)  # 200 pages read back in one poll
    assert dog.check(thrash, quiet, None, now=10.0) == 10.0  # the spell starts
    assert dog.check(thrash, quiet, 10.0, now=12.9) == 10.0 and not stops
    dog.check(thrash, quiet, 10.0, now=13.0)
    assert len(stops) == 1
    assert stops[0].startswith("out of memory: the fit step stopped, thrashing at the container's limit (480 MiB "
                               "of 488 MiB in use, 3 MiB/s of its pages read back for 3 s)")
    assert stops[0].endswith("; last checkpoint: ck/last.pt")
    # full but not refaulting (page cache), refaulting but below the limit, no limit: never a spell
    assert dog.check(_state(487, 1000), _state(487, 1000), 10.0, now=20.0) is None
    assert dog.check(_state(300, 5000), _state(300, 1000), 10.0, now=20.0) is None
    unlimited = MemoryState(None, 480 * MIB, 480 * MIB, 0, 5000, 10**12, None, None)
    assert dog.check(unlimited, _state(480, 0), 10.0, now=20.0) is None


def test_watchdog_asks_for_its_advice_when_it_stops_the_run(tmp_path):
    """What to do may change while a step runs (a checkpoint written since it started)."""
    job, folder, stops = {"command": "python -m agents.train"}, tmp_path / "ck", []
    folder.mkdir()
    dog = MemoryWatchdog("the fit step", lambda: staged.memory_advice(job, folder), on_stop=stops.append)
    (folder / "last.pt").write_bytes(b"epoch 3")  # after the watchdog started
    quiet, thrash = _state(480, 1000), _state(480, 1200)
    dog.check(thrash, quiet, 10.0, now=13.0)
    assert stops[0].endswith("; give the container more memory and continue with: python -m agents.train --resume; "
                             "or lower --batch-size or --seq-len and start again without --resume")


def test_parent_refuses_below_the_import_floor_before_starting_a_step(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(staged, "memory_state", lambda: _state(10, 0, limit_mib=200))
    monkeypatch.setattr(staged.subprocess, "Popen", lambda *a, **k: pytest.fail("a step was started"))
    assert staged.run({"command": "python -m agents.train"}, tmp_path / "ck") == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: out of memory: training needs at least 240 MiB to load torch and pandas, but the "
                   "container's 200 MiB limit leaves 126 MiB (10 MiB in use): give it more memory")


class _Child:
    def __init__(self, code):
        self.code = code

    def wait(self):
        return self.code


@pytest.mark.parametrize("code", [-signal.SIGKILL, 137])
def test_parent_turns_a_step_killed_by_the_kernel_into_one_line(code, monkeypatch, tmp_path, capsys):
    started, kills = [], iter([4, 4, 5])  # the OOM counter moved while the evaluate step ran
    monkeypatch.setattr(staged, "memory_state", lambda: _state(10, 0))
    monkeypatch.setattr(staged, "oom_kills", lambda: next(kills))
    monkeypatch.setattr(staged.subprocess, "Popen", lambda args, **k: started.append(args[3]) or _Child(
        0 if args[3] == "fit" else code))
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "last.pt").write_bytes(b"epoch 1")
    assert staged.run({"command": "python -m agents.train --epochs 1"}, tmp_path / "ck") == 1
    assert started == ["fit", "evaluate"]  # nothing after the killed step
    err = capsys.readouterr().err.strip().splitlines()
    # a resume must keep the batch size: "lower --batch-size and --resume" would be refused
    assert err == ["error: out of memory: the evaluate step was killed by the kernel at the container limit of "
                   "488 MiB; give the container more memory and continue with: python -m agents.train --epochs 1 "
                   "--resume; or lower --batch-size or --seq-len and start again without --resume"]
    assert json.loads((tmp_path / "ck" / "job.json").read_text())["command"] == "python -m agents.train --epochs 1"


@pytest.mark.parametrize("checkpointed", [True, False])
def test_a_kill_9_that_is_not_the_oom_killer_is_not_called_out_of_memory(checkpointed, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(staged, "memory_state", lambda: _state(10, 0))
    monkeypatch.setattr(staged, "oom_kills", lambda: 7)  # the kernel killed nothing
    monkeypatch.setattr(staged.subprocess, "Popen", lambda args, **k: _Child(-signal.SIGKILL))
    (tmp_path / "ck").mkdir()
    if checkpointed:
        (tmp_path / "ck" / "last.pt").write_bytes(b"epoch 1")
    assert staged.run({"command": "python -m agents.train --resume"}, tmp_path / "ck") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out of memory" not in err[0], err
    assert err[0].startswith("error: the fit step was killed (SIGKILL, not by the kernel's out-of-memory killer); ")
    if checkpointed:  # the advice is the command as given, --resume not doubled
        assert err[0].endswith(f"({tmp_path / 'ck' / 'last.pt'}) with: python -m agents.train --resume")
    else:
        assert err[0].endswith("no epoch was checkpointed; start again with: python -m agents.train --resume")


def test_oom_kills_reads_the_kernels_counter(tmp_path):
    (tmp_path / "vmstat").write_text("nr_free_pages 12\noom_kill 3\n")
    assert staged.oom_kills(tmp_path) == 3
    (tmp_path / "vmstat").write_text("nr_free_pages 12\n")
    assert staged.oom_kills(tmp_path) is None
    assert isinstance(staged.oom_kills(), int)  # this machine's kernel says


def test_parent_passes_a_steps_own_exit_status_on(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(staged, "memory_state", lambda: _state(10, 0))
    monkeypatch.setattr(staged.subprocess, "Popen", lambda args, **k: _Child(2))  # the step printed its line
    assert staged.run({"command": "c"}, tmp_path / "ck") == 2
    assert capsys.readouterr().err == ""
