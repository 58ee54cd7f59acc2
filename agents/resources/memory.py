"""A watchdog for this process's memory limit, read with `datafeeds.memory`.

The watchdog turns the hang at the limit (the kernel reclaiming pages the process keeps touching,
"workingset refaults") into one line and an exit status; the staged trainer's parent turns the other
failure, the OOM kill (exit 137, no message), into one line too. Torch-free: that light parent
imports this module.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from datafeeds.memory import MIB, MemoryState, memory_state, mib

EXIT_MEMORY = 3  # exit status of a step the watchdog stopped


class MemoryWatchdog:
    """Stops this process with one line when its cgroup thrashes at the limit: usage at or above
    ``fraction`` of the limit while pages the process needs are read back right after being pushed
    out (``min_refaults`` per poll or more), for ``seconds`` in a row.

    That is the hang the journal saw ("still running 20 minutes later"): the kernel keeps reclaiming
    code and data the process touches again. A cgroup merely full of page cache (a big file read
    once) refaults nothing and is left alone. ``what`` names the run in the message; ``hint`` says
    what to do (a string, or a function giving it when the watchdog stops the run, when what to do
    may have changed: a checkpoint written since the start). No limit, no watchdog (``start`` does nothing).
    """

    def __init__(self, what: str, hint=None, *, fraction: float = 0.95, seconds: float = 3.0,
                 interval: float = 0.25, min_refaults: int = 64, read=memory_state, on_stop=None):
        self.what, self.hint = what, hint
        self.fraction, self.seconds, self.interval, self.min_refaults = fraction, seconds, interval, min_refaults
        self._read = read
        self._on_stop = on_stop or _stop_process
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "MemoryWatchdog":
        if self._read().limit is not None:
            self._thread = threading.Thread(target=self._watch, name="memory-watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> "MemoryWatchdog":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def check(self, state: MemoryState, previous: MemoryState, since: float | None, now: float) -> float | None:
        """One poll: when the thrashing spell began (None if not thrashing); calls the stop action
        once the spell has lasted ``seconds``."""
        refaults = state.refaults - previous.refaults
        thrashing = (state.limit is not None and state.usage is not None
                     and state.usage >= self.fraction * state.limit and refaults >= self.min_refaults)
        if not thrashing:
            return None
        since = now if since is None else since
        if now - since >= self.seconds:
            hint = (self.hint() if callable(self.hint) else self.hint) or ""
            self._on_stop(
                f"out of memory: {self.what} stopped, thrashing at the container's limit ({mib(state.usage)} of "
                f"{mib(state.limit)} in use, {refaults * 4096 / self.interval / MIB:,.0f} MiB/s of its pages read back "
                f"for {now - since:.0f} s){'; ' + hint if hint else ''}")
        return since

    def _watch(self) -> None:
        previous, since = self._read(), None
        while not self._halt.wait(self.interval):
            state = self._read()
            since = self.check(state, previous, since, time.monotonic())
            previous = state


def _stop_process(message: str) -> None:
    """Leave at once (from the watchdog thread): one line, exit status EXIT_MEMORY."""
    try:
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
    finally:
        os._exit(EXIT_MEMORY)
