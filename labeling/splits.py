"""Purged chronological splits over label spans (AFML ch.7), in bar positions.

A label made at bar t looks at prices up to bar t1, so a training event whose span [t, t1] reaches
into a later segment leaks that segment's prices into training. These splits keep such spans apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._checks import check_int


@dataclass(frozen=True)
class Fold:
    """One walk-forward fold: bar-position ranges, in time order train < val < test."""

    fold: int  # 0-based fold number, in time order
    train: range
    val: range
    test: range


def _check_spans(event_index, t1_index) -> tuple[np.ndarray, np.ndarray]:
    """Validated int64 copies of event / label-end positions (events strictly increasing, t1 >= event)."""
    ev = np.asarray(event_index)
    t1 = np.asarray(t1_index)
    for name, arr in (("event_index", ev), ("t1_index", t1)):
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must be a 1-D integer array of bar positions, "
                             f"got dtype {arr.dtype} shape {arr.shape}")
    if ev.shape != t1.shape:
        raise ValueError(f"event_index and t1_index must have equal lengths, got {ev.size} and {t1.size}")
    ev = ev.astype(np.int64)
    t1 = t1.astype(np.int64)
    if ev.size and ev[0] < 0:
        raise ValueError(f"event_index must hold bar positions >= 0, got {ev[0]}")
    if (np.diff(ev) <= 0).any():
        raise ValueError("event_index must be strictly increasing (events in time order, one per bar)")
    if (t1 < ev).any():
        i = int(np.flatnonzero(t1 < ev)[0])
        raise ValueError(f"t1_index[{i}] = {t1[i]} is before its event bar {ev[i]}; "
                         "label spans must end at or after the event")
    return ev, t1


def events_within(event_index, t1_index, segment: range) -> np.ndarray:
    """Event bar positions whose whole label span [t, t1] lies inside `segment` (a range of bars)."""
    ev, t1 = _check_spans(event_index, t1_index)
    keep = (ev >= segment.start) & (t1 < segment.stop)
    return ev[keep]


def purged_train_val_split(
    event_index,
    t1_index,
    val_fraction: float = 0.2,
    purge: int | None = None,
    embargo: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Chronological train/validation split of events with purging; returns event bar positions.

    Validation = the last `val_fraction` of events (at least one). A training event t is kept only if
    its label ends before the first validation bar v0 (t1 < v0) and at least `purge + embargo` bars lie
    strictly between t and v0 (v0 - t - 1 >= purge + embargo). `purge` defaults to the longest label
    span max(t1 - t) (= horizon for TBM labels). `embargo` adds bars to that gap: nothing trains after
    validation here, so AFML's post-test embargo reduces to a wider gap before it.
    Use np.searchsorted(event_index, train) to turn the returned bar positions into event rows.
    """
    ev, t1 = _check_spans(event_index, t1_index)
    if (isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float, np.floating))
            or not (0.0 < val_fraction < 1.0)):
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    n = ev.size
    if n < 2:
        raise ValueError(f"need at least 2 events to split, got {n}")
    purge = int(np.max(t1 - ev)) if purge is None else check_int(purge, "purge", 0)
    embargo = check_int(embargo, "embargo", 0)
    n_val = max(1, int(round(n * val_fraction)))
    if n_val >= n:
        raise ValueError(f"val_fraction={val_fraction} leaves no training events out of {n}; lower it")
    val = ev[n - n_val:]
    v0 = int(val[0])
    cand_t1 = t1[: n - n_val]
    cand = ev[: n - n_val]
    keep = (cand_t1 < v0) & (cand <= v0 - 1 - purge - embargo)
    train = cand[keep]
    if train.size == 0:
        raise ValueError(
            f"no training events left: validation starts at bar {v0} and purge+embargo={purge + embargo} bars "
            f"(and label spans up to {int(np.max(t1 - ev))} bars) remove all {cand.size} earlier events; "
            "use more data or a smaller val_fraction"
        )
    return train, val.copy()


def walk_forward_folds(
    n_bars: int,
    *,
    n_folds: int,
    scheme: str = "rolling",
    test_frac: float = 0.3,
    val_size: int | None = None,
    train_size: int | None = None,
    purge: int = 0,
    embargo: int = 0,
) -> list[Fold]:
    """Walk-forward folds over bars 0..n_bars-1: [train] purge [val] purge [test], repeated forward.

    The last `test_frac` of the bars holds `n_folds` equal test blocks in time order, the last ending
    at bar n_bars-1 (rounding leftovers stay in the history before them), separated by `embargo` bars
    so that, with embargo >= horizon, the labels of one test block end before the next block begins. Each fold's
    val block (`val_size` bars,
    default the test size) sits `purge` bars before its test block, and its train block ends `purge`
    bars before val. Rolling: every train block has `train_size` bars (default: all the first fold
    can have). Anchored: train always starts at bar 0 and grows. With purge >= horizon, labels of
    events inside a segment never reach the next segment.
    """
    n_bars = check_int(n_bars, "n_bars", 0)
    n_folds = check_int(n_folds, "n_folds", 0)
    if n_folds < 1:
        raise ValueError("n_folds must be >= 1")
    if scheme not in ("rolling", "anchored"):
        raise ValueError(f"scheme must be 'rolling' or 'anchored', got {scheme!r}")
    if (isinstance(test_frac, bool) or not isinstance(test_frac, (int, float, np.floating))
            or not (0.0 < test_frac < 1.0)):
        raise ValueError(f"test_frac must be a number in (0, 1), got {test_frac!r}")
    purge = check_int(purge, "purge", 0)
    embargo = check_int(embargo, "embargo", 0)

    tail = int(n_bars * test_frac)
    test_size = (tail - (n_folds - 1) * embargo) // n_folds
    if test_size < 1:
        raise ValueError(
            f"too few bars: test_frac={test_frac} of {n_bars} bars is {tail}, not enough for {n_folds} test "
            f"block(s) separated by embargo={embargo}; use more bars, fewer folds or a larger test_frac"
        )
    val_size = test_size if val_size is None else check_int(val_size, "val_size", 0)
    if val_size < 1:
        raise ValueError("val_size must be >= 1")
    if train_size is not None:
        if scheme == "anchored":
            raise ValueError("train_size applies to scheme='rolling' only; anchored train always starts at bar 0")
        train_size = check_int(train_size, "train_size", 0)
        if train_size < 1:
            raise ValueError("train_size must be >= 1")

    first_test = n_bars - (n_folds * test_size + (n_folds - 1) * embargo)
    first_train_end = first_test - purge - val_size - purge
    if first_train_end < 1:
        raise ValueError(
            f"too few bars: the first fold has no training data ({n_bars} bars, test blocks of {test_size}, "
            f"val {val_size}, purge {purge} x2); use more bars, a smaller test_frac, val_size or purge"
        )
    if scheme == "rolling":
        if train_size is None:
            train_size = first_train_end
        elif train_size > first_train_end:
            raise ValueError(
                f"too few bars: train_size={train_size} but the first fold has only {first_train_end} bars before "
                "its purged val block; lower train_size or test_frac"
            )

    folds = []
    for k in range(n_folds):
        test_start = first_test + k * (test_size + embargo)
        val_start = test_start - purge - val_size
        train_end = val_start - purge
        train_start = 0 if scheme == "anchored" else train_end - train_size
        folds.append(
            Fold(
                fold=k,
                train=range(train_start, train_end),
                val=range(val_start, val_start + val_size),
                test=range(test_start, test_start + test_size),
            )
        )
    return folds


@dataclass(frozen=True)
class CPCVSplit:
    """One combinatorial purged split: its test groups and the train bars left around them."""

    split: int
    test_groups: tuple[int, ...]
    test: tuple[range, ...]  # the test groups' bars, in time order
    train: tuple[range, ...]  # maximal runs of bars that train: outside the test groups, purged, embargoed


def cpcv_splits(n_bars: int, n_groups: int, k_test: int, *, purge: int = 0, embargo: int = 0,
                start: int = 0) -> list[CPCVSplit]:
    """Combinatorial purged cross-validation (AFML ch. 12) over bars ``start..n_bars-1``.

    The bars form ``n_groups`` contiguous groups of (almost) equal size; each of the C(n_groups, k_test)
    splits tests on ``k_test`` of them and trains on the rest, less ``purge`` bars before each test
    group (their labels would reach into it) and ``embargo`` bars after it (their inputs would hold its
    bars). Events must still lie wholly inside one train run (``events_within``).
    """
    from itertools import combinations

    n_bars, start = check_int(n_bars, "n_bars", 0), check_int(start, "start", 0)
    n_groups, k_test = check_int(n_groups, "n_groups", 2), check_int(k_test, "k_test", 1)
    purge, embargo = check_int(purge, "purge", 0), check_int(embargo, "embargo", 0)
    if k_test >= n_groups:
        raise ValueError(f"k_test must be < n_groups (something must train), got {k_test} of {n_groups}")
    edges = np.linspace(start, n_bars, n_groups + 1).astype(np.int64)
    if np.min(np.diff(edges)) < 2:
        raise ValueError(f"too few bars: {n_bars - start} bars make groups of < 2 bars with n_groups={n_groups}")
    groups = [range(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    out = []
    for i, chosen in enumerate(combinations(range(n_groups), k_test)):
        keep = np.ones(n_bars, dtype=bool)
        keep[:start] = False
        for g in chosen:
            r = groups[g]
            keep[max(start, r.start - purge) : min(n_bars, r.stop + embargo)] = False
        train = _runs(keep)
        if not train:
            raise ValueError(f"split {i} (test groups {chosen}) has no training bars left after purge {purge} "
                             f"and embargo {embargo}; use fewer test groups or more bars")
        out.append(CPCVSplit(i, tuple(chosen), tuple(groups[g] for g in chosen), tuple(train)))
    return out


def cpcv_paths(splits: list[CPCVSplit], n_groups: int) -> list[list[tuple[int, int]]]:
    """The backtest paths of a CPCV: path j takes each group g from the j-th split (in split order)
    that tests g; a path is [(group, split), ...] over all groups. C(n_groups - 1, k_test - 1) paths."""
    by_group: dict[int, list[int]] = {g: [] for g in range(n_groups)}
    for sp in splits:
        for g in sp.test_groups:
            by_group[g].append(sp.split)
    n_paths = min(len(v) for v in by_group.values())
    return [[(g, by_group[g][j]) for g in range(n_groups)] for j in range(n_paths)]


def _runs(mask: np.ndarray) -> list[range]:
    """Maximal runs of True in ``mask`` as ranges."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    d = np.diff(padded)
    return [range(int(a), int(b)) for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1))]


def calendar_cut(times, fraction_after: float) -> np.int64:
    """The timestamp that leaves the last ``fraction_after`` of all bars of several instruments after it.

    ``times``: one sorted int64 array (e.g. nanoseconds, np.memmap fine) per instrument. The same cut
    date applies to every instrument (markets move together: B's 2012 is not out-of-sample for a
    model trained on A's 2012). Found by bisection on the calendar with searchsorted per instrument,
    so memory stays O(1) in the number of bars; bars at the cut belong to the part after it.
    """
    arrays = [np.asarray(t) for t in times]
    if not arrays or any(a.ndim != 1 or a.dtype.kind not in "iu" for a in arrays):
        raise ValueError("times must be a non-empty list of 1-D integer timestamp arrays")
    if not 0.0 < fraction_after < 1.0:
        raise ValueError(f"fraction_after must be in (0, 1), got {fraction_after}")
    arrays = [a for a in arrays if a.size]
    total = sum(a.size for a in arrays)
    if total < 2:
        raise ValueError(f"need at least 2 bars in all to cut, got {total}")
    want_before = total - max(1, int(round(total * fraction_after)))  # bars strictly before the cut
    lo = min(int(a[0]) for a in arrays)  # before(lo) = 0 <= want_before
    hi = max(int(a[-1]) for a in arrays) + 1  # before(hi) = total > want_before
    while hi - lo > 1:  # invariant: before(lo) <= want_before < before(hi)
        mid = (lo + hi) // 2
        before = sum(int(np.searchsorted(a, mid, side="left")) for a in arrays)
        if before <= want_before:
            lo = mid
        else:
            hi = mid
    return np.int64(lo)
