"""Training data: features, Triple Barrier labels and a purged split, normalised on training bars only.

One instrument (`prepare` on a file or sample): in memory, `Prepared`. A universe (``--data`` a
directory, glob, comma list or bundled universe; `prepare_universe`): features and labels of each
instrument alone in an on-disk store (`agents.data.store`), windows that never cross instruments
(`agents.data.pooled`), and one calendar split for all, `PooledPrepared`: markets move together, so
instrument B's 2012 is not out-of-sample for a model trained on A's 2012. The cut dates leave the
last ``holdout`` of all bars (pooled) after the holdout cut and the last ``val_fraction`` of the rest
after the validation cut; per instrument, training labels end ``horizon`` bars before the validation
cut and validation labels ``horizon`` bars before the holdout (train / purge / validation / purge /
holdout). Both offer the trainer the same interface: ``dataset``, ``labels``, ``rows``, ``n_rows``,
``card_normalisation`` and ``card_dataset``.

``cfg`` is the run's `TrainConfig`, read by attribute only: data/ never imports training/.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from datafeeds import is_universe, load_ohlcv
from datafeeds.frequency import bar_seconds
from labeling import average_uniqueness, calendar_cut, events_within, purged_train_val_split, triple_barrier_labels
from labeling.primary import BothRule, parse_primary, primary_side

from .features import FeatureSpec, compute_features

if TYPE_CHECKING:
    from .store import FeatureStore


@dataclass
class Prepared:
    """Normalised features, labels and the purged train/validation windows of one instrument.

    The trainer reads it through ``dataset``, ``labels``, ``rows`` and ``card_dataset``, which
    :class:`PooledPrepared` (a universe) offers too.
    """

    x: np.ndarray  # (N, F) float32, normalised with training statistics
    y: np.ndarray  # (N,) float32, NaN where a bar has no label
    uniqueness: np.ndarray  # (N,) float64: the label's average uniqueness (labeling.average_uniqueness),
                            # NaN without one
    names: list[str]
    spec: FeatureSpec
    mean: np.ndarray
    std: np.ndarray
    train_ends: np.ndarray  # bar positions of training windows' last bars (= labelled bars)
    val_ends: np.ndarray
    index: pd.DatetimeIndex
    holdout_start: pd.Timestamp | None
    source: str
    sha256: str
    # (N,) float64: a meta-labelled bet's return at its barrier, on its side (NaN elsewhere); None without a primary
    bet_ret: np.ndarray | None = None

    def _ends(self, which: str) -> np.ndarray:
        return {"train": self.train_ends, "val": self.val_ends}[which]

    def dataset(self, which: str, seq_len: int):
        """The windows of ``which`` ("train" or "val") in time order (a LazySequenceDataset)."""
        from .dataset import LazySequenceDataset  # torch: only when windows are asked for

        return LazySequenceDataset(self.x, self.y, seq_len, index=self._ends(which))

    def labels(self, which: str) -> np.ndarray:
        """Targets of ``dataset(which)``, in its order (float64)."""
        return self.y[self._ends(which)].astype(np.float64)

    def rows(self, which: str) -> np.ndarray:
        """Normalised features at each labelled bar of ``which`` (what adversarial validation compares)."""
        return self.x[self._ends(which)]

    def weights(self, which: str) -> np.ndarray:
        """Average uniqueness of each label of ``dataset(which)``, in its order (float64)."""
        return self.uniqueness[self._ends(which)]

    def last_rows(self, which: str, ids: np.ndarray | None = None) -> np.ndarray:
        """Normalised features of each window's last bar, in ``dataset(which)``'s order, or of the windows
        ``ids`` of it (the linear baseline)."""
        ends = self._ends(which)
        return self.x[ends if ids is None else ends[ids]]

    def last_windows(self, which: str, k: int, ids: np.ndarray | None = None) -> np.ndarray:
        """Normalised features of each window's last ``k`` bars, oldest first, flattened to (n, k * F) float32,
        in ``dataset(which)``'s order, or of the windows ``ids`` of it (the gradient-boosting baseline)."""
        ends = self._ends(which)
        ends = ends if ids is None else ends[np.asarray(ids, dtype=np.int64)]
        _check_lags(k, int(ends.min()) + 1 if len(ends) else k)
        return self.x[ends[:, None] + np.arange(1 - k, 1)].reshape(len(ends), k * self.x.shape[1])

    def end_times(self, which: str, ids: np.ndarray) -> np.ndarray:
        """Timestamps (datetime64[ns]) of the last bars of the windows ``ids`` of ``dataset(which)``."""
        return self.index[self._ends(which)[np.asarray(ids, dtype=np.int64)]].to_numpy().astype("datetime64[ns]")

    @property
    def n_rows(self) -> int:
        """Feature rows held in memory (the trainer's memory estimate)."""
        return len(self.x)

    def card_normalisation(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    def card_dataset(self, cfg) -> dict:
        """The agent card's "dataset": provenance and the dates each split covers."""
        idx = self.index
        train_lo = int(self.train_ends.min()) - cfg.seq_len + 1
        return {
            "name": cfg.data,
            "source": self.source,
            "sha256": self.sha256,
            "first_bar": str(idx[0]),
            "last_bar_used": str(idx[-1]),  # nothing after this bar was seen in training
            "bar_seconds": bar_seconds(idx),  # how often bars come: run_backtest refuses other data
            "holdout_start": None if self.holdout_start is None else str(self.holdout_start),
            "train": [str(idx[train_lo]), str(idx[int(self.train_ends.max())])],
            # None for a refit that trains on its validation block too (walk-forward)
            "validation": ([str(idx[int(self.val_ends.min())]), str(idx[int(self.val_ends.max())])]
                           if len(self.val_ends) else None),
        }


def _check_lags(k: int, most: int) -> None:
    """``k`` bars must be a whole number in [1, ``most``] (the bars every window has)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= most:
        raise ValueError(f"k must be an integer in [1, {most}] (the bars every window has), got {k!r}")


def prepare(cfg) -> Prepared | PooledPrepared:
    """Load, cut the holdout, featurise, label and split; raises DataError/ValueError with a clear message.

    A universe goes to `prepare_universe`."""
    if is_universe(cfg.data):
        return prepare_universe(cfg)
    df = load_ohlcv(cfg.data, start=cfg.start, end=cfg.end)
    cut = len(df) - int(round(len(df) * cfg.holdout))
    fit_df = df.iloc[:cut]
    pos, t1, x, names, spec, y, bet_ret = _featurise_and_label(cfg, fit_df, what="bars before the holdout")
    train_ends, val_ends = purged_train_val_split(pos, t1, cfg.val_fraction, purge=cfg.horizon)
    u = _uniqueness(pos, t1, len(fit_df))
    for name, ends in (("training", train_ends), ("validation", val_ends)):
        classes = np.unique(y[ends])
        if classes.size < 2:
            raise ValueError(
                f"{cfg.data}: every {name} label is {int(classes[0])} with --pt {cfg.pt} --sl {cfg.sl} "
                f"--horizon {cfg.horizon}; nothing to learn: use barriers the price can reach"
            )
    return _assemble(cfg, fit_df, x, names, spec, y, u, train_ends, val_ends,
                     holdout_start=df.index[cut] if cut < len(df) else None, bet_ret=bet_ret)


def prepare_segments(cfg, df: pd.DataFrame, train: range, val: range | None) -> Prepared:
    """Prepare explicit bar segments of ``df`` (walk-forward folds): events whose whole label span
    lies inside ``train`` train, those inside ``val`` validate; nothing after the last segment is used."""
    stop = (val or train).stop
    part = df.iloc[:stop]
    pos, t1, x, names, spec, y, bet_ret = _featurise_and_label(cfg, part, what="bars up to the segment end")
    train_ends = events_within(pos, t1, train)
    val_ends = events_within(pos, t1, val) if val is not None else np.array([], dtype=np.int64)
    if train_ends.size == 0:
        raise ValueError(f"no labelled training window inside bars {train.start}..{train.stop - 1}; "
                         "use longer segments")
    if val is not None and val_ends.size == 0:
        raise ValueError(f"no labelled validation window inside bars {val.start}..{val.stop - 1}; use longer segments")
    return _assemble(cfg, part, x, names, spec, y, _uniqueness(pos, t1, len(part)), train_ends, val_ends,
                     holdout_start=df.index[stop] if stop < len(df) else None, bet_ret=bet_ret)


def prepare_blocks(cfg, df: pd.DataFrame, train: Sequence[range]) -> Prepared:
    """Prepare ``df`` to train on the events lying wholly inside one of the ``train`` blocks (a
    combinatorial purged split: blocks around test groups); normalisation from the bars of those
    blocks' windows only; no validation events."""
    pos, t1, x, names, spec, y, bet_ret = _featurise_and_label(cfg, df, what="bars")
    train_ends = np.sort(np.concatenate([events_within(pos, t1, r) for r in train] or [np.empty(0, np.int64)]))
    if train_ends.size == 0:
        raise ValueError("no labelled training window inside the train blocks; use fewer groups or more bars")
    rows = np.zeros(len(df), dtype=bool)
    for r in train:
        rows[max(0, r.start - cfg.seq_len + 1) : r.stop] = True
    return _assemble(cfg, df, x, names, spec, y, _uniqueness(pos, t1, len(df)), train_ends,
                     np.array([], dtype=np.int64), holdout_start=None, norm_rows=rows, bet_ret=bet_ret)


def full_window_ends(x: np.ndarray, seq_len: int, segment: range) -> np.ndarray:
    """Bars of ``segment`` whose window of ``seq_len`` normalised feature rows is all finite."""
    ok_rows = np.isfinite(x).all(axis=1).astype(np.int64)
    csum = np.concatenate([[0], np.cumsum(ok_rows)])
    ends = np.arange(max(segment.start, seq_len - 1), min(segment.stop, len(x)))
    return ends[(csum[ends + 1] - csum[ends + 1 - seq_len]) == seq_len]


def _featurise_and_label(cfg, df: pd.DataFrame, *, what: str):
    """Features, labels and the label spans of the events that have a full window of features, and with a price
    primary its bets' returns (side x the label's return at the barrier touched; None without one)."""
    spec = cfg.feature_spec.pinned(df.columns)
    min_bars = spec.warmup + cfg.seq_len + cfg.horizon + 2
    if len(df) < min_bars:
        raise ValueError(
            f"{cfg.data}: {len(df)} {what}, but seq_len {cfg.seq_len} + feature warm-up "
            f"{spec.warmup} + horizon {cfg.horizon} need at least {min_bars}; use more data or lower --seq-len"
        )
    x, names = compute_features(df, spec)
    rule = parse_primary(cfg.primary) if cfg.primary else None
    # meta-labels of a price rule's bets; "both": the plain direction labels, traded both ways afterwards
    side = primary_side(df, rule) if rule is not None and not isinstance(rule, BothRule) else None
    labels = triple_barrier_labels(df, config=cfg.tbm, side=side)
    pos = df.index.get_indexer(labels.index)
    t1 = df.index.get_indexer(labels["t1"])
    usable = pos >= spec.warmup + cfg.seq_len - 1  # a full window of finite features ends there
    if not usable.any():
        raise ValueError(f"{cfg.data}: no labelled bar has a full {cfg.seq_len}-bar window of features; "
                         "lower --seq-len")
    y = np.full(len(df), np.nan, dtype=np.float32)
    y[pos] = labels["label"].to_numpy(np.float32)
    bet_ret = None
    if side is not None:  # what each of the primary's bets earned, gross: its baseline's Sharpe (the card)
        bet_ret = np.full(len(df), np.nan)
        bet_ret[pos] = labels["side"].to_numpy(np.float64) * labels["ret"].to_numpy(np.float64)
    return pos[usable], t1[usable], x, names, spec, y, bet_ret


def _uniqueness(pos: np.ndarray, t1: np.ndarray, n_bars: int) -> np.ndarray:
    """Per bar: the average uniqueness of the label that starts there (NaN where none starts)."""
    u = np.full(n_bars, np.nan)
    u[pos] = average_uniqueness(pos, t1, n_bars)
    return u


def _assemble(cfg, df, x, names, spec, y, uniqueness, train_ends, val_ends, *, holdout_start,
              norm_rows: np.ndarray | None = None, bet_ret: np.ndarray | None = None) -> Prepared:
    # normalisation from the bars the training windows cover, never from validation (or test)
    if norm_rows is None:
        lo, hi = int(train_ends.min()) - cfg.seq_len + 1, int(train_ends.max()) + 1
        rows = x[lo:hi].astype(np.float64)
    else:
        rows = x[norm_rows].astype(np.float64)
    mean = np.nanmean(rows, axis=0)
    std = np.nanstd(rows, axis=0)
    std = np.where(std > 1e-12, std, 1.0)  # a constant feature (e.g. zero volume) stays 0, not NaN
    return Prepared(
        x=((x - mean) / std).astype(np.float32), y=y, uniqueness=uniqueness, names=names, spec=spec,
        mean=mean, std=std, train_ends=train_ends, val_ends=val_ends, index=df.index, holdout_start=holdout_start,
        source=str(df.attrs.get("source", cfg.data)), sha256=str(df.attrs.get("sha256", "")),
        bet_ret=bet_ret,
    )


# ------------------------------------------------------------------------------------------ universes
@dataclass
class PooledPrepared:
    """A universe ready to train on: per-instrument features and labels on disk, window-end ranges
    per split, normalisation statistics, and what the card records of every instrument."""

    store: FeatureStore
    names: list[str]
    spec: FeatureSpec
    mode: str  # "pooled" or "per-symbol"
    mean: np.ndarray  # (F,) pooled; (S, F) per symbol
    std: np.ndarray
    ranges: dict  # "train"/"val" -> (R, 3) int64 (instrument, lo, hi) window-end ranges
    symbols: dict  # symbol -> what the card records (sha256, bars, dates, events, positive rates)
    cuts: dict  # "validation"/"holdout" -> pd.Timestamp (holdout None without one)
    holdout_start: pd.Timestamp | None
    source: str
    sha256: str  # one digest of all member files (datafeeds.universe_sha256)
    seq_len: int

    def dataset(self, which: str, seq_len: int):
        """The windows of ``which`` ("train" or "val"), instrument by instrument in time order."""
        from .pooled import PooledSequenceDataset  # torch: only when windows are asked for

        if seq_len != self.seq_len:
            raise ValueError(f"this universe was prepared for seq_len {self.seq_len}, not {seq_len}")
        st = self.store
        return PooledSequenceDataset([st.features(s) for s in st.symbols], [st.labels(s) for s in st.symbols],
                                     seq_len, self.ranges[which], self.mean, self.std)

    def labels(self, which: str) -> np.ndarray:
        """Targets of ``dataset(which)`` in its order (float64; O(windows): for metrics, not training)."""
        st = self.store
        parts = [np.asarray(st.labels(st.symbols[i])[lo:hi], dtype=np.float64) for i, lo, hi in self.ranges[which]]
        st.release()
        return np.concatenate(parts) if parts else np.empty(0)

    def weights(self, which: str) -> np.ndarray:
        """Average uniqueness of each label of ``dataset(which)`` in its order (float64), concurrency
        counted among each instrument's own labels."""
        st = self.store
        per_symbol: dict[int, np.ndarray] = {}  # an instrument's uniqueness, once for all its ranges
        parts = []
        for i, lo, hi in self.ranges[which]:
            if i not in per_symbol:
                t1 = np.asarray(st.t1(st.symbols[i]), dtype=np.int64)
                pos = np.flatnonzero(t1 >= 0)
                per_symbol[i] = np.full(len(t1), np.nan)
                per_symbol[i][pos] = average_uniqueness(pos, t1[pos], len(t1))
            parts.append(per_symbol[i][lo:hi])
        st.release()
        return np.concatenate(parts) if parts else np.empty(0)

    def rows(self, which: str, max_rows: int = 20_000, seed: int = 0) -> np.ndarray:
        """Normalised features at up to ``max_rows`` labelled bars of ``which`` drawn at random
        (adversarial validation compares training with validation rows)."""
        from .pooled import shuffled_ids

        ds = self.dataset(which, self.seq_len)
        ids = np.sort(shuffled_ids(len(ds), seed, 0, min(len(ds), max_rows)))
        x, _ = ds.batch(ids)
        return x[:, -1, :].numpy()

    def last_rows(self, which: str, ids: np.ndarray | None = None) -> np.ndarray:
        """Normalised features of each window's last bar, in ``dataset(which)``'s order, or of the windows
        ``ids`` of it (the linear baseline); read in chunks, so memory is the rows, not the windows."""
        ds = self.dataset(which, self.seq_len)
        ids = np.arange(len(ds)) if ids is None else np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), len(self.names)), dtype=np.float32)
        for lo in range(0, len(ids), 4096):
            x, _ = ds.batch(ids[lo : lo + 4096])
            out[lo : lo + len(x)] = x[:, -1, :].numpy()
        self.store.release()
        return out

    def last_windows(self, which: str, k: int, ids: np.ndarray | None = None) -> np.ndarray:
        """Normalised features of each window's last ``k`` bars, oldest first, flattened to (n, k * F) float32,
        in ``dataset(which)``'s order, or of the windows ``ids`` of it (the gradient-boosting baseline); read
        in chunks, and never across instruments (``k`` <= the windows' ``seq_len``)."""
        _check_lags(k, self.seq_len)
        ds = self.dataset(which, self.seq_len)
        ids = np.arange(len(ds)) if ids is None else np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), k * len(self.names)), dtype=np.float32)
        for lo in range(0, len(ids), 4096):
            x, _ = ds.batch(ids[lo : lo + 4096])
            out[lo : lo + len(x)] = x[:, -k:, :].reshape(len(x), -1).numpy()
        self.store.release()
        return out

    def end_times(self, which: str, ids: np.ndarray) -> np.ndarray:
        """Timestamps (datetime64[ns]) of the last bars of the windows ``ids`` of ``dataset(which)``."""
        ds = self.dataset(which, self.seq_len)
        inst, end = ds.ends(np.asarray(ids, dtype=np.int64))
        out = np.empty(len(end), dtype=np.int64)
        for i in np.unique(inst):
            mine = inst == i
            out[mine] = np.asarray(self.store.time(self.store.symbols[i])[end[mine]], dtype=np.int64)
        self.store.release()
        return out.view("datetime64[ns]")

    n_rows = 0  # features stay on disk: nothing of them counts in the trainer's memory estimate

    @property
    def bar_seconds(self) -> float | None:
        """The members' median bar spacing, seconds."""
        spacings = [v["bar_seconds"] for v in self.symbols.values() if v.get("bar_seconds")]
        return float(np.median(spacings)) if spacings else None

    def card_normalisation(self) -> dict:
        if self.mode == "pooled":
            return {"mean": self.mean.tolist(), "std": self.std.tolist()}
        # per symbol: the statistics of each member, picked at run time by the data file's sha256;
        # "mean"/"std" hold their average for the card's schema, never applied (the runtime refuses
        # data of any other instrument)
        return {"mean": self.mean.mean(axis=0).tolist(), "std": self.std.mean(axis=0).tolist(), "mode": "per-symbol",
                "per_symbol": {s: {"sha256": self.symbols[s]["sha256"], "mean": self.mean[i].tolist(),
                                   "std": self.std[i].tolist()} for i, s in enumerate(self.store.symbols)}}

    def card_dataset(self, cfg) -> dict:
        span = {w: [min(v[f"{w}_first"] for v in self.symbols.values() if v[f"{w}_first"]),
                    max(v[f"{w}_last"] for v in self.symbols.values() if v[f"{w}_last"])]
                if any(v[f"{w}_first"] for v in self.symbols.values()) else None  # None: a refit (walk-forward)
                for w in ("train", "val")}
        used = [v["last_bar_used"] for v in self.symbols.values() if v["last_bar_used"]]
        return {
            "name": cfg.data,
            "source": f"universe of {len(self.symbols)} instruments: {', '.join(self.symbols)}",
            "sha256": self.sha256,
            "first_bar": min(v["first"] for v in self.symbols.values()),
            "last_bar_used": max(used),  # nothing after this bar, of any instrument, was seen in training
            "bar_seconds": self.bar_seconds,  # the members' median spacing: run_backtest refuses other data
            "holdout_start": None if self.holdout_start is None else str(self.holdout_start),
            "train": span["train"],
            "validation": span["val"],
            "cuts": {k: None if v is None else str(v) for k, v in self.cuts.items()},
            "normalise": self.mode,
            "symbols": list(self.symbols),  # in input order (the card's JSON sorts the keys of "universe")
            "universe": self.symbols,
        }


def prepare_universe(cfg, frames=None, *, store_root=None) -> PooledPrepared:
    """Featurise and label each instrument of ``cfg.data`` into the feature store, cut every
    instrument at the same calendar dates, and fit the normalisation on the training bars.

    ``frames``: symbol -> frame (default: ``datafeeds.load_universe(cfg.data, lazy=True)``, which
    loads one instrument at a time); ``store_root``: the store cache (default `agents.data.store`'s).
    """
    from datafeeds import load_universe, universe_sha256

    from .store import FeatureStore

    if cfg.primary and not isinstance(parse_primary(cfg.primary), BothRule):
        raise ValueError(f"--primary {cfg.primary}: meta-labels are built for one instrument; {cfg.data} is a "
                         "universe (train on one file or sample, or drop --primary; 'both' needs no meta-labels)")

    frames = load_universe(cfg.data, start=cfg.start, end=cfg.end, lazy=True) if frames is None else frames
    store = FeatureStore.build_or_open(frames, cfg.feature_spec, cfg.tbm, root=store_root)
    symbols = list(store.symbols)
    times = [store.time(s) for s in symbols]
    holdout = calendar_cut(times, cfg.holdout) if cfg.holdout > 0 else None
    stops = [len(t) if holdout is None else int(np.searchsorted(t, holdout)) for t in times]
    if sum(stops) < 2:
        raise ValueError(f"{cfg.data}: no bars before the holdout cut {pd.Timestamp(holdout)}; lower --holdout")
    val_cut = calendar_cut([t[:n] for t, n in zip(times, stops)], cfg.val_fraction)
    store.release()  # the bisection's reads mapped whole folios of every time file: unmap them
    first_end = store.spec.warmup + cfg.seq_len - 1  # the first bar with a full window of finite features
    ranges = {"train": [], "val": []}
    info = {}
    for i, sym in enumerate(symbols):
        t, stop = times[i], stops[i]
        v = int(np.searchsorted(t, val_cut))
        t1 = np.asarray(store.t1(sym)[:stop], dtype=np.int64)
        y = np.asarray(store.labels(sym)[:stop])
        entry = {"sha256": store.info(sym)["sha256"], "source": store.info(sym)["source"], "bars": int(len(t)),
                 "first": str(pd.Timestamp(int(t[0]))), "last": str(pd.Timestamp(int(t[-1]))),
                 "bar_seconds": bar_seconds(t)}
        for which, lo, hi in (("train", first_end, v - cfg.horizon), ("val", max(first_end, v), stop - cfg.horizon)):
            ends = np.arange(lo, max(lo, hi))
            keep = ends[(t1[lo:max(lo, hi)] >= 0) & (t1[lo:max(lo, hi)] < hi)]  # labelled, label ends in the segment
            ranges[which] += [(i, a, b) for a, b in _runs(keep)]
            entry.update(_split_summary(which, keep, y, t, cfg.seq_len))
        entry["last_bar_used"] = str(pd.Timestamp(int(t[stop - 1]))) if stop else None
        info[sym] = entry
        del t1, y
        store.release()  # unmap this instrument's pages now: RSS stays one instrument, not the universe
    for which, name in (("train", "training"), ("val", "validation")):
        n = sum(e[f"{which}_events"] for e in info.values())
        pos = sum(e[f"{which}_events"] * (e[f"{which}_positive_rate"] or 0.0) for e in info.values())
        if n == 0 or pos == 0 or pos == n:
            raise ValueError(f"{cfg.data}: {n} {name} labels, {pos:.0f} positive: nothing to learn (with the cut dates "
                             f"{pd.Timestamp(val_cut).date()} / {pd.Timestamp(holdout).date() if holdout else 'none'});"
                             " use longer histories or barriers the price can reach")
    mean, std = _universe_statistics(store, _row_spans(ranges["train"], cfg.seq_len), cfg, symbols)
    return PooledPrepared(
        store=store, names=list(store.names), spec=store.spec, mode=cfg.normalise, mean=mean, std=std,
        ranges={k: np.array(v, dtype=np.int64).reshape(-1, 3) for k, v in ranges.items()}, symbols=info,
        cuts={"validation": pd.Timestamp(val_cut), "holdout": None if holdout is None else pd.Timestamp(holdout)},
        holdout_start=None if holdout is None else pd.Timestamp(holdout), source=cfg.data,
        sha256=universe_sha256({s: _Sha(store.info(s)["sha256"]) for s in symbols}), seq_len=cfg.seq_len,
    )


class _Sha:
    """Stands in for a frame in `universe_sha256`, which reads ``attrs["sha256"]`` only."""

    def __init__(self, sha: str):
        self.attrs = {"sha256": sha}


def _split_summary(which: str, keep: np.ndarray, y: np.ndarray, t: np.ndarray, seq_len: int) -> dict:
    """What the card records of one instrument's split (``which``: train or val) from its window ends ``keep``:
    events, positive rate, first and last bar (training: from the first bar its windows read; validation: its
    first labelled bar)."""
    if not len(keep):
        return {f"{which}_events": 0, f"{which}_positive_rate": None, f"{which}_first": None, f"{which}_last": None}
    first = keep[0] - (seq_len - 1 if which == "train" else 0)
    return {f"{which}_events": int(len(keep)), f"{which}_positive_rate": float(y[keep].mean()),
            f"{which}_first": str(pd.Timestamp(int(t[first]))), f"{which}_last": str(pd.Timestamp(int(t[keep[-1]])))}


def _runs(ends: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive integers as half-open (lo, hi) runs: [3, 4, 5, 9] -> [(3, 6), (9, 10)]."""
    if len(ends) == 0:
        return []
    breaks = np.flatnonzero(np.diff(ends) != 1) + 1
    return [(int(r[0]), int(r[-1]) + 1) for r in np.split(ends, breaks)]


_CHUNK = 1 << 16  # rows per read when summing features for the statistics


def _row_spans(train_ranges: list, seq_len: int) -> list[tuple[int, int, int]]:
    """Per instrument, the feature rows its training windows (``(instrument, lo, hi)`` runs of window ends)
    cover, first to last: one ``(instrument, lo, hi)`` span of rows each."""
    spans = {}
    for i, lo, hi in train_ranges:
        a, b = spans.get(i, (lo, hi))
        spans[i] = (min(a, lo), max(b, hi))
    return [(i, a - seq_len + 1, b) for i, (a, b) in spans.items()]


def _universe_statistics(store, spans: list, cfg, symbols: list[str]):
    """Mean and std (ddof 0, NaNs skipped) of the feature rows in ``spans`` (``(instrument, lo, hi)``: what the
    training windows cover): pooled over all instruments, or per instrument. Read in chunks: memory stays
    O(chunk), not O(bars)."""
    n_feat = len(store.names)
    sums = np.zeros((len(symbols), 3, n_feat))  # per instrument: count, sum, sum of squares
    for i, lo, hi in sorted(spans):
        x = store.features(symbols[i])
        for a in range(lo, hi, _CHUNK):
            block = np.asarray(x[a:min(hi, a + _CHUNK)], dtype=np.float64)
            ok = np.isfinite(block)
            block = np.where(ok, block, 0.0)
            sums[i] += [ok.sum(axis=0), block.sum(axis=0), (block * block).sum(axis=0)]
        store.release()
    if cfg.normalise == "per-symbol":
        missing = [s for i, s in enumerate(symbols) if sums[i, 0].min() == 0]
        if missing:
            raise ValueError(f"--normalise per-symbol: {', '.join(missing)} has no training rows in this training set; "
                             "drop it from the universe or use --normalise pooled")
        counts, total, squares = sums[:, 0], sums[:, 1], sums[:, 2]
    else:
        counts, total, squares = sums[:, 0].sum(axis=0), sums[:, 1].sum(axis=0), sums[:, 2].sum(axis=0)
    mean = total / counts
    std = np.sqrt(np.maximum(squares / counts - mean * mean, 0.0))
    std = np.where(std > 1e-12, std, 1.0)  # a constant feature (e.g. zero volume) stays 0, not NaN
    return mean, std


def prepare_universe_segments(cfg, store: FeatureStore, segments: Mapping, *,
                              cuts: dict | None = None) -> PooledPrepared:
    """A universe's bar segments (walk-forward folds, one calendar for all instruments) ready to train on.

    ``store``: the universe's `FeatureStore` (features and labels over all its bars: both causal, so a
    fold reads them as if the data ended at its last segment); ``segments``: symbol -> (train, val) bar
    ranges in that instrument's own positions (``val`` None for a refit; ``train`` may be a list of disjoint
    ascending ranges, the blocks of a combinatorial purged split; a symbol left out, or an empty range, adds
    nothing). Per instrument, as `prepare_segments` on its bars: an event trains when its whole label span
    lies inside ``train`` (one of its blocks; validates: inside ``val``), it has a full window of features,
    and its vertical barrier lies before the instrument's last segment ends (a label the truncated data
    could not have made is left out). Normalisation from the training windows' rows (``cfg.normalise``).
    """
    symbols = list(store.symbols)
    first_end = store.spec.warmup + cfg.seq_len - 1
    ranges = {"train": [], "val": []}
    spans = []  # (instrument, lo, hi): the feature rows the training windows cover, per training block
    info = {}
    for i, sym in enumerate(symbols):
        train, val = segments.get(sym, (range(0), None))
        trains = [train] if isinstance(train, range) else list(train)
        last = max((r.stop for r in trains), default=0)
        val = range(last, last) if val is None else val
        stop = max(last, val.stop)
        t = np.asarray(store.time(sym)[:stop], dtype=np.int64)
        t1 = np.asarray(store.t1(sym)[:stop], dtype=np.int64)
        y = np.asarray(store.labels(sym)[:stop])
        pos = np.arange(stop)
        ok = (t1 >= 0) & (pos >= first_end) & (pos + cfg.horizon < stop)
        entry = {"sha256": store.info(sym)["sha256"], "source": store.info(sym)["source"], "bars": int(stop),
                 "first": str(pd.Timestamp(int(t[0]))) if stop else None,
                 "last": str(pd.Timestamp(int(t[-1]))) if stop else None,
                 "bar_seconds": bar_seconds(t) if stop > 2 else None}
        for which, segs in (("train", trains), ("val", [val])):
            kept = [pos[ok & (pos >= seg.start) & (t1 < seg.stop)] for seg in segs]
            if which == "train":  # normalised from the rows each block's windows cover (not those between blocks)
                spans += [(i, k[0] - cfg.seq_len + 1, k[-1] + 1) for k in kept if len(k)]
            keep = np.concatenate(kept or [np.empty(0, np.int64)])
            ranges[which] += [(i, a, b) for a, b in _runs(keep)]
            entry.update(_split_summary(which, keep, y, t, cfg.seq_len))
        entry["last_bar_used"] = str(pd.Timestamp(int(t[stop - 1]))) if stop else None
        info[sym] = entry
        store.release()
    if not ranges["train"]:
        raise ValueError(f"{cfg.data}: no labelled training window in the fold's training block; use longer segments")
    if any(s[1] is not None and len(s[1]) for s in segments.values()) and not ranges["val"]:
        raise ValueError(f"{cfg.data}: no labelled validation window in the fold's validation block; "
                         "use longer segments")
    mean, std = _universe_statistics(store, spans, cfg, symbols)
    return PooledPrepared(
        store=store, names=list(store.names), spec=store.spec, mode=cfg.normalise, mean=mean, std=std,
        ranges={k: np.array(v, dtype=np.int64).reshape(-1, 3) for k, v in ranges.items()},
        symbols={s: e for s, e in info.items() if e["bars"]},
        cuts=cuts or {"validation": None, "holdout": None}, holdout_start=None, source=cfg.data,
        sha256=universe_sha256_of(store), seq_len=cfg.seq_len,
    )


def universe_sha256_of(store: FeatureStore) -> str:
    """`datafeeds.universe_sha256` of the member files a store was built from."""
    from datafeeds import universe_sha256

    return universe_sha256({s: _Sha(store.info(s)["sha256"]) for s in store.symbols})


def normalised_rows(prep: PooledPrepared, symbol: str, lo: int, hi: int) -> np.ndarray:
    """Rows ``lo:hi`` of ``symbol``'s features normalised as ``prep``'s windows are (float32, as `Prepared.x`)."""
    i = list(prep.store.symbols).index(symbol)
    mean, std = (prep.mean[i], prep.std[i]) if prep.mode == "per-symbol" else (prep.mean, prep.std)
    x = np.asarray(prep.store.features(symbol)[lo:hi], dtype=np.float64)
    prep.store.release()
    return ((x - mean) / std).astype(np.float32)
