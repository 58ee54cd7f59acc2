"""Fixed-length windows over many instruments at once, never crossing from one instrument into the next.

Memory is O(1) in the number of bars: windows are named by a global id g in [0, len) that maps to
(instrument, end bar) through the cumulative counts of a few (instrument, lo, hi) ranges; no
per-window array is built, and a shuffled epoch order comes from `shuffled_ids`, a keyed permutation
computed block by block instead of a stored permutation of every window.

Reading windows: a feature or label array that is a read-only np.memmap (e.g. from
`agents.data.store.FeatureStore`) is read with pread(2) straight into the batch, not through its
mapping. Reading a mapping makes its pages resident in this process: on ext4 one read fault maps a
whole large folio (up to 2 MiB), so RSS would grow with the data (measurements: docs/DECISIONS.md).
pread copies from the page cache (reclaimable, not in RSS). In-memory arrays use the strided view of
`LazySequenceDataset`.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from labeling.jit import njit_cached
from numpy.lib.stride_tricks import sliding_window_view
from torch.utils.data import Dataset, Sampler

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# A keyed permutation of range(n), computed on the fly
# ---------------------------------------------------------------------------------------------

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_ROUNDS = 6  # Luby-Rackoff: 4 rounds of a random function already give a pseudo-random permutation
_C1 = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64's multipliers
_C2 = np.uint64(0x94D049BB133111EB)
_BLOCK = 1 << 16  # ids computed per shuffled_ids call when iterating batches


def _mix64(z: int) -> int:
    """splitmix64's finaliser on a Python int (a bijection of 64-bit words)."""
    z &= _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _round_keys(seed: int) -> list[np.uint64]:
    """The Feistel round keys: splitmix64's output sequence started at ``seed``."""
    state = seed & _M64
    keys = []
    for _ in range(_ROUNDS):
        state = (state + _GOLDEN) & _M64
        keys.append(np.uint64(_mix64(state)))
    return keys


def _encrypt(x: np.ndarray, bits: int, keys: list[np.uint64]) -> np.ndarray:
    """One pass of the Feistel network over [0, 2**bits): a bijection of uint64 values below 2**bits.

    The state is split into a high part of ``a`` bits and a low part of ``b = bits - a`` bits; a round maps
    (hi, lo) -> (lo, hi ^ F(lo)), so the widths swap every round, which keeps each round (hence the
    network) a bijection for odd ``bits`` too. F(lo) is the top ``a`` bits of a multiply-xorshift hash
    of ``lo ^ key`` (splitmix64's finaliser: the multiplications carry every input bit upward).
    """
    a, b = bits // 2, bits - bits // 2
    for key in keys:
        hi = x >> np.uint64(b)
        lo = x & np.uint64((1 << b) - 1)
        if a:
            h = lo ^ key
            h ^= h >> np.uint64(30)
            h *= _C1  # uint64 arrays wrap modulo 2**64, silently
            h ^= h >> np.uint64(27)
            h *= _C2
            h ^= h >> np.uint64(31)
            hi ^= h >> np.uint64(64 - a)
        x = (lo << np.uint64(a)) | hi
        a, b = b, a
    return x


def _check_count(value, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def shuffled_ids(n: int, seed: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Positions ``start .. stop-1`` of a pseudo-random permutation of ``range(n)``, as int64.

    The permutation is a keyed Feistel network (6 rounds, keys from splitmix64 seeded with ``seed``)
    over the smallest power-of-two domain >= n, with cycle-walking: an output >= n is encrypted again
    until it falls below n, which keeps the map a bijection of range(n). Nothing of size n is built,
    so a block costs O(stop - start) whatever n is; the result depends on (n, seed) only, not on how
    the range is cut into blocks nor on the machine.
    """
    n = _check_count(n, "n")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    stop = n if stop is None else stop
    start = _check_count(start, "start")
    stop = _check_count(stop, "stop")
    if not start <= stop <= n:
        raise ValueError(f"need 0 <= start <= stop <= n, got start={start}, stop={stop}, n={n}")
    if n <= 1:
        return np.arange(start, stop, dtype=np.int64)
    bits = (n - 1).bit_length()  # 2**bits >= n > 2**(bits-1): at most ~2 passes per id on average
    keys = _round_keys(int(seed))
    out = _encrypt(np.arange(start, stop, dtype=np.uint64), bits, keys)
    todo = np.flatnonzero(out >= np.uint64(n))
    while todo.size:  # cycle-walking; ends because each id's cycle passes through an id < n
        again = _encrypt(out[todo], bits, keys)
        out[todo] = again
        todo = todo[again >= np.uint64(n)]
    return out.astype(np.int64)


def epoch_seed(seed: int, epoch: int) -> int:
    """The permutation key of one epoch: a 64-bit hash of (seed, epoch), so epochs differ and replay exactly."""
    return _mix64(_mix64(int(seed) + _GOLDEN) ^ (int(epoch) & _M64))


class PooledBatchSampler(Sampler):
    """Blocks of window ids for one epoch, each an int64 array of up to ``batch_size`` ids.

    Shuffled: positions of `shuffled_ids` (key `epoch_seed(seed, epoch)`), computed 64K at a time.
    For worker processes, pass it as the sampler of a DataLoader with ``batch_size=None``: each
    block is then one ``dataset[ids]`` call, i.e. one `PooledSequenceDataset.batch`.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                 drop_last: bool = False) -> None:
        super().__init__()
        self.n = _check_count(n, "n")
        self.batch_size = _check_count(batch_size, "batch_size", 1)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.key = epoch_seed(seed, epoch)

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        bs = self.batch_size
        stop = self.n - self.n % bs if self.drop_last else self.n
        block = max(bs, _BLOCK // bs * bs)  # whole batches per block
        for lo in range(0, stop, block):
            hi = min(lo + block, stop)
            ids = shuffled_ids(self.n, self.key, lo, hi) if self.shuffle else np.arange(lo, hi, dtype=np.int64)
            for b in range(0, hi - lo, bs):
                yield ids[b : b + bs]


# ---------------------------------------------------------------------------------------------
# Reading windows from files without mapping them
# ---------------------------------------------------------------------------------------------


def _libc_pread():
    """libc's pread as a ctypes function (buffer passed as an address), or None where there is none."""
    if os.name != "posix" or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    try:
        fn = ctypes.CDLL(None).pread
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_ssize_t
    fn.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int64]
    return fn


_PREAD = _libc_pread()


@njit_cached
def _pread_blocks_nb(pread, fds, offsets, nbytes, dst, dst_stride, dst_slots):
    """For each k, read ``nbytes`` at byte ``offsets[k]`` of file descriptor ``fds[k]`` into the address
    ``dst + dst_slots[k] * dst_stride``. Returns -1, or the first k whose read came back short.

    ``pread`` is passed in rather than referenced as a global, so numba can cache the compiled code.
    """
    for k in range(fds.shape[0]):
        got = pread(fds[k], dst + dst_slots[k] * dst_stride, nbytes, offsets[k])
        if got != nbytes:
            return k
    return -1


def _file_extent(arr: np.ndarray) -> tuple[str, int] | None:
    """(file name, byte offset of ``arr[0]``) when ``arr`` is a C-contiguous view of a read-only file
    mapping (np.memmap mode "r", or a slice of one); else None."""
    if not isinstance(arr, np.memmap) or getattr(arr, "mode", None) != "r" or not arr.flags.c_contiguous:
        return None
    root = arr
    while isinstance(root.base, np.ndarray):
        root = root.base
    if not isinstance(root.base, mmap.mmap) or root.filename is None:
        return None
    return str(root.filename), int(root.offset) + (arr.ctypes.data - root.ctypes.data)


class _Source:
    """One array of one instrument: in memory, or a file region read with pread."""

    __slots__ = ("array", "file", "offset", "row_bytes", "windows")

    def __init__(self, array: np.ndarray, seq_len: int | None, use_pread: bool) -> None:
        self.array = array
        extent = _file_extent(array) if use_pread else None
        self.file, self.offset = extent if extent else (None, 0)
        self.row_bytes = array.strides[0] if array.ndim else 0
        # (N-L+1, F, L) strided view, as LazySequenceDataset: windows[s] is the window starting at bar s
        self.windows = (sliding_window_view(array, seq_len, axis=0)
                        if seq_len is not None and self.file is None and len(array) >= seq_len else None)


class PooledSequenceDataset(Dataset):
    """Windows of ``seq_len`` bars over many instruments; a window never leaves its instrument.

    features: one (N_i, F) float32 array per instrument (np.memmap welcome; never copied).
    labels:   one (N_i,) float array per instrument (float32 kept by reference, other dtypes converted).
    seq_len:  L, bars per window.
    ranges:   (instrument, lo, hi): every end bar t in [lo, hi) of that instrument is one window, covering
              its bars t-L+1 .. t; needs L-1 <= lo <= hi <= N_i, ranges of one instrument may not overlap.
              Global ids follow the ranges in the order given.
    mean, std: normalisation ``(x - mean) / std`` applied in float32 when a batch is gathered: (F,) for
              all instruments, or (n_instruments, F) per instrument; None for none. Equal to normalising
              the arrays in float32 first and gathering after.

    `batch(ids)` gives X (B, L, F) float32 and y (B,) float32 tensors; ``dataset[ids]`` is the same for an
    id array (``dataset[i]`` one window), so a DataLoader with ``sampler=PooledBatchSampler(...)``
    and ``batch_size=None`` gathers whole batches in its workers.
    """

    def __init__(
        self,
        features: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        seq_len: int,
        ranges: Sequence[tuple[int, int, int]] | np.ndarray,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
    ) -> None:
        features, labels = list(features), list(labels)
        if not features:
            raise ValueError("features must hold one (N, F) array per instrument, got none")
        if len(labels) != len(features):
            raise ValueError(f"got {len(features)} feature arrays but {len(labels)} label arrays; "
                             "need one of each per instrument")
        self.seq_len = _check_count(seq_len, "seq_len", 1)
        n_features = None
        for i, (x, y) in enumerate(zip(features, labels)):
            if not isinstance(x, np.ndarray) or x.ndim != 2 or x.dtype != np.float32 or x.shape[1] < 1:
                raise ValueError(
                    f"features[{i}] must be a 2-D float32 (N, F) array, got "
                    f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}; "
                    "convert once with astype(np.float32)"
                )
            n_features = x.shape[1] if n_features is None else n_features
            if x.shape[1] != n_features:
                raise ValueError(f"features[{i}] has {x.shape[1]} columns, features[0] has {n_features}")
            y = np.asarray(y) if not isinstance(y, np.ndarray) else y
            if y.shape != (x.shape[0],) or y.dtype.kind not in "fiub":
                raise ValueError(f"labels[{i}] must be a numeric ({x.shape[0]},) array to match features[{i}], "
                                 f"got {y.dtype} {y.shape}")
            labels[i] = y if y.dtype == np.float32 else y.astype(np.float32)
        self.n_features = int(n_features)
        self._ranges = _validate_ranges(ranges, [x.shape[0] for x in features], self.seq_len)
        counts = self._ranges[:, 2] - self._ranges[:, 1]
        self._cum = np.cumsum(counts)  # windows up to and including range r
        self._first = self._cum - counts  # global id of range r's first window
        self._mean, self._std = _validate_norm(mean, std, len(features), self.n_features)
        self._features, self._labels = features, labels
        self._open()

    def _open(self) -> None:
        use_pread = _PREAD is not None
        self._fsrc = [_Source(x, self.seq_len, use_pread) for x in self._features]
        self._lsrc = [_Source(y, None, use_pread) for y in self._labels]
        self._fds: dict[str, int] = {}
        mapped = []
        for src in (*self._fsrc, *self._lsrc):
            if src.file is not None and src.file not in self._fds:
                self._fds[src.file] = os.open(src.file, os.O_RDONLY)
            elif src.file is None and isinstance(src.array, np.memmap):
                mapped.append(src.array.filename)
        if mapped:
            log.warning("%d array(s) mapped from files (first: %s) are read through their mappings (not C-contiguous "
                        "read-only memmaps, or no pread here): RSS grows with the pages read", len(mapped), mapped[0])
        # per instrument: file descriptor (-1: in memory), byte offset of row 0, bytes per row; so that
        # one kernel call reads a whole batch's file-backed windows whatever instruments they come from
        self._io = {
            kind: tuple(np.array(v, dtype=np.int64) for v in zip(*[
                (self._fds[s.file], s.offset, s.row_bytes) if s.file is not None else (-1, 0, 0) for s in srcs]))
            for kind, srcs in (("features", self._fsrc), ("labels", self._lsrc))
        }

    def close(self) -> None:
        """Close the files opened for reading; the dataset cannot read from them afterwards."""
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = {}
        self._io = None  # the descriptor numbers may be reused for other files: never read them again

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict:
        # Pickled for spawned DataLoader workers: a file-backed array travels as (file, offset, dtype,
        # shape), never as its data (pickling an np.memmap writes out every byte); views and file
        # descriptors are rebuilt on arrival.
        state = {k: v for k, v in self.__dict__.items() if k not in ("_fsrc", "_lsrc", "_fds", "_io")}
        state["_features"] = [_portable(x) for x in self._features]
        state["_labels"] = [_portable(y) for y in self._labels]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._features = [_unportable(x) for x in self._features]
        self._labels = [_unportable(y) for y in self._labels]
        self._open()

    # ----------------------------------------------------------------- ids

    def __len__(self) -> int:
        return int(self._cum[-1]) if len(self._cum) else 0

    @property
    def n_instruments(self) -> int:
        return len(self._features)

    @property
    def ranges(self) -> np.ndarray:
        """(R, 3) int64 (instrument, lo, hi) window-end ranges, read-only, in id order."""
        view = self._ranges.view()
        view.flags.writeable = False
        return view

    @property
    def feature_arrays(self) -> list[np.ndarray]:
        """The per-instrument (N_i, F) float32 arrays, as given (not normalised)."""
        return list(self._features)

    @property
    def label_arrays(self) -> list[np.ndarray]:
        """The per-instrument (N_i,) float32 label arrays."""
        return list(self._labels)

    @property
    def normalisation(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean, std) applied at gather time ((F,) or (n_instruments, F) float32), or None."""
        return None if self._mean is None else (self._mean, self._std)

    def ends(self, ids: np.ndarray | Sequence[int] | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(instrument, end bar) of each window id, as two int64 arrays."""
        return self._locate(self._check_ids(ids))

    def ids_of(self, instrument: int) -> np.ndarray:
        """Every window id of ``instrument`` in id order (int64; O(that instrument's windows))."""
        if isinstance(instrument, bool) or not isinstance(instrument, (int, np.integer)) or \
                not 0 <= instrument < self.n_instruments:
            raise ValueError(f"instrument must lie in [0, {self.n_instruments}), got {instrument}")
        rows = np.flatnonzero(self._ranges[:, 0] == instrument)
        parts = [np.arange(self._first[r], self._cum[r], dtype=np.int64) for r in rows]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def _check_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise ValueError(f"ids must be a 1-D integer sequence, got shape {ids.shape} dtype {ids.dtype}")
        n = len(self)
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise IndexError(f"window ids must lie in [0, {n}), got min {ids.min()} max {ids.max()}")
        return ids.astype(np.int64, copy=False)

    def _locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = np.searchsorted(self._cum, ids, side="right")  # first range whose cumulative count exceeds the id
        return self._ranges[r, 0], self._ranges[r, 1] + (ids - self._first[r])

    # ----------------------------------------------------------------- gathering

    def __getitem__(self, ids) -> tuple[torch.Tensor, torch.Tensor]:
        """``dataset[i]``: one window, X (L, F) and y (); ``dataset[id_array]``: `batch`."""
        if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
            x, y = self.batch(np.array([ids]))
            return x[0], y[0]
        return self.batch(ids)

    def batch(self, ids: np.ndarray | Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather windows ``ids``: X (B, L, F) float32, normalised, and y (B,) float32. Copies only the batch."""
        ids = self._check_ids(ids)
        inst, end = self._locate(ids)
        L, F = self.seq_len, self.n_features
        x = np.empty((len(ids), L, F), dtype=np.float32)
        y = np.empty(len(ids), dtype=np.float32)
        if len(ids):
            self._read("features", self._fsrc, inst, end - (L - 1), x)
            self._read("labels", self._lsrc, inst, end, y)
            if self._mean is not None:
                if self._mean.ndim == 1:
                    x -= self._mean
                    x /= self._std
                else:
                    x -= self._mean[inst][:, None, :]
                    x /= self._std[inst][:, None, :]
        return torch.from_numpy(x), torch.from_numpy(y)

    def _read(self, kind: str, sources: list[_Source], inst: np.ndarray, first: np.ndarray, out: np.ndarray) -> None:
        """Rows ``first[k] ..`` of instrument ``inst[k]``'s array (a window, or one label) into ``out[k]``."""
        if self._io is None:
            raise ValueError("the dataset was closed; build a new one to read windows")
        fds, offsets, row_bytes = self._io[kind]
        fd = fds[inst]
        on_disk = fd >= 0
        if not on_disk.all():  # in-memory instruments: gather per instrument from the strided view
            slots_mem = np.flatnonzero(~on_disk)
            order = slots_mem[np.argsort(inst[slots_mem], kind="stable")]
            cuts = np.flatnonzero(np.diff(inst[order])) + 1
            for slots in np.split(order, cuts):
                src = sources[int(inst[slots[0]])]
                if src.windows is not None:
                    out[slots] = src.windows[first[slots]].transpose(0, 2, 1)  # (b, F, L) -> (b, L, F)
                else:
                    out[slots] = src.array[first[slots]]
            if not on_disk.any():
                return
        slots = np.flatnonzero(on_disk)
        fd, where = fd[slots], offsets[inst[slots]] + first[slots] * row_bytes[inst[slots]]
        nbytes, dst, stride = out.strides[0], out.ctypes.data, out.strides[0]
        k = 0
        while k < len(slots):
            bad = _pread_blocks_nb(_PREAD, fd[k:], where[k:], nbytes, dst, stride, slots[k:])
            if bad < 0:
                return
            k += int(bad)
            # redo the failed read in Python: a real error raises OSError with its errno; an interrupted
            # read succeeds; a short one means the file is shorter than the array it should hold
            data = os.pread(int(fd[k]), nbytes, int(where[k]))
            if len(data) != nbytes:
                name = next(f for f, d in self._fds.items() if d == fd[k])
                raise OSError(f"{name}: read {len(data)} of {nbytes} bytes at offset {where[k]}; "
                              "the file is shorter than its array (truncated or replaced?)")
            ctypes.memmove(dst + int(slots[k]) * stride, data, nbytes)
            k += 1

    def iter_batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                     drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (X, y) batches covering every window once (in the main process).

        Shuffled orders depend on (seed, epoch) only (`PooledBatchSampler`): a resumed run replays them.
        """
        for ids in PooledBatchSampler(len(self), batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                                      drop_last=drop_last):
            yield self.batch(ids)


def _validate_ranges(ranges, n_rows: list[int], seq_len: int) -> np.ndarray:
    """(R, 3) int64 copy of ``ranges`` after checking each; ValueError naming the first bad one."""
    arr = np.array(ranges, dtype=object if not isinstance(ranges, np.ndarray) else None)
    if arr.size == 0:
        return np.empty((0, 3), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"ranges must be (instrument, lo, hi) triples, got shape {arr.shape}")
    for row in arr:
        for v in row:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"ranges must hold integers, got {tuple(row)}")
    arr = arr.astype(np.int64)
    for r, (i, lo, hi) in enumerate(arr.tolist()):
        if not 0 <= i < len(n_rows):
            raise ValueError(f"ranges[{r}] = {(i, lo, hi)}: instrument {i} is not in [0, {len(n_rows)})")
        if lo < seq_len - 1:
            raise ValueError(f"ranges[{r}] = {(i, lo, hi)}: lo < seq_len-1 = {seq_len - 1}, so a window would "
                             "start before the instrument's first bar")
        if hi > n_rows[i]:
            raise ValueError(f"ranges[{r}] = {(i, lo, hi)}: hi > {n_rows[i]}, the bars of instrument {i}")
        if lo > hi:
            raise ValueError(f"ranges[{r}] = {(i, lo, hi)}: lo > hi")
    s = arr[arr[:, 2] > arr[:, 1]]  # empty ranges hold no window, so they cannot overlap
    s = s[np.lexsort((s[:, 1], s[:, 0]))]
    # sorted by (instrument, lo), the ranges are disjoint iff each one ends before the next one starts
    clash = np.flatnonzero((s[1:, 0] == s[:-1, 0]) & (s[1:, 1] < s[:-1, 2]))
    if clash.size:
        a, b = s[clash[0]].tolist(), s[clash[0] + 1].tolist()
        raise ValueError(f"ranges {tuple(a)} and {tuple(b)} overlap: each window must appear once")
    return arr


def _validate_norm(mean, std, n_instruments: int, n_features: int):
    """(mean, std) as float32 arrays of shape (F,) or (n_instruments, F), or (None, None)."""
    if mean is None and std is None:
        return None, None
    if mean is None or std is None:
        raise ValueError("pass both mean and std, or neither")
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    if mean.shape != std.shape or mean.shape not in ((n_features,), (n_instruments, n_features)):
        raise ValueError(f"mean and std must both have shape ({n_features},) (pooled) or ({n_instruments}, "
                         f"{n_features}) (per instrument), got {mean.shape} and {std.shape}")
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise ValueError("mean must be finite and std finite and > 0 (replace a zero std by 1)")
    return mean.astype(np.float32), std.astype(np.float32)


def _portable(arr: np.ndarray):
    extent = _file_extent(arr)
    return ("file", *extent, arr.dtype.str, arr.shape) if extent else arr


def _unportable(item):
    if isinstance(item, tuple) and item and item[0] == "file":
        _, name, offset, dtype, shape = item
        return np.memmap(name, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape)
    return item
