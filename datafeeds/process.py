"""Whose is a pid: the space a pid names one process in, and whether that process still runs.

Shared by everything that judges files or claims left by other processes (atomic writes, the feature
store's builds, the walk-forward claims).
"""

from __future__ import annotations

import os
import socket


def pid_space() -> str:
    """What makes a pid name one process: the kernel boot and pid namespace on Linux, else the host name.

    Two containers may share a host name but not their pids; two hosts never share a boot id.
    """
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return f"host:{socket.gethostname()}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this pid space runs (a pid this process cannot signal counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process; others: cannot tell, so alive
        return True
    return True
