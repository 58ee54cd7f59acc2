"""The journal's container for real: commands inside a memory cgroup finish or refuse in one line.

Needs root and a writable cgroup memory hierarchy (v1 ``/sys/fs/cgroup/memory`` or v2 with the
memory controller delegated); skipped with the reason elsewhere. Each test creates its own cgroup,
moves only its child command into it, and removes it afterwards, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20
_V1 = Path("/sys/fs/cgroup/memory")
_V2 = Path("/sys/fs/cgroup")


def _hierarchy() -> tuple[Path, int] | None:
    """(where to create groups, cgroup version) if this process may create memory cgroups."""
    if os.geteuid() != 0:
        return None
    if _V1.is_dir() and os.access(_V1, os.W_OK):
        return _V1, 1
    if (_V2 / "cgroup.controllers").is_file() and "memory" in (_V2 / "cgroup.subtree_control").read_text().split():
        if os.access(_V2, os.W_OK):
            return _V2, 2
    return None


HIERARCHY = _hierarchy()
pytestmark = pytest.mark.skipif(HIERARCHY is None, reason="needs root and a writable cgroup memory hierarchy")


@contextlib.contextmanager
def memory_cgroup(limit_mib: int):
    """A fresh memory cgroup with this limit; removed on exit (its processes are killed first)."""
    base, version = HIERARCHY
    group = base / f"tbm-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / ("memory.limit_in_bytes" if version == 1 else "memory.max")).write_text(str(limit_mib * MiB))
        if version == 2 and (group / "memory.swap.max").exists():
            (group / "memory.swap.max").write_text("0")
        yield group
    finally:
        for _ in range(50):  # rmdir works once no process is left in it
            pids = (group / "cgroup.procs").read_text().split() if group.exists() else []
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
            try:
                group.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)


def run_in(group: Path, args: list[str], timeout: float, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run ``args`` with only that process (and its children) in ``group``."""
    procs = group / "cgroup.procs"
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=lambda: procs.write_text(str(os.getpid())))


def peak_mib(group: Path) -> float:
    _, version = HIERARCHY
    name = "memory.max_usage_in_bytes" if version == 1 else "memory.peak"
    path = group / name
    return int(path.read_text()) / MiB if path.exists() else float("nan")


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_detection_reads_the_real_cgroup_limit():
    code = ("from datafeeds.memory import memory_state; from agents.resources.hardware import detect; "
            "s = memory_state(); r = detect(); print(s.limit, s.path, r.mem_limit, r.mem_available <= s.limit)")
    with memory_cgroup(488) as group:
        done = run_in(group, [sys.executable, "-c", code], timeout=120)
    assert done.returncode == 0, done.stderr
    limit, path, detected, below = done.stdout.split()
    assert int(limit) == int(detected) == 488 * MiB
    assert Path(path).name == group.name and below == "True"


def test_training_in_the_journals_488_mib_container_finishes(tmp_path):
    out = tmp_path / "agent.onnx"
    args = [sys.executable, "-m", "agents.train", "--epochs", "1", "--quiet", "--out", str(out),
            "--checkpoint-dir", str(tmp_path / "ck")]
    with memory_cgroup(488) as group:
        done = run_in(group, args, timeout=600)
        peak = peak_mib(group)
    assert done.returncode == 0, done.stderr
    assert out.is_file() and "wrote" in done.stdout and "verdict" in done.stdout
    assert peak <= 488
    from agents.artifact.runtime import OnnxAgent

    agent = OnnxAgent.load(out)  # a valid, parity-checked agent
    assert agent.meta["exporter"] in ("dynamo", "torchscript")


def test_training_below_what_it_needs_refuses_in_one_line_within_seconds(tmp_path):
    args = [sys.executable, "-m", "agents.train", "--epochs", "1", "--quiet", "--out", str(tmp_path / "a.onnx"),
            "--checkpoint-dir", str(tmp_path / "ck")]
    for limit in (300, 200):  # below the training's need; below even the imports' floor
        with memory_cgroup(limit) as group:
            t0 = time.monotonic()
            done = run_in(group, args, timeout=120)
            seconds = time.monotonic() - t0
        assert done.returncode == 2, (limit, done.returncode, done.stderr)
        line = _one_error_line(done)
        assert "out of memory" in line and f"{limit} MiB" in line and "MiB" in line.split("needs", 1)[1]
        assert seconds < 30
        assert not (tmp_path / "a.onnx").exists()


def test_backtest_of_the_shipped_agent_in_488_mib_finishes(tmp_path):
    args = [sys.executable, "run_backtest.py", "--agent", "models/agent1.onnx", "--quiet",
            "--plot", str(tmp_path / "bt.png")]
    with memory_cgroup(488) as group:
        done = run_in(group, args, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "buy & hold" in done.stdout and (tmp_path / "bt.png").is_file()


@pytest.mark.parametrize("data", ["sp500", "us_daily"])
def test_walk_forward_in_488_mib_refuses_up_front_in_one_line(tmp_path, data):
    args = [sys.executable, "-m", "engine.walkforward", "--data", data, "--folds", "3", "--trials", "5", "--quiet",
            "--out", str(tmp_path / "wf")]
    with memory_cgroup(488) as group:
        t0 = time.monotonic()
        done = run_in(group, args, timeout=300)
        seconds = time.monotonic() - t0
    assert done.returncode == 2, done.stderr
    line = _one_error_line(done)
    assert line.startswith("error: out of memory: the walk-forward run needs") and "488 MiB limit" in line
    assert seconds < 30 and not (tmp_path / "wf" / "optuna.db").exists()  # refused before any study


_THRASH = """
import mmap, sys, time
from agents.resources.memory import MemoryWatchdog
f = open(sys.argv[1], "rb")
m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
MemoryWatchdog("the test", "what to do").start()
t0 = time.monotonic()
while time.monotonic() - t0 < 60:
    for off in range(0, len(m), 4096):  # every page, again and again: more than the cgroup holds
        m[off]
print("never stopped")
"""

_READ_ONCE = """
import sys, time
from agents.resources.memory import MemoryWatchdog
MemoryWatchdog("the test").start()
with open(sys.argv[1], "rb") as f:
    while f.read(1 << 20):
        time.sleep(0.03)  # ~5 s for 160 MiB: longer than the watchdog's 3 s
print("read it all")
"""


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("thrash") / "big.bin"
    with open(path, "wb") as f:
        for _ in range(160):
            f.write(os.urandom(MiB))
    return path


def _drop_page_cache() -> None:
    """Out of the page cache, a file's pages are charged to the cgroup that reads them back (pages
    already cached stay charged to whoever cached them, here the test that wrote the file)."""
    subprocess.run(["sync"], check=False)
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("1")


def test_watchdog_stops_a_process_thrashing_at_the_limit(big_file):
    _drop_page_cache()
    with memory_cgroup(96) as group:
        t0 = time.monotonic()
        done = run_in(group, [sys.executable, "-c", _THRASH, str(big_file)], timeout=120)
        seconds = time.monotonic() - t0
    assert done.returncode == 3, done.stderr
    line = _one_error_line(done)
    assert "out of memory: the test stopped, thrashing at the container's limit" in line and "what to do" in line
    assert seconds < 20 and "never stopped" not in done.stdout


def test_watchdog_leaves_a_cgroup_that_is_merely_full_of_page_cache_alone(big_file):
    _drop_page_cache()
    with memory_cgroup(96) as group:
        done = run_in(group, [sys.executable, "-c", _READ_ONCE, str(big_file)], timeout=120)
    assert done.returncode == 0, done.stderr
    assert "read it all" in done.stdout


# ------------------------------------------------------------------ inputs larger than the container
# Before: a 2 GB sparse CSV used 14.5 GiB, a valid CSV with a 2 GB tail 22.7 GiB and a 9 MB .csv.gz bomb GBs:
# each was OOM-killed (137) in a 1-2 GiB container. Smaller files in a smaller container show the same here.
_LIMIT_MIB = 400
_HEADER = b"datetime,open,high,low,close,volume\n"


def _minute_bars(year: int, n: int) -> bytes:
    """``n`` valid one-minute OHLCV lines from ``year``-03-01 09:00 (no leap day inside)."""
    import numpy as np

    stamps = np.datetime64(f"{year}-03-01T09:00") + np.arange(n).astype("timedelta64[m]")
    return "".join(f"{str(t).replace('T', ' ')}:00,3600.5,3602.0,3598.5,3601.0,{700 + i % 300}\n"
                   for i, t in enumerate(stamps)).encode()


def _sparse_csv(path: Path) -> Path:
    """A valid header and rows, then 2 GiB of NUL bytes that take no disk (``truncate -s 2G``)."""
    path.write_bytes(_HEADER + _minute_bars(2001, 5))
    os.truncate(path, 2 * 1024 * MiB)
    return path


def _long_csv(path: Path, mib: int = 128) -> Path:
    """A valid CSV of ``mib`` MiB: blocks of 100,000 minute bars, one year apart, in time order."""
    block = _minute_bars(2001, 100_000)
    with open(path, "wb") as f:
        f.write(_HEADER)
        for year in range(2001, 2001 + mib * MiB // len(block) + 1):
            f.write(block.replace(b"2001-", f"{year}-".encode()))
    return path


def _gzip_bomb(path: Path, mib: int = 512) -> Path:
    """A .csv.gz of ~0.5 MB that decompresses to ``mib`` MiB of CSV lines (gzip members, one per MiB)."""
    import gzip

    line = b"2020-01-02,1.5,2.5,1.0,2.0,100\n"
    member = gzip.compress(_HEADER + line * (MiB // len(line)))
    path.write_bytes(member + gzip.compress(line * (MiB // len(line))) * (mib - 1))
    return path


@pytest.mark.parametrize("make, needle", [
    (_sparse_csv, "2,048 MiB of text"),
    (_long_csv, "MiB of text"),
    (_gzip_bomb, "decompressed so far"),
], ids=["sparse-2GiB", "valid-128MiB", "gzip-bomb-512MiB"])
def test_data_over_the_containers_memory_is_refused_in_one_line_not_killed(make, needle, tmp_path):
    path = make(tmp_path / ("big.csv.gz" if make is _gzip_bomb else "big.csv"))
    try:
        with memory_cgroup(_LIMIT_MIB) as group:
            t0 = time.monotonic()
            done = run_in(group, [sys.executable, "run_backtest.py", "--data", str(path), "--quiet",
                                  "--plot", str(tmp_path / "bt.png")], timeout=180)
            seconds = time.monotonic() - t0
    finally:
        path.unlink()
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])  # 137 before: killed by the kernel
    line = _one_error_line(done)
    assert line.startswith(f"error: --data: {path}: too large to load: ") and needle in line, line
    assert f"the {_LIMIT_MIB} MiB memory limit of this process's cgroup" in line, line
    assert "fix: split the file" in line and "raise the container's memory limit" in line, line
    assert seconds < 60
