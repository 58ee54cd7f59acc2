"""``njit`` with numba's on-disk cache, or without it where no cache folder is writable.

numba caches compiled kernels beside their module (``__pycache__``) or in the user's cache folder;
with neither writable (a read-only install run as a user with no writable HOME, e.g. ``docker
--user``) ``njit(cache=True)`` raises at import. There the kernels are compiled in each process
instead (seconds at start-up), with one warning that says how to get the cache back.
"""

from __future__ import annotations

import logging
import pickle

from numba import njit
from numba.core import caching

_LOG = logging.getLogger(__name__)
_warned = False
_KERNELS: list = []  # every dispatcher made here, for kernels_compiled()
# Memory LLVM keeps after compiling the kernels rather than loading them (measurements: docs/DECISIONS.md)
JIT_MEMORY = 32 * 2**20


class _StaleTolerantIndex(caching.IndexDataCacheFile):
    """numba's cache index, read as a miss where it cannot be unpickled. An index written by an older version of
    this code names the types of its signatures (e.g. a NamedTuple since renamed); numba unpickles them before it
    compares the source's timestamp, so a checkout updated in place would fail with AttributeError instead of
    recompiling."""

    def _load_index(self):
        try:
            return super()._load_index()
        except (AttributeError, ImportError, EOFError, pickle.UnpicklingError):
            return {}


def njit_cached(func=None, **options):
    """``numba.njit(cache=True, **options)``; as ``@njit_cached`` or ``@njit_cached(fastmath=...)``."""
    if func is None:
        return lambda f: njit_cached(f, **options)
    try:
        kernel = njit(cache=True, **options)(func)
        index = getattr(getattr(kernel, "_cache", None), "_cache_file", None)
        if type(index) is caching.IndexDataCacheFile:
            index.__class__ = _StaleTolerantIndex
        _KERNELS.append(kernel)
        return kernel
    except RuntimeError as exc:
        if "no locator available" not in str(exc):
            raise
    global _warned
    if not _warned:
        _warned = True
        _LOG.warning("numba cannot cache compiled kernels (no writable __pycache__ beside %s and no writable "
                     "cache folder under HOME): compiling them in every process instead; set NUMBA_CACHE_DIR to a "
                     "writable folder to keep them", func.__code__.co_filename)
    kernel = njit(**options)(func)
    _KERNELS.append(kernel)
    return kernel


def kernels_compiled() -> int:
    """How many kernel signatures this process compiled rather than loaded from numba's cache."""
    return sum(sum(kernel.stats.cache_misses.values()) for kernel in _KERNELS)  # no cache: every one misses
