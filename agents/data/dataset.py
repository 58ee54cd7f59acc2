"""Fixed-length windows over a feature matrix, built lazily: memory stays O(N * F).

A window is identified by its END bar t (the labelled bar): it covers bars t-seq_len+1 .. t and
its target is ``labels[t]``. Nothing is copied until an item or a batch is asked for, so a
2M-bar np.memmap can back the dataset without materialising (N, seq_len, F) windows (8 GB).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch.utils.data import Dataset


class LazySequenceDataset(Dataset):
    """Windows ``(features[t-L+1 : t+1], labels[t])`` for each window end ``t`` in ``ends``.

    features: (N, F) float32 array or np.memmap, kept by reference (never copied).
    labels:   (N,) float or int array aligned with ``features``; NaN marks unlabelled bars.
    seq_len:  L, bars per window.
    index:    optional window END positions (bars whose label is used, e.g. the labelled bars of
              a train or validation range); each must satisfy L-1 <= t < N. Default: every
              complete window, t = L-1 .. N-1, NaN labels included.

    Item ``i`` is the window ending at ``self.ends[i]``; ``X`` is a float32 (L, F) tensor and ``y``
    a 0-d tensor (float32 for float labels, int64 for integer labels).
    """

    def __init__(
        self,
        features: np.ndarray,
        labels: np.ndarray | Sequence[float],
        seq_len: int,
        *,
        index: np.ndarray | Sequence[int] | None = None,
    ) -> None:
        features = np.asarray(features)  # a view for ndarray/np.memmap: no copy
        if features.ndim != 2:
            raise ValueError(f"features must be 2-D (N, F), got shape {features.shape}")
        if features.dtype != np.float32:
            raise ValueError(
                f"features must be float32, got {features.dtype}: convert once with "
                "features.astype(np.float32) (a silent copy here would defeat the lazy dataset)"
            )
        n_rows = features.shape[0]
        labels = np.asarray(labels)
        if labels.shape != (n_rows,):
            raise ValueError(f"labels must have shape ({n_rows},) to match features, got {labels.shape}")
        if labels.dtype.kind == "f":
            labels = labels.astype(np.float32, copy=False)
        elif labels.dtype.kind in "iub":
            labels = labels.astype(np.int64, copy=False)
        else:
            raise ValueError(f"labels must be float or integer, got dtype {labels.dtype}")
        if not isinstance(seq_len, (int, np.integer)) or isinstance(seq_len, bool) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
        seq_len = int(seq_len)
        if seq_len > n_rows:
            raise ValueError(f"seq_len={seq_len} exceeds the {n_rows} rows of features: no complete window")

        if index is None:
            ends = np.arange(seq_len - 1, n_rows, dtype=np.int64)
        else:
            ends = _validate_index(index, seq_len, n_rows)

        self.features = features
        self.labels = labels
        self.seq_len = seq_len
        self._ends = ends
        # (N-L+1, F, L) strided view: windows[s] is the window starting at bar s, transposed.
        self._windows = sliding_window_view(features, seq_len, axis=0)

    def __getstate__(self) -> dict:
        # Pickling the strided view would write out every window (the 8 GB this class avoids),
        # e.g. when DataLoader workers are spawned rather than forked: rebuild it on arrival.
        state = self.__dict__.copy()
        del state["_windows"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._windows = sliding_window_view(self.features, self.seq_len, axis=0)

    @property
    def ends(self) -> np.ndarray:
        """Window end bar of each item (read-only int64 array of length ``len(self)``)."""
        view = self._ends.view()
        view.flags.writeable = False
        return view

    @property
    def n_features(self) -> int:
        return self.features.shape[1]

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One window; the path DataLoader workers use (default collate stacks to (B, L, F), (B,))."""
        n = len(self._ends)
        if not -n <= i < n:
            raise IndexError(f"window {i} out of range for a dataset of {n} windows")
        end = int(self._ends[i])
        start = end - self.seq_len + 1
        # np.array copies the (L, F) slice: a memmap slice is read-only and torch wants writable memory.
        x = torch.from_numpy(np.array(self.features[start : end + 1]))  # (L, F)
        y = torch.from_numpy(np.array(self.labels[end]))  # ()
        return x, y

    def batch(self, positions: torch.Tensor | np.ndarray | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather items ``positions`` at once: X (B, L, F) float32, y (B,). Copies only the batch."""
        pos = np.asarray(positions.cpu() if isinstance(positions, torch.Tensor) else positions)
        if pos.ndim != 1 or (pos.size and pos.dtype.kind not in "iu"):
            raise ValueError(f"positions must be a 1-D integer sequence, got shape {pos.shape} dtype {pos.dtype}")
        n = len(self._ends)
        if pos.size and (pos.min() < -n or pos.max() >= n):
            raise IndexError(f"positions must lie in [0, {n}), got min {pos.min()} max {pos.max()}")
        pos = pos.astype(np.int64, copy=False)
        ends = self._ends[pos]  # (B,)
        starts = ends - (self.seq_len - 1)  # (B,)
        x = np.ascontiguousarray(self._windows[starts].transpose(0, 2, 1))  # (B, F, L) -> (B, L, F)
        y = self.labels[ends]  # (B,) fancy indexing copies
        return torch.from_numpy(x), torch.from_numpy(y)

    def iter_batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (X, y) batches covering every window once, in the main process.

        With shuffle, the order comes from ``generator`` (its state advances, so successive epochs
        differ but the whole run is reproducible) or from a fresh generator seeded with ``seed``.
        """
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if generator is not None and seed is not None:
            raise ValueError("pass either seed or generator, not both")
        n = len(self._ends)
        if shuffle:
            if generator is None:
                generator = torch.Generator()
                if seed is None:
                    generator.seed()  # non-deterministic by request
                else:
                    generator.manual_seed(int(seed))
            order = torch.randperm(n, generator=generator).numpy()
        else:
            order = np.arange(n)
        stop = n - n % batch_size if drop_last else n
        for lo in range(0, stop, batch_size):
            yield self.batch(order[lo : lo + batch_size])


def _validate_index(index, seq_len: int, n_rows: int) -> np.ndarray:
    """Window end positions as a fresh int64 array; bad ends raise naming the first offender."""
    ends = np.array(index.cpu() if isinstance(index, torch.Tensor) else index)
    if ends.ndim != 1:
        raise ValueError(f"index must be 1-D (window end positions), got shape {ends.shape}")
    if ends.size and ends.dtype.kind not in "iu":
        raise ValueError(
            f"index must hold integer bar positions (window ends), got dtype {ends.dtype}; "
            "for a boolean mask pass np.flatnonzero(mask)"
        )
    ends = ends.astype(np.int64)
    too_early = ends < seq_len - 1
    if too_early.any():
        bad = int(ends[too_early][0])
        raise ValueError(
            f"index contains window end {bad} < seq_len-1={seq_len - 1}: a window ending there would "
            f"start before bar 0; drop ends below {seq_len - 1}"
        )
    too_late = ends >= n_rows
    if too_late.any():
        bad = int(ends[too_late][0])
        raise ValueError(f"index contains window end {bad} >= N={n_rows} (the number of feature rows)")
    uniq, counts = np.unique(ends, return_counts=True)
    if (counts > 1).any():
        dup = int(uniq[counts > 1][0])
        raise ValueError(f"index contains duplicate window end {dup}: each window must appear once")
    return ends
