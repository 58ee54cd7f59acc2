"""Feeding training batches to the device: windows resident on it, or batched gathers prefetched on a thread.

The journal's "Beast mode" fed a GPU through 8 per-sample DataLoader workers: each window gathered
alone in Python, then collated, far slower than one batched gather (measurements: docs/DECISIONS.md).
Two batched feeds replace it:

- `ResidentWindows`: the (N, F) features and the labels are copied to the device once; a batch is
  gathered there by index, rows ``end - L + 1 .. end`` of each window end, the same arithmetic as
  `LazySequenceDataset.batch` (a universe's instruments are laid end to end, each window inside its
  own). Batches equal the host datasets' bit for bit, on any device.
- `prefetch`: where the features do not fit on the device, the host dataset gathers whole batches on
  a background thread, pins them and keeps ``depth`` of them ready; never per-sample workers.

The epoch order of window ids always comes from the host (`epoch_ids`), seeded by (seed, epoch) as the
host path's, so a seed gives the same batches on every device and every feed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from .dataset import LazySequenceDataset
from .pooled import PooledBatchSampler, PooledSequenceDataset

# The resident windows may take at most this fraction of the device memory free when they are built:
# the rest is for the model, its activations (batch 1024 x 64 bars x d_model 64 is small, but the
# attention maps grow with the batch) and the allocator's caches.
DEVICE_FRACTION = 0.5
_ROWS_CHUNK = 1 << 20  # rows normalised and copied at a time (host memory: chunk x F x 4 bytes)


def epoch_ids(ds, batch_size: int, seed: int, epoch: int, *, shuffle: bool = True) -> Iterator[np.ndarray]:
    """The window ids of each batch of one epoch, as the host path draws them (depends on seed and epoch only).

    A single file (`LazySequenceDataset`): ``torch.randperm`` from a CPU generator seeded with
    ``seed * 100_003 + epoch`` (what `LazySequenceDataset.iter_batches` draws with it); a universe
    (`PooledSequenceDataset`): its keyed block permutation (`PooledBatchSampler`).
    """
    n = len(ds)
    if isinstance(ds, PooledSequenceDataset):
        yield from PooledBatchSampler(n, batch_size, shuffle=shuffle, seed=seed, epoch=epoch)
        return
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).numpy()
    else:
        order = np.arange(n, dtype=np.int64)
    for lo in range(0, n, batch_size):
        yield order[lo : lo + batch_size]


def resident_bytes(ds) -> int:
    """Device bytes `ResidentWindows` needs for ``ds``: features and labels (float32) and one int64 per window."""
    if isinstance(ds, LazySequenceDataset):
        n_rows, n_features = ds.features.shape
    elif isinstance(ds, PooledSequenceDataset):
        n_rows, n_features = sum(len(y) for y in ds.label_arrays), ds.n_features
    else:
        raise TypeError("resident windows need a LazySequenceDataset or PooledSequenceDataset, "
                        f"got {type(ds).__name__}")
    return n_rows * (n_features + 1) * 4 + len(ds) * 8


def fits_on_device(ds, device: torch.device | str, fraction: float = DEVICE_FRACTION) -> tuple[bool, str]:
    """Whether ``ds`` may live on ``device`` (CUDA: within ``fraction`` of its free memory), and why."""
    device = torch.device(device)
    need = resident_bytes(ds)
    if device.type != "cuda":
        return True, f"{need / 2**20:,.0f} MiB of windows in host memory"
    free, _total = torch.cuda.mem_get_info(device)
    ok = need <= fraction * free
    return ok, (f"{need / 2**20:,.0f} MiB of windows {'fit' if ok else 'do not fit'} in {fraction:.0%} of the "
                f"{free / 2**20:,.0f} MiB free on {torch.cuda.get_device_name(device)}")


class ResidentWindows:
    """The windows of a host dataset, held on ``device``: batches are gathered there, never on the host.

    ``ResidentWindows(train_ds, device)`` copies the arrays; ``resident.sibling(val_ds)`` shares them for
    another dataset over the same arrays (the validation windows of the same file or universe).
    """

    def __init__(self, ds, device: torch.device | str, *, _arrays: tuple | None = None) -> None:
        self.device = torch.device(device)
        self.seq_len = ds.seq_len
        self.source = ds
        if isinstance(ds, LazySequenceDataset):
            feats, labs, norm = [ds.features], [ds.labels], None
        elif isinstance(ds, PooledSequenceDataset):
            feats, labs, norm = ds.feature_arrays, ds.label_arrays, ds.normalisation
        else:
            raise TypeError(f"resident windows need a LazySequenceDataset or PooledSequenceDataset, "
                            f"got {type(ds).__name__}")
        self._keys = tuple(id(a) for a in (*feats, *labs))  # which host arrays these are (for `sibling`)
        offsets = np.concatenate([[0], np.cumsum([len(y) for y in labs])]).astype(np.int64)
        if _arrays is None:
            _arrays = (self._upload_features(feats, norm), self._upload_labels(labs))
        self._x, self._y = _arrays
        self._rows = self._row_table(ds, offsets)  # (windows,) int64 on the device: the end row of each window
        self._back = torch.arange(-(self.seq_len - 1), 1, device=self.device)  # row offsets within a window

    def sibling(self, ds) -> ResidentWindows:
        """The windows of ``ds``, a dataset over the same host arrays, sharing this one's device copy."""
        other = ResidentWindows.__new__(ResidentWindows)
        other.device, other.seq_len, other.source = self.device, ds.seq_len, ds
        if isinstance(ds, LazySequenceDataset):
            arrays = (ds.features, ds.labels)
        elif isinstance(ds, PooledSequenceDataset):
            arrays = (*ds.feature_arrays, *ds.label_arrays)
        else:
            arrays = ()
        if tuple(id(a) for a in arrays) != self._keys or ds.seq_len != self.seq_len:
            raise ValueError("sibling: the dataset is not over the same arrays and seq_len as this one; "
                             "build its own ResidentWindows")
        if isinstance(ds, PooledSequenceDataset) and not _same_norm(ds.normalisation, self.source.normalisation):
            raise ValueError("sibling: the dataset normalises differently; build its own ResidentWindows")
        return ResidentWindows(ds, self.device, _arrays=(self._x, self._y))

    # ------------------------------------------------------------------ building

    def _upload_features(self, feats: list[np.ndarray], norm) -> torch.Tensor:
        n_features = feats[0].shape[1]
        out = torch.empty((sum(len(f) for f in feats), n_features), dtype=torch.float32, device=self.device)
        row = 0
        for k, f in enumerate(feats):
            for lo in range(0, len(f), _ROWS_CHUNK):
                chunk = np.array(f[lo : lo + _ROWS_CHUNK], dtype=np.float32)  # a copy: memmaps are read-only
                if norm is not None:
                    mean, std = norm
                    # the pooled dataset normalises each gathered batch in float32, in place, in this order
                    chunk -= mean if mean.ndim == 1 else mean[k]
                    chunk /= std if std.ndim == 1 else std[k]
                out[row : row + len(chunk)] = torch.from_numpy(chunk)
                row += len(chunk)
        return out

    def _upload_labels(self, labs: list[np.ndarray]) -> torch.Tensor:
        dtype = torch.from_numpy(np.asarray(labs[0][:0])).dtype
        out = torch.empty(sum(len(y) for y in labs), dtype=dtype, device=self.device)
        row = 0
        for y in labs:
            out[row : row + len(y)] = torch.from_numpy(np.array(y))
            row += len(y)
        return out

    def _row_table(self, ds, offsets: np.ndarray) -> torch.Tensor:
        rows = torch.empty(len(ds), dtype=torch.int64, device=self.device)
        if isinstance(ds, LazySequenceDataset):
            rows.copy_(torch.from_numpy(np.array(ds.ends)))
            return rows
        start = 0
        for inst, lo, hi in ds.ranges:
            n = int(hi - lo)
            rows[start : start + n] = torch.arange(offsets[inst] + lo, offsets[inst] + hi, device=self.device)
            start += n
        return rows

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def nbytes(self) -> int:
        """Device bytes held: features, labels (shared with siblings) and this one's window table."""
        return sum(t.numel() * t.element_size() for t in (self._x, self._y, self._rows))

    def batch(self, ids: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows ``ids``: X (B, L, F) float32 and y (B,), on the device; equal to ``source.batch(ids)``."""
        ids = torch.as_tensor(np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64))
        n = len(self._rows)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
            raise IndexError(f"window ids must lie in [0, {n}), got min {int(ids.min())} max {int(ids.max())}")
        ends = self._rows[ids.to(self.device, non_blocking=True)]
        return self._x[ends[:, None] + self._back], self._y[ends]

    def iter_batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                     epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every window once, in the order the host dataset would give for (seed, epoch)."""
        for ids in epoch_ids(self.source, batch_size, seed, epoch, shuffle=shuffle):
            yield self.batch(ids)


def _same_norm(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def prefetch(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device | str,
             depth: int = 3) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``batches`` moved to ``device``, gathered ``depth`` ahead on a background thread.

    On CUDA each batch is pinned on the thread, so the copy to the device is asynchronous and overlaps
    the previous step. Closing the iterator early stops the thread; an error on it is raised here.
    """
    device = torch.device(device)
    pin = device.type == "cuda"
    ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for x, y in batches:
                if pin:
                    x, y = x.pin_memory(), y.pin_memory()
                if not put((x, y)):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    thread = threading.Thread(target=work, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            x, y = item
            yield x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)
    finally:
        stop.set()
        thread.join()
