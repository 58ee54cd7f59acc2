"""Memory this process may still use, read from its own cgroup (v1 or v2) and /proc/meminfo.

A container shows the host's RAM in ``free`` and /proc/meminfo; the limit that applies is that of
the process's own cgroup (``/proc/self/cgroup``), the smallest one up the chain, cgroup v1 or v2.
The cgroup's usage counts page cache too, and right after `import torch` in a fresh container most
of it is cache: the kernel reclaims clean cache before it kills anything, so counting it would
refuse runs that fit (measurements: docs/DECISIONS.md). What cannot be reclaimed without swap is anonymous and
shared memory (``in_use``); the code being run, mapped from torch's libraries, is reclaimable on
paper, but evicting it means reading it straight back, so ``CODE_RESERVE`` is kept for it:
``available = limit - in_use - CODE_RESERVE``, capped by the host's MemAvailable.

Pure reading, standard library only: the data loader sizes its inputs with it, the trainer its
runs, and ``agents.resources.memory``'s watchdog watches with it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

MIB = 2**20
# Resident code (torch's, numpy's libraries): evictable, but evicting it thrashes (measurements: docs/DECISIONS.md)
CODE_RESERVE = 64 * MIB
_UNLIMITED_V1 = 2**60  # cgroup v1 writes ~2**63 rounded to a page for "no limit"


@dataclass(frozen=True)
class MemoryState:
    """A reading of the process's memory situation; bytes."""

    limit: int | None  # smallest memory limit up the cgroup chain; None = unlimited
    usage: int | None  # the limiting cgroup's charged memory, page cache included
    in_use: int | None  # anonymous + shared memory: what reclaim cannot take without swap
    limit_hits: int  # times the cgroup reached its limit (v1 failcnt; v2 memory.events "max")
    refaults: int  # pages read back soon after reclaim pushed them out (workingset refaults; else major faults)
    host_available: int  # /proc/meminfo MemAvailable
    version: int | None  # cgroup version: 1, 2 or None (none found)
    path: str | None  # the cgroup directory read (the one with the smallest limit)

    @property
    def available(self) -> int:
        """Bytes this process can still allocate without reaching the limit."""
        if self.limit is None:
            return self.host_available
        return max(0, min(self.host_available, self.limit - (self.in_use or 0) - CODE_RESERVE))


def read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return None


def read_int(path: Path) -> int | None:
    text = read_text(path)
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def meminfo(proc_root: Path = Path("/proc")) -> dict[str, int]:
    """/proc/meminfo as bytes per key."""
    out: dict[str, int] = {}
    for line in (read_text(Path(proc_root) / "meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    return out


def own_cgroups(proc_root: Path = Path("/proc")) -> dict[str, str]:
    """Controller -> cgroup path of this process ("" key = the v2 unified hierarchy)."""
    out: dict[str, str] = {}
    for line in (read_text(Path(proc_root) / "self" / "cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            out[""] = path
        for c in controllers.split(","):
            if c:
                out[c] = path
    return out


def cgroup_chain(mount: Path, rel: str | None) -> list[Path]:
    """The process's cgroup dir under ``mount`` and its ancestors up to ``mount``, leaf first.

    Falls back to ``mount`` alone when the path is unknown or not visible (e.g. a cgroup namespace
    already makes the container's cgroup the root).
    """
    if rel:
        leaf = mount / rel.strip("/")
        if leaf.is_dir():
            chain = [leaf]
            while chain[-1] != mount and mount in chain[-1].parents:
                chain.append(chain[-1].parent)
            return chain
    return [mount]


def _events_max(directory: Path) -> int:
    for line in (read_text(directory / "memory.events") or "").splitlines():
        k, _, value = line.partition(" ")
        if k == "max" and value.strip().isdigit():
            return int(value)
    return 0


def memory_state(cgroup_root: str | os.PathLike = "/sys/fs/cgroup",
                 proc_root: str | os.PathLike = "/proc") -> MemoryState:
    """This process's memory limit, usage and working set; the roots are parameters for tests."""
    cgroup_root, proc_root = Path(cgroup_root), Path(proc_root)
    info = meminfo(proc_root)
    host_available = info.get("MemAvailable", info.get("MemFree", info.get("MemTotal", 0)))
    own = own_cgroups(proc_root)
    if (cgroup_root / "cgroup.controllers").is_file():
        version, chain = 2, cgroup_chain(cgroup_root, own.get(""))
        limit_file, usage_file, prefix = "memory.max", "memory.current", ""
    elif (cgroup_root / "memory").is_dir():
        version, chain = 1, cgroup_chain(cgroup_root / "memory", own.get("memory"))
        limit_file, usage_file, prefix = "memory.limit_in_bytes", "memory.usage_in_bytes", "total_"
    else:
        return MemoryState(None, None, None, 0, 0, host_available, None, None)
    # the limit that bites is the smallest up the chain; usage is read where it is
    best: tuple[int, Path] | None = None
    for d in chain:
        lim = read_int(d / limit_file)  # v2 "max" reads as None
        if lim is not None and lim < _UNLIMITED_V1 and (best is None or lim < best[0]):
            best = (lim, d)
    where = best[1] if best else chain[0]
    usage = read_int(where / usage_file)
    if usage is None and where is not chain[0]:
        where = chain[0]
        usage = read_int(where / usage_file)
    stat = _stat(where)
    anon = stat.get(prefix + ("rss" if version == 1 else "anon"))
    if anon is not None:
        in_use = anon + stat.get(prefix + "shmem", 0)
    else:  # no breakdown: usage less the cache the kernel would drop first
        in_use = None if usage is None else max(0, usage - stat.get(prefix + "inactive_file", 0))
    hits = (read_int(where / "memory.failcnt") or 0) if version == 1 else _events_max(where)
    return MemoryState(best[0] if best else None, usage, in_use, hits, _refaults(stat, prefix),
                       host_available, version, str(where))


def _stat(directory: Path) -> dict[str, int]:
    out = {}
    for line in (read_text(directory / "memory.stat") or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def _refaults(stat: dict[str, int], prefix: str) -> int:
    """Thrash counter: workingset refaults (pages evicted and needed again), else major page faults."""
    keys = [f"{prefix}workingset_refault_anon", f"{prefix}workingset_refault_file"]
    if any(k in stat for k in keys):
        return sum(stat.get(k, 0) for k in keys)
    if f"{prefix}workingset_refault" in stat:  # kernels before 5.9 count them together
        return stat[f"{prefix}workingset_refault"]
    return stat.get(f"{prefix}pgmajfault", 0)


def mib(n: int | None) -> str:
    """Bytes as "1,234 MiB" ("?" for unknown)."""
    return "?" if n is None else f"{n / MIB:,.0f} MiB"


def size_text(n: int) -> str:
    """Bytes for a message: "812 KiB", "3.5 MiB", "1,234 MiB"."""
    if n < MIB:
        return f"{n / 1024:,.0f} KiB"
    return f"{n / MIB:.1f} MiB" if n < 10 * MIB else mib(n)


def memory_budget(state: MemoryState | None = None) -> tuple[int, str]:
    """(bytes this process may still allocate, where that figure comes from), for one-line refusals."""
    s = memory_state() if state is None else state
    if s.limit is None and s.host_available <= 0:  # no /proc/meminfo (not Linux): nothing to judge by
        return sys.maxsize, "no memory limit found"
    host = f"the machine's available memory (MemAvailable {mib(s.host_available)})"
    if s.limit is None or s.available >= s.host_available:
        return s.available, host
    return s.available, (f"the {mib(s.limit)} memory limit of this process's cgroup, {mib(s.in_use)} already in use "
                         f"and {mib(CODE_RESERVE)} kept for code")
