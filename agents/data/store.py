"""On-disk feature store for a universe: per instrument, features, Triple Barrier labels and bar times
as .npy files, opened as read-only memory maps.

Why: pooled training over many instruments (and intraday histories) does not fit in RAM, and
featurising is the slow step. The store is built one instrument at a time (memory ~ the largest
instrument, never the total) and reused while nothing that decides its contents changed.

Layout: ``root/<key>/index.json`` plus one folder per instrument holding ``features.npy`` float32
(N, F), ``labels.npy`` float32 (N,) (1 = upper barrier first, 0 = not, NaN = no label), ``t1.npy``
int32 (N,) (bar position of the label's end, -1 = no label) and ``time.npy`` int64 (N,) (bar
timestamps, ns since the epoch). ``key`` is a SHA-256 over the store format, every symbol with its
file's ``attrs["sha256"]``, its bar count, first/last timestamp and a digest of the columns used, the
feature spec pinned to the frames' columns, the TBM config and the source of the modules that compute
features and labels (a fixed kernel must not be served stale results; features added at run time with
`register_feature` are not covered): any change gives a new folder.

Cache root (`default_cache_root`): ``$TBM_CACHE`` if set, else ``$XDG_CACHE_HOME/tbm-backtest/features``,
else ``~/.cache/tbm-backtest/features``. Old stores are never deleted automatically: remove folders
under the root by hand (every folder is self-contained; ``index.json`` says what it was built from).

Atomicity: a store is built in ``root/.<key>.tmp-<pid>-<random>`` and renamed to ``root/<key>`` when
complete, so a killed build never leaves a half store at the key; temporary folders of dead builds
(same host, process gone) are removed by the next call. Two processes building the same key at once
both build; the first rename wins and the other opens the winner's store.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import mmap
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from datafeeds.atomic import write_atomic
from datafeeds.process import pid_alive
from labeling import TBMConfig, triple_barrier_labels

from .features import FeatureSpec, compute_features

log = logging.getLogger(__name__)

STORE_FORMAT = 1  # bump when the layout or the meaning of a file changes: old stores get new keys
CHUNK_ROWS = 1 << 18  # rows written per write() call
INDEX_NAME = "index.json"
_OWNER_NAME = "owner.json"  # in a temporary build folder: who is building it (host, pid)
STALE_AFTER = 24 * 3600  # seconds without a change after which any temporary build folder is abandoned
_TMP_RE = re.compile(r"^\.(?P<key>[0-9a-f]{64})\.tmp-(?P<pid>\d+)-[0-9a-f]+$")
_LABEL_COLUMNS = ("high", "low", "close")  # what triple_barrier_labels reads
# file name -> (dtype, per-row shape: "F" is the number of features)
_ARRAYS = {
    "features": (np.float32, ("F",)),
    "labels": (np.float32, ()),
    "t1": (np.int32, ()),
    "time": (np.int64, ()),
}


def default_cache_root() -> Path:
    """Where stores live unless told otherwise: ``$TBM_CACHE``, else ``$XDG_CACHE_HOME/tbm-backtest/features``,
    else ``~/.cache/tbm-backtest/features``."""
    env = os.environ.get("TBM_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tbm-backtest" / "features"


def release_pages(*arrays: np.ndarray) -> int:
    """Drop the resident pages of read-only file mappings (np.memmap, mode "r") from this process.

    Reading a memmap maps its file pages into the process, and they count in its RSS until unmapped
    (on ext4 a single read fault maps a whole large folio, up to 2 MiB). ``MADV_DONTNEED`` unmaps
    them; the data stays in the page cache and the next read faults it back in. Other arrays are
    left alone (on an anonymous or copy-on-write mapping it would discard data). Returns the number
    of mappings released; a no-op where ``madvise`` is unavailable.
    """
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None:
        return 0
    done = set()
    for arr in arrays:
        if not isinstance(arr, np.memmap) or getattr(arr, "mode", None) != "r":
            continue
        root = arr
        while isinstance(root.base, np.ndarray):
            root = root.base
        mm = root.base
        if isinstance(mm, mmap.mmap) and not mm.closed and id(mm) not in done:
            mm.madvise(advice)
            done.add(id(mm))
    return len(done)


class FeatureStore:
    """A complete store folder, opened read-only. Build or reuse one with `FeatureStore.build_or_open`.

    ``symbols`` (input order), ``names`` (feature columns), ``spec`` (the pinned `FeatureSpec`),
    ``tbm`` (`TBMConfig`), ``path``, ``key``, ``index`` (the parsed index.json). Per symbol:
    `features`, `labels`, `t1`, `time` (read-only np.memmap, opened on first use) and `info`.
    """

    def __init__(self, path: Path, index: dict[str, Any]) -> None:
        self.path = Path(path)
        self.index = index
        self.key: str = index["key"]
        self.names: list[str] = list(index["names"])
        self.spec = FeatureSpec.from_dict(index["spec"])
        self.tbm = TBMConfig.from_dict(index["tbm"])
        self._info = {entry["symbol"]: entry for entry in index["symbols"]}
        self.symbols: list[str] = [entry["symbol"] for entry in index["symbols"]]
        self._maps: dict[tuple[str, str], np.memmap] = {}

    # ------------------------------------------------------------------ opening and building

    @classmethod
    def build_or_open(
        cls,
        frames: Mapping[str, pd.DataFrame],
        spec: FeatureSpec,
        tbm: TBMConfig,
        root: str | os.PathLike | None = None,
    ) -> FeatureStore:
        """The store for ``frames`` under ``root`` (default `default_cache_root`): reused when a
        complete one exists at its key, else built instrument by instrument and moved into place.

        ``frames`` maps symbol -> OHLCV frame from `datafeeds` (each needs ``attrs["sha256"]``); it may be
        a lazy Mapping that loads a frame on access: frames are taken one at a time and dropped
        after use (twice when building: once for the key, once for the arrays).
        """
        root = Path(default_cache_root() if root is None else root).expanduser()
        pinned, fingerprints = _fingerprint_universe(frames, spec, tbm)
        key = store_key(fingerprints, pinned, tbm)
        final = root / key
        _remove_stale_temps(root)
        if (final / INDEX_NAME).exists():
            problem = _check_complete(final, key)
            if problem is None:
                log.info("reusing feature store %s (%d instruments)", final, len(fingerprints))
                return cls(final, _read_index(final))
            log.warning("feature store %s is incomplete (%s): rebuilding it", final, problem)
        return cls._build(frames, pinned, tbm, fingerprints, root, key)

    @classmethod
    def open(cls, path: str | os.PathLike) -> FeatureStore:
        """Open an existing store folder (``root/<key>``); ValueError if it is not a complete store."""
        path = Path(path).expanduser()
        if not (path / INDEX_NAME).is_file():
            raise ValueError(f"{path} is not a feature store: it has no {INDEX_NAME}")
        index = _read_index(path)
        problem = _check_complete(path, index.get("key", ""))
        if problem is not None:
            raise ValueError(f"feature store {path} is incomplete: {problem}; delete it and build it again")
        return cls(path, index)

    @classmethod
    def _build(cls, frames, pinned: FeatureSpec, tbm: TBMConfig, fingerprints: list[dict], root: Path,
               key: str) -> FeatureStore:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{key}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        final = root / key
        t0 = time.perf_counter()
        try:
            (tmp / _OWNER_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
            log.info("building feature store %s (%d instruments)", final, len(fingerprints))
            entries = []
            for i, fp in enumerate(fingerprints):
                sym = fp["symbol"]
                folder = f"{i:04d}_{re.sub(r'[^A-Za-z0-9._-]', '_', sym)[:40]}"
                (tmp / folder).mkdir()
                df = frames[sym]
                _check_same_frame(sym, df, fp)
                entries.append(_build_symbol(sym, df, pinned, tbm, tmp / folder) | {
                    "symbol": sym, "dir": folder, "source": str(df.attrs.get("source", "")),
                    "sha256": fp["sha256"], "data_sha256": fp["data_sha256"], "warmup": pinned.warmup,
                })
                del df  # a lazy mapping's frame can go before the next one loads
            seconds = time.perf_counter() - t0
            index = {
                "format": STORE_FORMAT, "key": key, "names": list(pinned.columns), "spec": pinned.to_dict(),
                "tbm": tbm.to_dict(), "code": code_digest(), "symbols": entries, "built_seconds": round(seconds, 3),
                "created": pd.Timestamp.now(tz="UTC").isoformat(),
            }
            (tmp / _OWNER_NAME).unlink()
            write_atomic(tmp / INDEX_NAME, (json.dumps(index, indent=1) + "\n").encode())
            _fsync_dir(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                # another process finished the same key first (the target is a non-empty folder), or a
                # broken store sits there: keep a complete one, else move the broken one aside
                if not final.exists():
                    raise
                if _check_complete(final, key) is None:
                    log.info("feature store %s was built by another process meanwhile: using it", final)
                    shutil.rmtree(tmp, ignore_errors=True)
                    return cls(final, _read_index(final))
                aside = root / f".{key}.broken-{os.getpid()}-{secrets.token_hex(4)}"
                os.rename(final, aside)
                shutil.rmtree(aside, ignore_errors=True)
                os.rename(tmp, final)
            _fsync_dir(root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        n_bars = sum(e["n_bars"] for e in entries)
        log.info("built feature store %s: %d bars in %.1f s (%.0f bars/s)", final, n_bars, seconds,
                 n_bars / max(seconds, 1e-9))
        return cls(final, index)

    # ------------------------------------------------------------------ access

    def _array(self, sym: str, name: str) -> np.memmap:
        info = self.info(sym)
        got = self._maps.get((sym, name))
        if got is None:
            got = np.load(self.path / info["dir"] / f"{name}.npy", mmap_mode="r")
            self._maps[(sym, name)] = got
        return got

    def info(self, sym: str) -> dict[str, Any]:
        """The index entry of ``sym``: source, sha256, data_sha256, n_bars, first, last, warmup, n_labelled, dir."""
        try:
            return self._info[sym]
        except KeyError:
            raise ValueError(f"symbol {sym!r} is not in the feature store {self.path}; "
                             f"it holds {self.symbols}") from None

    def features(self, sym: str) -> np.memmap:
        """(N, F) float32 features of ``sym`` (NaN during the first ``spec.warmup`` bars at most)."""
        return self._array(sym, "features")

    def labels(self, sym: str) -> np.memmap:
        """(N,) float32 Triple Barrier labels: 1.0 upper barrier first, 0.0 otherwise, NaN no label."""
        return self._array(sym, "labels")

    def t1(self, sym: str) -> np.memmap:
        """(N,) int32 bar position where each bar's label ends (-1: no label); for purging."""
        return self._array(sym, "t1")

    def time(self, sym: str) -> np.memmap:
        """(N,) int64 bar timestamps, ns since 1970 (tz-naive as loaded); for calendar cuts."""
        return self._array(sym, "time")

    @property
    def n_bars(self) -> int:
        """Bars over all instruments."""
        return sum(self._info[s]["n_bars"] for s in self.symbols)

    def release(self) -> int:
        """Unmap the pages read so far from every array opened (see `release_pages`); RSS drops."""
        return release_pages(*self._maps.values())

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, {len(self.symbols)} instruments, {self.n_bars} bars)"


def store_key(fingerprints: list[dict], pinned: FeatureSpec, tbm: TBMConfig) -> str:
    """Hex SHA-256 naming a store: the format, each instrument's fingerprint (in order), the pinned spec,
    TBM and `code_digest`."""
    payload = {"format": STORE_FORMAT, "symbols": fingerprints, "spec": pinned.to_dict(), "tbm": tbm.to_dict(),
               "code": code_digest()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_CODE_MODULES = ("agents.data.features", "agents.data._feature_kernels", "labeling.tbm", "labeling.average_true_range")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 of the source files that compute features and labels (any edit invalidates stores)."""
    digest = hashlib.sha256()
    for name in _CODE_MODULES:
        digest.update(name.encode() + b"\0" + Path(importlib.import_module(name).__file__).read_bytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------- building blocks


def _fingerprint_universe(frames, spec, tbm) -> tuple[FeatureSpec, list[dict]]:
    """The spec pinned to the frames' columns and one fingerprint per frame; checks every frame up front."""
    if not isinstance(frames, Mapping) or len(frames) == 0:
        raise ValueError("frames must be a non-empty mapping of symbol -> OHLCV DataFrame (datafeeds.load_universe)")
    if not isinstance(spec, FeatureSpec):
        raise ValueError(f"spec must be a FeatureSpec, got {type(spec).__name__}")
    if not isinstance(tbm, TBMConfig):
        raise ValueError(f"tbm must be a TBMConfig, got {type(tbm).__name__}")
    pinned, pinned_by, fingerprints = None, None, []
    for sym in frames:
        if not isinstance(sym, str) or not sym:
            raise ValueError(f"symbols must be non-empty strings, got {sym!r}")
        df = frames[sym]
        this = _check_frame(sym, df, spec)
        if pinned is None:
            pinned, pinned_by = this, sym
        elif this != pinned:
            raise ValueError(
                f"the feature spec resolves differently for {pinned_by!r} and {sym!r} (e.g. obi source 'auto' "
                "picks the order book where bid_size/ask_size exist): pin it for the universe, e.g. "
                "FeatureConfig('obi', {'source': 'bvc'})"
            )
        fingerprints.append(_fingerprint(sym, df, pinned))
        del df
    return pinned, fingerprints


def _check_frame(sym: str, df, spec: FeatureSpec) -> FeatureSpec:
    """The spec pinned to ``df``'s columns, after checking what the store needs of the frame."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{sym}: expected a pandas DataFrame, got {type(df).__name__}")
    if not df.attrs.get("sha256"):
        raise ValueError(
            f"{sym}: the frame has no attrs['sha256'] (the hash of its file, which keys the feature cache); "
            "load it with datafeeds.load_ohlcv or datafeeds.load_universe"
        )
    if not isinstance(df.index, pd.DatetimeIndex):
        raise ValueError(f"{sym}: the frame needs a DatetimeIndex, got {type(df.index).__name__}")
    if len(df) == 0:
        raise ValueError(f"{sym}: the frame has no bars")
    if len(df) >= 2**31:
        raise ValueError(f"{sym}: {len(df)} bars exceed the store's int32 bar positions; split the instrument")
    pinned = spec.pinned(df.columns)
    missing = [c for c in dict.fromkeys(pinned.required_columns + _LABEL_COLUMNS) if c not in df.columns]
    if missing:
        raise ValueError(f"{sym}: the frame lacks column(s) {missing} needed by the features or the labels")
    return pinned


def _fingerprint(sym: str, df: pd.DataFrame, pinned: FeatureSpec) -> dict:
    """What identifies a frame's contribution: its file hash, shape, span and a digest of the data read.

    The file hash alone would not do: the same file loaded with other start/end dates, or a frame
    edited after loading, keeps it. The digest covers the timestamps and every column the features
    and labels read (cheap next to a build; measurements: docs/DECISIONS.md).
    """
    ts = _ns(df.index)
    digest = hashlib.sha256(ts.data)
    for col in sorted(set(pinned.required_columns) | set(_LABEL_COLUMNS)):
        digest.update(col.encode() + b"\0")
        digest.update(np.ascontiguousarray(df[col].to_numpy(dtype=np.float64)).data)
    return {
        "symbol": sym, "sha256": str(df.attrs["sha256"]), "n_bars": len(df),
        "first": int(ts[0]), "last": int(ts[-1]), "data_sha256": digest.hexdigest(),
    }


def _check_same_frame(sym: str, df, fp: dict) -> None:
    # a lazy mapping is read twice: the frame built must be the one the key was computed from
    if (not isinstance(df, pd.DataFrame) or len(df) != fp["n_bars"] or str(df.attrs.get("sha256")) != fp["sha256"]
            or int(_ns(df.index[:1])[0]) != fp["first"] or int(_ns(df.index[-1:])[0]) != fp["last"]):
        raise ValueError(f"{sym}: the frame changed between computing the store key and building; load it once")


def _ns(index: pd.DatetimeIndex) -> np.ndarray:
    """int64 nanoseconds of a DatetimeIndex, whatever its unit (pandas may hold us or s)."""
    return np.ascontiguousarray(index.as_unit("ns").asi8, dtype=np.int64)


def _build_symbol(sym: str, df: pd.DataFrame, pinned: FeatureSpec, tbm: TBMConfig, folder: Path) -> dict:
    """Features, per-bar labels, label ends and times of one instrument, written into ``folder``."""
    t0 = time.perf_counter()
    try:
        x, _ = compute_features(df, pinned)
        labels = triple_barrier_labels(df, config=tbm)
    except ValueError as exc:
        raise ValueError(f"{sym}: {exc}") from exc
    ts = _ns(df.index)
    n = len(df)
    # label events and their ends are bars of this strictly increasing index (triple_barrier_labels checked
    # it), so searchsorted finds their positions without the hash table get_indexer would build
    pos = np.searchsorted(ts, _ns(labels.index))
    end = np.searchsorted(ts, _ns(pd.DatetimeIndex(labels["t1"])))
    y = np.full(n, np.nan, dtype=np.float32)
    y[pos] = labels["label"].to_numpy(np.float32)
    t1 = np.full(n, -1, dtype=np.int32)
    t1[pos] = end
    del labels, pos, end
    for name, arr in (("features", x), ("labels", y), ("t1", t1), ("time", ts)):
        _write_npy(folder / f"{name}.npy", arr)
    n_labelled = int(np.count_nonzero(~np.isnan(y)))
    log.debug("%s: %d bars, %d labelled, %.2f s", sym, n, n_labelled, time.perf_counter() - t0)
    return {
        "n_bars": n, "n_labelled": n_labelled,
        "first": df.index[0].isoformat(), "last": df.index[-1].isoformat(),
    }


def _write_npy(path: Path, array: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> None:
    """Write ``array`` as a .npy file, ``chunk_rows`` rows per write.

    open_memmap lays out the header and the file's full size; the rows then go through plain
    writes rather than the mapping, whose dirty pages would stay resident in this process (a
    second full-size copy in its RSS) until unmapped.
    """
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=array.dtype, shape=array.shape)
    offset = mm.offset
    del mm
    array = np.ascontiguousarray(array)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        for lo in range(0, len(array), chunk_rows):
            fh.write(array[lo : lo + chunk_rows].data)  # a contiguous row block: no copy
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_index(path: Path) -> dict:
    try:
        return json.loads((path / INDEX_NAME).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path / INDEX_NAME}: {exc}") from None


def _check_complete(path: Path, key: str) -> str | None:
    """None when ``path`` holds a complete store with ``key``, else what is wrong (for the log)."""
    try:
        index = _read_index(path)
    except ValueError as exc:
        return str(exc)
    if index.get("format") != STORE_FORMAT:
        return f"format {index.get('format')!r}, expected {STORE_FORMAT}"
    if index.get("key") != key:
        return f"its index names key {index.get('key')!r}"
    try:
        n_features = len(index["names"])
        for entry in index["symbols"]:
            n = int(entry["n_bars"])
            for name, (dtype, row) in _ARRAYS.items():
                shape = (n, *(n_features for _ in row))
                problem = _check_npy(path / entry["dir"] / f"{name}.npy", np.dtype(dtype), shape)
                if problem:
                    return problem
    except (KeyError, TypeError, ValueError) as exc:
        return f"malformed index ({exc!r})"
    return None


def _check_npy(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> str | None:
    """None when ``path`` is a .npy file of ``dtype`` and ``shape`` with all its bytes; reads the header only."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            got_shape, fortran, got_dtype = (
                np.lib.format.read_array_header_1_0(fh) if version == (1, 0)
                else np.lib.format.read_array_header_2_0(fh)
            )
            offset = fh.tell()
        size = path.stat().st_size
    except (OSError, ValueError) as exc:
        return f"{path.name} in {path.parent.name}: {exc}"
    if got_shape != shape or got_dtype != dtype or fortran:
        return f"{path.parent.name}/{path.name} holds {got_dtype} {got_shape}, expected {dtype} {shape}"
    if size != offset + dtype.itemsize * int(np.prod(shape)):
        return (f"{path.parent.name}/{path.name} has {size} bytes, "
                f"expected {offset + dtype.itemsize * int(np.prod(shape))}")
    return None


def _remove_stale_temps(root: Path, now: float | None = None) -> None:
    """Delete temporary build folders left by builds that died.

    Stale: the builder ran on this host and its process is gone, or nothing in the folder changed for
    `STALE_AFTER` seconds (a container restarted with another hostname, or the same pid, cannot be
    judged by its pid). Others are left alone: a live build here, or one on another host sharing the folder.
    """
    try:
        candidates = [p for p in root.iterdir() if _TMP_RE.match(p.name)]
    except OSError:
        return
    host, now = socket.gethostname(), time.time() if now is None else now
    for tmp in candidates:
        pid = int(_TMP_RE.match(tmp.name)["pid"])
        try:
            owner = json.loads((tmp / _OWNER_NAME).read_text())
        except (OSError, ValueError):
            # owner.json is written right after mkdir and removed just before the index: without it,
            # the folder is either brand new, or complete and about to be renamed. Judge by the pid alone.
            owner = {"host": host, "pid": pid}
        dead = owner.get("host") == host and not pid_alive(int(owner.get("pid", pid)))
        if dead or now - _newest_mtime(tmp) > STALE_AFTER:
            log.info("removing %s, left by a build that died", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def _newest_mtime(folder: Path) -> float:
    newest = 0.0
    for here, _, files in os.walk(folder):
        for name in (here, *(os.path.join(here, f) for f in files)):
            try:
                newest = max(newest, os.stat(name).st_mtime)
            except OSError:
                pass
    return newest
