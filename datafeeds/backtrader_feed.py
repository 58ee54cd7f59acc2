"""Wrap a `load_ohlcv` frame as a backtrader PandasData feed, with extra lines such as `signal`."""

from __future__ import annotations

import array

import numpy as np
import pandas as pd
import backtrader as bt
from backtrader.utils import date2num

from datafeeds.errors import DataError

_OHLCV = ("open", "high", "low", "close", "volume")
_BASE = bt.feeds.PandasData
# An extra line must not shadow a line, a parameter or an attribute of the base feed class.
_RESERVED = (
    frozenset(_BASE.datafields) | frozenset(_BASE.params._getkeys()) | frozenset(dir(_BASE))
    | {"p", "l", "data", "datas", "owner", "env", "cerebro"}  # set on instances, not in dir()
)


class _ArrayPandasData(_BASE):
    """PandasData that reads each row from arrays cached at start() instead of one ``.iloc`` per value.

    Same values and the same ``load()`` path (filters, from/to dates, time zones) as the stock feed,
    whose ``_load`` spends most of a preload in pandas scalar indexing (one lookup per line per bar).
    """

    def start(self):
        super().start()  # resolves self._colmapping to column positions
        frame = self.p.dataname
        fields = [f for f in self.getlinealiases() if f != "datetime" and self._colmapping[f] is not None]
        self._targets = [getattr(self.lines, f) for f in fields]
        self._values = frame.iloc[:, [self._colmapping[f] for f in fields]].to_numpy(dtype=np.float64)
        # Timestamps in the index (as to_backtrader builds it): the stock conversion, done once per row here.
        self._dtnums = (
            array.array("d", map(date2num, frame.index.to_pydatetime()))
            if self._colmapping["datetime"] is None else None
        )

    def _load(self):
        if self._dtnums is None:
            return super()._load()
        self._idx += 1
        if self._idx >= len(self._values):
            return False
        for line, value in zip(self._targets, self._values[self._idx].tolist()):
            line[0] = value
        self.lines.datetime[0] = self._dtnums[self._idx]
        return True


# () -> the stock class: a plain OHLCV feed is exactly bt.feeds.PandasData
_CLASSES: dict[tuple[str, ...], type] = {(): _BASE}


def to_backtrader(
    df: pd.DataFrame,
    *,
    name: str | None = None,
    timeframe: int | None = None,
    compression: int | None = None,
    **extra_lines: object,
) -> bt.feeds.PandasData:
    """A PandasData feed over `df`'s OHLCV plus one line per `extra_lines` entry (e.g. `signal=probs`).

    Each extra value is a column name of `df` or an array/Series of len(df) (a Series with a
    DatetimeIndex must have exactly `df.index`). openinterest is absent unless `df` has that column.
    `timeframe`/`compression` default to the median bar spacing (analyzers annualise with it);
    `name` defaults to ``df.attrs["source"]``.
    """
    where = str(df.attrs.get("source", "DataFrame")) if isinstance(df, pd.DataFrame) else "to_backtrader"
    _check_frame(df, where)
    names = tuple(extra_lines)
    _check_line_names(names, where)

    frame = pd.DataFrame({c: df[c].to_numpy(dtype=np.float64) for c in _OHLCV}, index=df.index)
    has_oi = "openinterest" in df.columns
    if has_oi:
        frame["openinterest"] = df["openinterest"].to_numpy(dtype=np.float64)
    for line, value in extra_lines.items():
        frame[line] = _line_values(df, line, value, where)

    tf, comp = _infer_timeframe(df.index)
    kwargs: dict[str, object] = {
        "dataname": frame,
        "datetime": None,  # the index holds the timestamps
        **{c: c for c in _OHLCV},
        "openinterest": "openinterest" if has_oi else None,
        "timeframe": tf if timeframe is None else timeframe,
        "compression": comp if compression is None else compression,
        **{line: line for line in names},
    }
    feed_name = name if name is not None else df.attrs.get("source")
    if feed_name:
        kwargs["name"] = str(feed_name)
    return _feed_class(names)(**kwargs)


def _feed_class(names: tuple[str, ...]) -> type:
    """PandasData subclass with the extra lines `names`, made once per tuple of names."""
    cls = _CLASSES.get(names)
    if cls is None:
        namespace = {
            "__module__": __name__,
            "lines": names,
            "params": tuple((n, None) for n in names),  # None = column absent unless passed
        }
        cls = type(_BASE)(f"PandasData_{'_'.join(names)}", (_ArrayPandasData,), namespace)
        _CLASSES[names] = cls
    return cls


def _check_frame(df: object, where: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"expected a pandas DataFrame, got {type(df).__name__}", file=where,
                        fix="pass the frame returned by load_ohlcv")
    if not isinstance(df.index, pd.DatetimeIndex) or df.index.tz is not None:
        raise DataError(f"index must be a tz-naive DatetimeIndex, got {type(df.index).__name__}",
                        file=where, column="datetime", fix="pass the frame returned by load_ohlcv")
    if len(df) == 0:
        raise DataError("the frame has no rows", file=where, fix="pass a non-empty frame")
    missing = [c for c in _OHLCV if c not in df.columns]
    if missing:
        raise DataError(f"missing columns {missing} (found: {', '.join(map(str, df.columns))})",
                        file=where, column=missing[0], fix="pass the frame returned by load_ohlcv")


def _check_line_names(names: tuple[str, ...], where: str) -> None:
    seen: set[str] = set()
    for line in names:
        low = line.lower()
        if not line.isidentifier() or line.startswith("_"):
            problem = "line name must be a Python identifier not starting with '_'"
        elif line in _RESERVED or low in _BASE.datafields:
            problem = "line name clashes with a built-in line, parameter or attribute of PandasData"
        elif low in seen:
            # PandasData matches column names case-insensitively.
            problem = "line name differs from another only in case"
        else:
            seen.add(low)
            continue
        raise DataError(problem, file=where, column=line, fix="choose another name, e.g. 'signal'")


def _line_values(df: pd.DataFrame, line: str, value: object, where: str) -> np.ndarray:
    if isinstance(value, str):
        if value not in df.columns:
            raise DataError(f"{line}={value!r} is not a column (found: {', '.join(map(str, df.columns))})",
                            file=where, column=value, fix="pass an existing column name or an array")
        value = df[value]
    elif isinstance(value, pd.Series) and isinstance(value.index, pd.DatetimeIndex):
        if not value.index.equals(df.index):
            raise DataError(f"the Series for line {line!r} has a different DatetimeIndex than the frame",
                            file=where, column=line, fix="reindex it to df.index first")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"values for line {line!r} are not numeric", file=where, column=line,
                        fix="pass numbers (NaN where there is no value)") from None
    if arr.ndim != 1 or len(arr) != len(df):
        raise DataError(f"values for line {line!r} have shape {arr.shape}, the frame has {len(df)} rows",
                        file=where, column=line, fix="pass one value per row of df")
    return arr


def _infer_timeframe(index: pd.DatetimeIndex) -> tuple[int, int]:
    """(TimeFrame, compression) from the median bar spacing; Days/1 when it cannot be told."""
    if len(index) < 2:
        return bt.TimeFrame.Days, 1
    step = float(pd.Series(index).diff().median().total_seconds())
    day = 86400.0
    # Weekends and holidays make the mean misleading; the median is the regular bar.
    if step >= 25 * day:
        return bt.TimeFrame.Months, 1
    if step >= 6 * day:
        return bt.TimeFrame.Weeks, 1
    if step >= day:
        return bt.TimeFrame.Days, max(1, round(step / day))
    if step >= 60:
        return bt.TimeFrame.Minutes, max(1, round(step / 60))
    return bt.TimeFrame.Seconds, max(1, round(step))
