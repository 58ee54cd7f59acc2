"""Walk-forward over a universe: one calendar of folds, pooled training, validation and test as portfolios.

The folds are cut on the calendar of all the instruments' bar times (their union): every instrument
trains, validates and is tested over the same dates (markets move together: B's 2012 is not
out-of-sample for a model trained on A's 2012). An instrument that starts late or ends early has fewer
bars in a block, or none, and joins or leaves the portfolio at its own bars (``engine.run_portfolio``).
A universe of one instrument has the calendar of that instrument: its folds are the single-instrument
walk-forward's, bar for bar.

Per trial the model trains on the events of every instrument's training block (pooled windows that never
cross instruments, `agents.data.prepare.prepare_universe_segments`), normalised pooled or per symbol; its
validation probabilities are traded as one portfolio (shared cash, ``max_positions``) by the fast engine,
and the fold's refit trades the test block as a portfolio with the engine of ``--engine``. Features and
labels come from the universe's feature store (`agents.data.store.FeatureStore`), built once per feature
spec and label barriers and shared by all trials and folds of the run: no trial re-reads the CSVs.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from agents.data.prepare import normalised_rows, prepare_universe_segments
from agents.data.store import FeatureStore
from datafeeds import load_universe, universe_sha256
from engine.deflated_sharpe import sharpe_ratio
from engine.portfolio import run_portfolio, sweep_portfolio
from engine.walkforward import space
from engine.walkforward.predict import logits, sigmoid
from labeling import Fold
from labeling.primary import BothRule, parse_primary


@dataclass
class Universe:
    """The instruments of a universe walk-forward and what its folds share."""

    frames: dict  # symbol -> OHLCV frame (datafeeds), in the universe's order
    calendar: pd.DatetimeIndex  # the union of their bar times: the folds' bars
    max_positions: int
    sha256: str  # datafeeds.universe_sha256 of the member files
    store_root: str | None = None  # the feature store cache (None: agents.data.store's default)
    stores: dict = field(default_factory=dict)  # (spec, tbm) JSON -> FeatureStore
    lock: threading.Lock = field(default_factory=threading.Lock)  # --n-jobs threads build a store once

    @property
    def symbols(self) -> list[str]:
        return list(self.frames)


def check_options(cfg) -> None:
    """Refuse options a universe walk-forward does not take (ValueError, one line)."""
    primary = parse_primary(cfg.base.primary) if cfg.base.primary else None
    if primary is not None and not isinstance(primary, BothRule):
        raise ValueError(f"--primary {cfg.base.primary}: meta-labels are built for one instrument; {cfg.data} is a "
                         "universe (drop --primary, or use --primary both, which needs no meta-labels)")
    if "primary" in cfg.search:
        raise ValueError(f"--search primary searches a primary rule's meta-labels, built for one instrument; "
                         f"{cfg.data} is a universe")


def load(cfg, *, store_root: str | None = None) -> Universe:
    """Load ``cfg.data``'s instruments (DataError, one line, for bad input) and their calendar."""
    frames = dict(load_universe(cfg.data, start=cfg.start, end=cfg.end))
    calendar = pd.DatetimeIndex(sorted(set().union(*(f.index for f in frames.values()))), name="datetime")
    most = len(frames) if cfg.max_positions is None else cfg.max_positions
    if not 1 <= most <= len(frames):
        raise ValueError(f"--max-positions must be in 1..{len(frames)} (the instruments of {cfg.data}), got {most}")
    return Universe(frames, calendar, most, universe_sha256(frames), store_root)


def check_members(u: Universe, folds: list, need: int, normalise: str, splits: list = (), embargo: int = 0) -> None:
    """Refuse, before any trial, a per-symbol normalisation that a fold (or a CPCV split of ``splits``, embargoed
    by ``embargo``) cannot make: a member with fewer than ``need`` bars in its training blocks (the warm-up, a
    window and a label) has no statistics of its own there (ValueError, one line)."""
    if normalise != "per-symbol":
        return
    fix = "use --normalise pooled, or other --start/--end, --folds or --cpcv"
    for fold in folds:
        for sym in u.frames:
            n = len(own_range(u, sym, fold.train))
            if n < need:
                raise ValueError(
                    f"--normalise per-symbol: {sym} has {n} bars in fold {fold.fold}'s training block "
                    f"({u.calendar[fold.train.start].date()} to {u.calendar[fold.train.stop - 1].date()}), fewer than "
                    f"the {need} its own statistics need; {fix}")
    for split in splits:
        for sym in u.frames:
            n = sum(len(b) for b in split_blocks(u, sym, split, embargo))
            if n < need:
                cal = u.calendar
                groups = ", ".join(f"{cal[r.start].date()} to {cal[r.stop - 1].date()}" for r in split.test)
                raise ValueError(f"--normalise per-symbol: {sym} has {n} bars in the training blocks of CPCV split "
                                 f"{split.split} (test groups {groups}), fewer than the {need} its own statistics "
                                 f"need; {fix}")


def calendar_frame(u: Universe) -> pd.DataFrame:
    """An empty frame on the calendar with the members' columns (what the fold checks read)."""
    first = next(iter(u.frames.values()))
    return pd.DataFrame(index=u.calendar, columns=first.columns)


def own_range(u: Universe, sym: str, block: range) -> range:
    """The calendar ``block`` in ``sym``'s own bar positions: its bars whose times lie in the block."""
    t, cal = u.frames[sym].index.asi8, u.calendar.asi8
    lo, hi = int(np.searchsorted(t, cal[block.start], "left")), int(np.searchsorted(t, cal[block.stop - 1], "right"))
    return range(lo, max(lo, hi))


def segments(u: Universe, fold: Fold) -> dict:
    """symbol -> (train, val, test) bar ranges in that instrument's own positions: its bars whose times lie
    in the fold's blocks of the calendar."""
    return {sym: tuple(own_range(u, sym, r) for r in (fold.train, fold.val, fold.test)) for sym in u.frames}


def fold_dates(u: Universe, fold: Fold) -> dict:
    return {name: [str(u.calendar[r.start]), str(u.calendar[r.stop - 1])]
            for name, r in (("train", fold.train), ("validation", fold.val), ("test", fold.test))}


def store(u: Universe, tcfg) -> FeatureStore:
    """The feature store of ``tcfg``'s features and label barriers (built on first use, then shared)."""
    key = json.dumps([tcfg.feature_spec.to_dict(), tcfg.tbm.to_dict()], sort_keys=True)
    with u.lock:
        if key not in u.stores:
            u.stores[key] = FeatureStore.build_or_open(u.frames, tcfg.feature_spec, tcfg.tbm, root=u.store_root)
        return u.stores[key]


def prepare_fold(u: Universe, tcfg, fold: Fold, *, refit: bool = False):
    """The fold's pooled training data: train and validation blocks, or (``refit``) both as one training block."""
    segs = segments(u, fold)
    if refit:
        parts = {s: (range(tr.start if len(tr) else va.start, va.stop), None) for s, (tr, va, _) in segs.items()}
    else:
        parts = {s: (tr, va) for s, (tr, va, _) in segs.items()}
    return prepare_universe_segments(tcfg, store(u, tcfg), parts)


def window_logits(model, prep, which: str) -> np.ndarray:
    """The model's logits on ``prep``'s windows of ``which``, in ``prep.dataset(which)``'s order."""
    import torch

    ds = prep.dataset(which, prep.seq_len)
    out = []
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(ds), 1024):
            out.append(model(ds.batch(np.arange(lo, min(len(ds), lo + 1024)))[0]).float())
    prep.store.release()
    return torch.cat(out).numpy().astype(np.float64) if out else np.array([], dtype=np.float64)


def block_signals(u: Universe, model, prep, block: range, seq_len: int) -> dict:
    """symbol -> the model's probability on that instrument's bars up to the calendar ``block``'s end, NaN but
    on the block's bars whose window of normalised features is whole (as the single-instrument trials), for the
    instruments with bars in the block."""
    out = {}
    for sym in u.frames:
        val = own_range(u, sym, block)
        if len(val) < 2:  # a portfolio instrument needs two bars in the period (engine.portfolio.inputs)
            continue
        lo = max(0, val.start - seq_len + 1)
        x = normalised_rows(prep, sym, lo, val.stop)
        ok = np.isfinite(x).all(axis=1).astype(np.int64)
        csum = np.concatenate([[0], np.cumsum(ok)])
        ends = np.arange(max(val.start, lo + seq_len - 1), val.stop) - lo
        ends = ends[(csum[ends + 1] - csum[ends + 1 - seq_len]) == seq_len]
        prob = np.full(val.stop, np.nan)
        prob[ends + lo] = sigmoid(logits(model, x, seq_len, ends))
        out[sym] = pd.Series(prob, index=u.frames[sym].index[: val.stop])
    return out


def split_blocks(u: Universe, sym: str, split, embargo: int) -> list[range]:
    """``sym``'s training blocks of a combinatorial purged split, in its own bar positions: the split's training
    blocks (calendar ranges, purged before each test group), less ``embargo`` of the instrument's own bars after
    each test group (an instrument with gaps spans more calendar bars per window than the calendar embargo)."""
    blocks = []
    for r in split.train:
        own = own_range(u, sym, r)
        before = [t for t in split.test if t.stop <= r.start]
        if before:  # the windows of the block's first events must not read the test group's bars
            lo = own_range(u, sym, range(0, before[-1].stop)).stop + embargo
            own = range(max(own.start, lo), max(own.stop, lo))
        if len(own):
            blocks.append(own)
    return blocks


def prepare_blocks(u: Universe, tcfg, split, embargo: int):
    """A combinatorial purged split's pooled training data: each instrument's events inside its ``split_blocks``."""
    parts = {sym: (split_blocks(u, sym, split, embargo), None) for sym in u.frames}
    return prepare_universe_segments(tcfg, store(u, tcfg), parts)


def _bets(u: Universe, tcfg, signals: dict):
    """The portfolio's inputs from ``signals``: each instrument's bars up to the signal's end, its probabilities and
    its sides as ``space.bets`` gives them (no sides: long)."""
    frames, probs, sides = {}, {}, {}
    for sym, prob in signals.items():
        bars = u.frames[sym].iloc[: len(prob)]
        frames[sym] = bars
        probs[sym], side = space.bets(tcfg, bars, prob)
        if side is not None:
            sides[sym] = side
    return frames, probs, sides or None


def portfolio(u: Universe, cfg, tcfg, signals: dict, block: range, *, rules, run):
    """The portfolio backtest of ``signals`` (symbol -> probability on that instrument's bars up to the block's
    end) over the calendar ``block``; each instrument's sides as ``space.bets`` gives them."""
    frames, probs, sides = _bets(u, tcfg, signals)
    run = run.replace(start=u.calendar[block.start], end=u.calendar[block.stop - 1])
    return run_portfolio(frames, probs, sides=sides, rules=rules, costs=cfg.costs, run=run,
                         max_positions=u.max_positions)


def sweep_block(u: Universe, cfg, tcfg, signals: dict, block: range, grid, *, rules, run):
    """``portfolio`` for every row of ``grid`` in one call (``engine.sweep_portfolio``): the rows' headline numbers
    and equity curves."""
    frames, probs, sides = _bets(u, tcfg, signals)
    run = run.replace(start=u.calendar[block.start], end=u.calendar[block.stop - 1])
    return sweep_portfolio(frames, probs, grid.assign(max_positions=u.max_positions), sides=sides, rules=rules,
                           costs=cfg.costs, run=run, equity=True)


def validation_scores(bt) -> dict:
    """What a trial records of its validation portfolio (as the single-instrument trials)."""
    returns = bt.equity.pct_change().dropna()
    return {"sharpe": bt.stats["sharpe"], "sr": sharpe_ratio(returns), "total_return": bt.stats["total_return"],
            "n_trades": int(bt.stats["n_trades"]), "returns": returns.tolist()}


def test_signals(u: Universe, agent, fold: Fold) -> dict:
    """symbol -> the exported agent's probability on its bars up to the test block's end (warm-up from its
    history), for the instruments with bars in the block."""
    out = {}
    for sym, (_, _, test) in segments(u, fold).items():
        if len(test) < 2:
            continue
        if agent.symbols is not None:
            if sym not in agent.symbols:
                continue
            agent.select_symbol(sym)
        out[sym] = agent.predict_proba(u.frames[sym].iloc[: test.stop])
    return out
