"""Triple Barrier Method labels (AFML ch.3) with ATR-scaled horizontal barriers."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from .jit import njit_cached

from .average_true_range import atr_nb
from .rules import TBMConfig

log = logging.getLogger(__name__)

_REQUIRED_COLUMNS = ("high", "low", "close")


@njit_cached
def _triple_barrier_nb(high, low, close, atr, side, pt, sl, horizon):
    """First barrier touched after every bar t that has a side (+1 long, -1 short; 0 no event).

    The profit-taker is ``pt`` ATRs on the side's side of close[t] (above for a long, below for a short), the
    stop ``sl`` ATRs on the other. Returns (touch_idx int64, barrier int8: +1 upper, -1 lower, 0 vertical,
    touch_price float64), one entry per bar; left-out events (no side, ATR NaN, or t + horizon past the last
    bar) get touch_idx -1, barrier 0, price NaN.
    """
    n = close.shape[0]
    touch_idx = np.full(n, -1, dtype=np.int64)
    barrier = np.zeros(n, dtype=np.int8)
    touch_price = np.full(n, np.nan)
    for t in range(n - horizon):
        a = atr[t]
        s = side[t]
        if np.isnan(a) or s == 0:
            continue
        upper = close[t] + (pt if s > 0 else sl) * a
        lower = close[t] - (sl if s > 0 else pt) * a
        end = t + horizon
        touch_idx[t] = end
        touch_price[t] = close[end]
        for j in range(t + 1, end + 1):
            hit_low = low[j] <= lower
            hit_high = high[j] >= upper
            # When one bar spans both barriers, the order inside the bar is unknown and we assume the worst:
            # the stop first (the lower barrier for a long, the upper for a short).
            if hit_low and (s > 0 or not hit_high):
                touch_idx[t] = j
                barrier[t] = -1
                touch_price[t] = lower
                break
            if hit_high:
                touch_idx[t] = j
                barrier[t] = 1
                touch_price[t] = upper
                break
    return touch_idx, barrier, touch_price


def _validate_bars(df) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """high, low, close as float64 arrays after checking the frame; ValueError naming the problem."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"df must be a pandas DataFrame of OHLC bars, got {type(df).__name__}")
    missing = [c for c in _REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"df is missing column(s) {missing}; triple_barrier_labels needs {list(_REQUIRED_COLUMNS)}")
    if not isinstance(df.index, pd.DatetimeIndex):
        raise ValueError(
            f"df must have a DatetimeIndex, got {type(df.index).__name__}; load bars with datafeeds.load_ohlcv "
            "or set_index on the timestamp column"
        )
    if len(df.index) > 1:
        diffs = np.diff(df.index.asi8)
        if (diffs <= 0).any():
            pos = int(np.flatnonzero(diffs <= 0)[0]) + 1
            raise ValueError(
                f"df index must be strictly increasing; row {pos} ({df.index[pos]}) is not after "
                f"row {pos - 1} ({df.index[pos - 1]}); sort and de-duplicate the bars first"
            )
    arrays = []
    for col in _REQUIRED_COLUMNS:
        try:
            arr = np.ascontiguousarray(df[col].to_numpy(dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"column {col!r} is not numeric ({exc})") from exc
        bad = ~np.isfinite(arr)
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"column {col!r} has {int(bad.sum())} non-finite value(s), first at {df.index[pos]}; "
                "drop or fill them before labelling"
            )
        arrays.append(arr)
    return arrays[0], arrays[1], arrays[2]


def triple_barrier_labels(
    df: pd.DataFrame,
    *,
    pt: float | None = None,
    sl: float | None = None,
    horizon: int | None = None,
    atr_period: int | None = None,
    config: TBMConfig | None = None,
    side: int | pd.Series | np.ndarray | None = None,
) -> pd.DataFrame:
    """Triple Barrier label for every bar that has an ATR and a full horizon ahead.

    Conventions: reference price = close[t]; upper = close[t] + pt*ATR[t], lower = close[t] - sl*ATR[t]
    (ATR from `labeling.atr`, known at t's close); the path is bars t+1..t+horizon, an upper touch is
    high >= upper, a lower touch is low <= lower; if one bar touches both, the lower counts (pessimistic).
    No touch -> vertical barrier at t+horizon. Events with NaN ATR (the first `atr_period` bars) or with
    t+horizon > N-1 (the last `horizon` bars) are left out.

    Returns a frame indexed by event timestamp (`datetime`) with columns `label` (int8: 1 iff the upper
    barrier came first), `t1` (timestamp of the touch or of the vertical barrier; the label span is
    [t, t1], which purging needs), `ret` (touch_price / close[t] - 1), `barrier` (int8: +1 upper,
    -1 lower, 0 vertical). touch_price is the barrier price even when the bar gapped through it: the
    labels say which barrier was hit, not at what price a stop would have filled.
    Pass either `config` or the keyword parameters (those left out take TBMConfig's defaults), not both.

    ``side`` (AFML 3.6, meta-labels): the bet of each event, +1 long or -1 short: one side for every bar, a
    Series on some of ``df``'s timestamps (the events: only those bars are labelled) or an array of len(df).
    A short's profit-taker lies ``pt`` ATRs below close[t] and its stop ``sl`` ATRs above; a bar touching
    both counts as its stop (the upper barrier), as a long's counts as its stop (the lower). ``label`` is
    then the meta-label, 1 iff the side's profit-taker came first, and a ``side`` column is added;
    ``barrier`` and ``ret`` stay physical (upper/lower, the price move). ``side=None``: every bar long, the
    frame of before (no ``side`` column).
    """
    given = {k: v for k, v in (("pt", pt), ("sl", sl), ("horizon", horizon), ("atr_period", atr_period))
             if v is not None}
    if config is None:
        config = TBMConfig(**given)  # keywords not given take TBMConfig's defaults
    elif not isinstance(config, TBMConfig):
        raise ValueError(f"config must be a TBMConfig or None, got {type(config).__name__}")
    elif given:
        raise ValueError("pass either config=TBMConfig(...) or pt/sl/horizon/atr_period keywords, not both")

    high, low, close = _validate_bars(df)
    sides = event_sides(side, df.index)
    a = atr_nb(high, low, close, config.atr_period)
    touch_idx, barrier, touch_price = _triple_barrier_nb(high, low, close, a, sides, config.pt, config.sl,
                                                         config.horizon)

    events = np.flatnonzero(touch_idx >= 0)
    if events.size == 0:
        log.warning(
            "triple_barrier_labels: no events in %d bars (need more than atr_period + horizon = %d)",
            len(df), config.atr_period + config.horizon,
        )
    index = df.index[events]
    index = index.rename("datetime")
    b = barrier[events]
    columns = {
        "label": (b == sides[events]).astype(np.int8),  # the side's profit-taker (+1 upper long, -1 lower short)
        "t1": df.index[touch_idx[events]].to_numpy(),
        "ret": touch_price[events] / close[events] - 1.0,
        "barrier": b,
    }
    if side is not None:
        columns["side"] = sides[events]
    out = pd.DataFrame(columns, index=index)
    out.attrs["tbm"] = config.to_dict()
    return out


def event_sides(side, index: pd.DatetimeIndex) -> np.ndarray:
    """The side of every bar as int8 (+1, -1, 0 = no bet) from ``side``: a Series of +1/-1 on the bets' timestamps,
    one +1/-1 per bar, or one for every bar; None = +1 everywhere (labels and backtests read sides alike)."""
    n = len(index)
    if side is None:
        return np.ones(n, dtype=np.int8)
    if isinstance(side, pd.Series):
        where = index.get_indexer(side.index)
        if (where < 0).any():
            bad = side.index[where < 0][0]
            raise ValueError(f"side has timestamp {bad}, which is not a bar of df: give sides on df's timestamps")
        values = side.to_numpy()
        stamps = side.index
    elif np.ndim(side) == 0:
        values = np.full(n, side, dtype=object if isinstance(side, (bool, np.bool_, str)) else None)
        where, stamps = np.arange(n), index
    else:
        values = np.asarray(side)
        if values.shape != (n,):
            raise ValueError(f"side has shape {values.shape}; give one side per bar ({n},), a Series on event "
                             "timestamps, or +1/-1 for every bar")
        where, stamps = np.arange(n), index
    if values.dtype.kind in "iuf":  # numbers: checked as an array (a million bars in milliseconds)
        ok = (values == 1) | (values == -1)
    else:  # bools, text, objects: one by one (True == 1 in Python, yet not a side)
        ok = np.array([not isinstance(v, (bool, np.bool_)) and v in (1, -1) for v in values.tolist()], dtype=bool)
    if not ok.all():
        k = int(np.flatnonzero(~ok)[0])
        shown = values[k].item() if isinstance(values[k], np.generic) else values[k]
        raise ValueError(f"side at {stamps[k]} is {shown!r}; a side is +1 (long) or -1 (short): leave bars "
                         "without a bet out of the Series (e.g. side.dropna())")
    out = np.zeros(n, dtype=np.int8)
    out[where] = values.astype(np.int64)
    return out


def label_spans(labels: pd.DataFrame, bars_index: pd.DatetimeIndex) -> tuple[np.ndarray, np.ndarray]:
    """(event bar positions, label-end bar positions) as int64 arrays, positions in `bars_index`.

    These feed `labeling.splits`, which works on bar positions.
    """
    if not {"t1"} <= set(labels.columns):
        raise ValueError("labels must be the output of triple_barrier_labels (needs a 't1' column)")
    bars_index = pd.DatetimeIndex(bars_index)
    ev = bars_index.get_indexer(labels.index)
    t1 = bars_index.get_indexer(pd.DatetimeIndex(labels["t1"]))
    for name, pos, stamps in (("event", ev, labels.index), ("t1", t1, labels["t1"])):
        if (pos < 0).any():
            first = np.asarray(stamps)[int(np.flatnonzero(pos < 0)[0])]
            raise ValueError(f"label_spans: {name} timestamp {first} is not in bars_index; "
                             "pass the index of the bars that were labelled")
    return ev.astype(np.int64), t1.astype(np.int64)
