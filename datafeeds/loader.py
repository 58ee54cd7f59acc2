"""Load an OHLCV sample or file (.csv, .csv.gz, .parquet) into a validated float64 frame."""

from __future__ import annotations

import logging
import os
import re
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_datetime64_any_dtype, is_numeric_dtype

from datafeeds.budget import check_csv, check_parquet
from datafeeds.dates import parse_date
from datafeeds.errors import DataError
from datafeeds.frequency import bar_seconds
from datafeeds.samples import _is_sample, _unknown_sample, file_sha256, sample_info

_LOG = logging.getLogger(__name__)

_PRICES = ("open", "high", "low", "close")
_OHLCV = (*_PRICES, "volume")
_SUFFIXES = (".csv.gz", ".csv", ".parquet")

# Normalised header (lower case, runs of space/_/-/./<> collapsed to one space) -> role.
_ALIASES = {
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "volume": "volume",
    "vol": "volume",
    "datetime": "datetime",
    "date time": "datetime",
    "timestamp": "datetime",
    "time stamp": "datetime",
    "date": "date",
    "time": "time",
    "adj close": "adj close",
    "adjclose": "adj close",
    "adjusted close": "adj close",
}
_TIME_ROLES = ("datetime", "date", "time")


@dataclass
class _Table:
    """Columns as numpy arrays plus where each row came from, for error messages."""

    file: str
    unit: str  # "line" (CSV: 1-based line in the file, header = 1) or "row" (parquet: 1-based)
    lines: np.ndarray
    time_col: str = "datetime"
    ts: np.ndarray | None = None
    cols: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # warnings for the caller to emit

    def where(self, pos: int) -> str:
        loc = f"{self.unit} {int(self.lines[pos])}"
        if self.ts is not None and not np.isnat(self.ts[pos]):
            loc += f" ({pd.Timestamp(self.ts[pos])})"
        return loc

    def header(self) -> str:
        return "line 1 (header)" if self.unit == "line" else "schema"

    def first(self, mask: np.ndarray) -> int:
        """Position of the offending row that comes first in the file."""
        hits = np.flatnonzero(mask)
        return int(hits[np.argmin(self.lines[hits])])

    def error(self, problem: str, *, pos: int | None = None, column: str | None = None,
              fix: str | None = None, header: bool = False) -> DataError:
        row = self.header() if header else (None if pos is None else self.where(pos))
        return DataError(problem, file=self.file, row=row, column=column, fix=fix)


def load_ohlcv(
    source: str | os.PathLike,
    *,
    start: object = None,
    end: object = None,
    min_rows: int = 1,
) -> pd.DataFrame:
    """Load a bundled sample (see `list_samples()`) or a .csv/.csv.gz/.parquet file, validated.

    Returns float64 columns open, high, low, close, volume, then any other numeric columns
    (non-numeric ones are dropped), indexed by a tz-naive, strictly increasing DatetimeIndex
    named ``datetime``; ``attrs["source"]`` and ``attrs["sha256"]`` record the input.

    Conventions:
    - Headers are matched case-insensitively: date/datetime/timestamp/time, or separate Date
      and Time columns (combined); open/high/low/close; volume or vol. A parquet file may
      carry the timestamps as its index.
    - ``Adj Close`` is ignored: prices are used as given, never adjusted.
    - A file without a volume column gets volume 0.0 and a warning.
    - Time zones (``2020-01-03 20:00-05:00``, or a tz-aware parquet column): on intraday bars the
      timestamps are converted to UTC; on daily or coarser bars (median spacing >= 20 hours) each
      keeps the date and time it shows in its own zone, the zone dropped without converting, so a
      Friday's bar stamped 20:00-05:00 stays on Friday. The rule applied is logged (INFO).
    - Unsorted rows are sorted with a warning; any other defect raises `DataError`.
    - ``start``/``end`` are inclusive; an ``end`` string covers its whole resolution like
      ``df.loc``: ``end="2006-01-31"`` keeps that whole day on intraday data.
    - ``min_rows``: fewer rows than this (after slicing) is a `DataError`.
    - A file whose load would not fit in the memory that applies (the cgroup limit, else MemAvailable)
      is refused before pandas reads it, and so is binary junk (NUL bytes): see `datafeeds.budget`.
    """
    path, label, source_name = _resolve(source)
    lo = _parse_bound(start, "start", label)
    hi = _parse_bound(end, "end", label)
    if lo is not None and hi is not None and lo > hi:
        raise DataError(f"start {start} is after end {end}", file=label, fix="swap start and end")
    if isinstance(min_rows, bool) or not isinstance(min_rows, (int, np.integer)) or min_rows < 1:
        raise DataError(f"min_rows must be an integer >= 1, got {min_rows!r}", file=label,
                        fix="pass min_rows=1 or more")

    t = _read(path, label)
    _validate(t)
    df = pd.DataFrame(t.cols, index=pd.DatetimeIndex(t.ts, name="datetime"))
    df = _slice(df, lo, hi, start, end, label)
    if len(df) < min_rows:
        raise DataError(
            f"only {len(df)} rows{_period_text(start, end)}, need min_rows={min_rows}",
            file=label, fix="widen start/end or use a longer file",
        )
    for note in t.notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    df.attrs["source"] = source_name
    df.attrs["sha256"] = file_sha256(path)
    return df


# --------------------------------------------------------------------------- input


def _resolve(source: object) -> tuple[Path, str, str]:
    """(file path, label for messages, value for attrs["source"])."""
    if _is_sample(source):
        return Path(sample_info(source)["path"]), f"sample {source!r}", source
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(f"source must be a sample name or a path, got {type(source).__name__}",
                        fix="pass a name from list_samples() or a file path")
    path = Path(source).expanduser()
    text = os.fspath(source)
    if not path.exists():
        looks_like_name = isinstance(source, str) and not path.suffix and not re.search(r"[\\/]", text)
        if looks_like_name:
            raise _unknown_sample(source)
        raise DataError("file not found", file=str(path.absolute()),
                        fix="check the path (or pass a name from list_samples())")
    path = path.resolve()
    if path.is_dir():
        raise DataError("is a directory, not a file", file=str(path), fix="pass the data file inside it")
    if not path.is_file():  # a FIFO would block the read for ever, a device never end
        raise DataError("not a regular file (a FIFO, device or socket)", file=str(path),
                        fix="save the data to a .csv, .csv.gz or .parquet file and pass that")
    if not path.name.lower().endswith(_SUFFIXES):
        raise DataError(f"unsupported file type {''.join(path.suffixes) or '(no extension)'!r}",
                        file=str(path), fix="convert it to .csv, .csv.gz or .parquet")
    return path, str(path), str(path)


def _read(path: Path, label: str) -> _Table:
    try:
        if path.name.lower().endswith(".parquet"):
            check_parquet(path, label)  # rows x columns from the footer fit in memory
            raw = pd.read_parquet(path)
            raw = _parquet_index_to_column(raw)
            t = _Table(label, "row", np.arange(1, len(raw) + 1))
        else:
            check_csv(path, label)  # streamed once: fits in memory, text only (no NUL bytes)
            # Blank lines kept (then dropped below) so row i stays on file line i + 2.
            raw = pd.read_csv(path, skip_blank_lines=False, low_memory=False)
            t = _Table(label, "line", np.arange(2, len(raw) + 2))
            for col in map(str, raw.columns):  # read_csv renames a repeated header "close" to "close.1"
                m = re.fullmatch(r"(.+)\.\d+", col)
                if m and m.group(1) in raw.columns:
                    raise t.error("duplicate column name", column=m.group(1), header=True, fix="rename one of them")
            blank = raw.isna().all(axis=1).to_numpy()
            if blank.any():
                raw = raw.loc[~blank]
                t.lines = t.lines[~blank]
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError("empty file: no header and no rows", file=label,
                        fix="write a header line (datetime,open,high,low,close,volume) and data rows") from None
    except pd.errors.ParserError as exc:
        m = re.search(r"line (\d+)", str(exc))
        row = f"line {m.group(1)}" if m else None
        raise DataError(f"malformed CSV ({_short(exc)})", file=label, row=row,
                        fix="make every row have the same number of comma-separated fields as the header") from None
    except UnicodeDecodeError:
        raise DataError("not a UTF-8 text file", file=label, fix="save it as UTF-8 CSV") from None
    except (ValueError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read the file ({_short(exc)})", file=label,
                        fix="check that it is an intact .csv, .csv.gz or .parquet file") from None
    if raw.shape[1] == 0:
        raise DataError("empty file: no columns", file=label, fix="write a header line and data rows")
    if len(raw) == 0:
        raise DataError("no data rows, only a header", file=label, row=t.header(), fix="add data rows")
    _columns_into(t, raw)
    return t


def _parquet_index_to_column(raw: pd.DataFrame) -> pd.DataFrame:
    if isinstance(raw.index, pd.RangeIndex):
        return raw
    name = raw.index.name
    if isinstance(raw.index, pd.DatetimeIndex) and "datetime" not in raw.columns:
        name = "datetime"  # a datetime index is the timestamp column, whatever its name
    elif name is None or name in raw.columns:
        name = "index"
    return raw.rename_axis(name).reset_index()


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _norm(name: object) -> str:
    return re.sub(r"[\s_.\-<>]+", " ", str(name).lower()).strip()


def _columns_into(t: _Table, raw: pd.DataFrame) -> None:
    """Map headers to roles, parse timestamps and numbers into `t`."""
    roles: dict[str, str] = {}
    for col in raw.columns:
        role = _ALIASES.get(_norm(col))
        if role is None:
            continue
        if role in roles:
            raise t.error(f"columns {roles[role]!r} and {col!r} both mean {role!r}", column=str(col),
                          header=True, fix="drop or rename one of them")
        roles[role] = col
    found = ", ".join(map(str, raw.columns))
    if len(raw.columns) == 1 and re.search(r"[;\t|]", str(raw.columns[0])):
        raise t.error(f"only one column {raw.columns[0]!r}: the file is not comma-separated",
                      header=True, column=str(raw.columns[0]), fix="convert it to comma-separated CSV")

    _timestamps_into(t, raw, roles, found)

    for name in _PRICES:
        if name not in roles:
            raise t.error(f"required column missing (found: {found})", column=name, header=True,
                          fix=f"add it or rename the matching header to {name!r}")
        t.cols[name] = _numbers(t, raw[roles[name]], str(roles[name]))
    if "volume" in roles:
        t.cols["volume"] = _numbers(t, raw[roles["volume"]], str(roles["volume"]))
    else:
        t.cols["volume"] = np.zeros(len(raw))
        t.notes.append(f"{t.file}: no volume column (found: {found}); volume set to 0.0 on every row")
    if "adj close" in roles:
        _LOG.debug("%s: ignoring %r (prices are not adjusted)", t.file, roles["adj close"])

    used = set(roles.values())
    for col in raw.columns:
        if col in used:
            continue
        s = raw[col]
        if _norm(col).startswith("unnamed"):
            _LOG.debug("%s: dropping unnamed column %r (a saved index?)", t.file, col)
        elif str(col) in t.cols:
            raise t.error("duplicate column name", column=str(col), header=True, fix="rename one of them")
        elif is_numeric_dtype(s) or is_bool_dtype(s):
            t.cols[str(col)] = s.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            _LOG.debug("%s: dropping non-numeric column %r (dtype %s)", t.file, col, s.dtype)


def _timestamps_into(t: _Table, raw: pd.DataFrame, roles: dict[str, str], found: str) -> None:
    if "datetime" in roles:
        col = roles["datetime"]
        text, label = raw[col], str(col)
    elif "date" in roles and "time" in roles:
        d, tm = raw[roles["date"]], raw[roles["time"]]
        both = d.notna() & tm.notna()
        text = (d.astype(str) + " " + tm.astype(str)).where(both)
        label = f"{roles['date']}+{roles['time']}"
    elif "date" in roles:
        col = roles["date"]
        text, label = raw[col], str(col)
    elif "time" in roles:
        col = roles["time"]
        text, label = raw[col], str(col)
        first = str(text.dropna().iloc[0]) if text.notna().any() else ""
        if len(first) <= 8 and ":" in first:  # "09:30" or "09:30:00": pandas would stamp it with today's date
            raise t.error(f"column holds times of day only ({first!r}), no dates", pos=0, column=label,
                          fix="add a date column (Date + Time are combined) or full timestamps")
    else:
        raise t.error(f"no timestamp column (found: {found})", column="datetime", header=True,
                      fix="name it datetime, date, timestamp or time (or give Date and Time columns)")
    t.time_col = label
    iso = _day_month_dates(t, text, label)
    ts, zoned = _to_naive_datetime64(text if iso is None else iso)
    if zoned:
        ts = _zone_rule(t, text if iso is None else iso, ts)
    bad = np.isnat(ts)
    if bad.any():
        pos = t.first(bad)
        value = text.iloc[pos]
        problem = "missing timestamp" if pd.isna(value) else f"cannot parse timestamp {str(value)!r}"
        raise t.error(problem, pos=pos, column=label,
                      fix="use one format throughout, e.g. 2020-01-31 or 2020-01-31 09:30:00")
    t.ts = ts


_DMY = r"^\s*(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})(.*)$"  # 03/04/2015, 3.4.2015, 03-04-2015 10:00


def _day_month_dates(t: _Table, text: pd.Series, label: str) -> pd.Series | None:
    """Dates written a/b/yyyy are month-first or day-first; pandas reads each cell the way that parses,
    so a day-first file comes out partly month-first. Read the whole column both ways and keep the one
    valid on every row and in time order (either direction), as ISO text; refuse when both are.
    None: not such dates."""
    if is_datetime64_any_dtype(text) or is_numeric_dtype(text):
        return None
    cells = text.astype("string")
    first = cells.dropna()
    if first.empty or re.match(_DMY, str(first.iloc[0])) is None:  # the usual case: one cell decides
        return None
    parts = cells.str.extract(_DMY)
    if not (parts[0].notna() | cells.isna()).all() or cells.isna().all():
        return None

    def iso(month, day) -> pd.Series:
        text = parts[2] + "-" + parts[month].str.zfill(2) + "-" + parts[day].str.zfill(2) + parts[3].fillna("")
        return text.where(parts[0].notna())

    def read(month, day) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _to_naive_datetime64(iso(month, day))[0]

    def ordered(ts) -> bool:
        d = np.diff(ts[~np.isnat(ts)].astype("int64"))
        return bool((d > 0).all() or (d < 0).all())

    month_first, day_first = read(0, 1), read(1, 0)
    known = cells.notna().to_numpy()
    ok_m, ok_d = (not np.isnat(month_first[known]).any()), (not np.isnat(day_first[known]).any())
    if ok_m and ok_d and np.array_equal(month_first, day_first):  # every day equals its month: no question
        return iso(0, 1)
    if ok_m and ok_d:
        in_order = [name for name, ts in (("month/day/year", month_first), ("day/month/year", day_first))
                    if ordered(ts)]
        if len(in_order) != 1:
            raise t.error(f"dates like {str(cells.dropna().iloc[0])!r} read as month/day/year and as day/month/year "
                          f"are both valid{' and both in time order' if in_order else ''}; the order cannot decide",
                          pos=0, column=label, fix="write the dates as YYYY-MM-DD")
        chosen = in_order[0]
    elif ok_m or ok_d:
        chosen = "month/day/year" if ok_m else "day/month/year"
    else:
        return None  # neither reading parses every row: the general parser reports the first bad cell
    if chosen == "day/month/year":
        t.notes.append(f"{t.file}: column {label!r} read as day/month/year (the only reading "
                       f"{'in time order' if ok_m else 'valid on every row'})")
        return iso(1, 0)
    return iso(0, 1)


def _to_naive_datetime64(values: pd.Series) -> tuple[np.ndarray, bool]:
    """(datetime64 instants in UTC, zone dropped, NaT where unparsable; whether they carried a zone).
    Text without a zone is taken as it reads."""
    if is_datetime64_any_dtype(values):
        s, zoned = values, values.dt.tz is not None
    else:
        if is_numeric_dtype(values) and not is_bool_dtype(values):
            # Integer dates like 20200131; floats appear when blank cells forced a float column.
            values = values.astype("Int64").astype("string") if _integral(values) else values.astype("string")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas' "could not infer format" chatter
            s, zoned = _parse_times(values)
            if (s.isna() & values.notna()).any():
                s, zoned = _parse_times(values, format="mixed")
    if zoned:
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    return s.to_numpy(), zoned


def _parse_times(values: pd.Series, **options) -> tuple[pd.Series, bool]:
    """pandas' parse (NaT where it fails) and whether the result carries a zone; offsets that differ
    from cell to cell (summer time, zoned and plain cells mixed) are parsed as UTC instants."""
    try:
        s = pd.to_datetime(values, errors="coerce", **options)
    except ValueError:  # "Mixed timezones detected"
        return pd.to_datetime(values, utc=True, errors="coerce", **options), True
    return s, s.dt.tz is not None


# Bars this far apart or more (median spacing) are daily or coarser: they keep their local date.
_DAILY_SECONDS = 20 * 3600


def _zone_rule(t: _Table, values: pd.Series, utc: np.ndarray) -> np.ndarray:
    """Zoned timestamps: intraday bars in UTC; daily (or coarser) bars at their own local date and time,
    the zone dropped, not converted (a Friday's bar stamped 20:00-05:00 stays on Friday)."""
    spacing = bar_seconds(utc)
    hours = "?" if spacing is None else f"{spacing / 3600:,.1f} h"
    if spacing is None or spacing < _DAILY_SECONDS:
        _LOG.info("%s: timestamps carry a time zone and the bars are intraday (median spacing %s): converted "
                  "to UTC, zone dropped", t.file, hours)
        return utc
    _LOG.info("%s: timestamps carry a time zone and the bars are daily or coarser (median spacing %s): each "
              "keeps its local date and time, zone dropped (not converted to UTC)", t.file, hours)
    return _wall_clock(values, utc)


def _wall_clock(values: pd.Series, utc: np.ndarray) -> np.ndarray:
    """Each timestamp's date and time as written in its own zone, zone dropped; NaT where ``utc`` is."""
    if is_datetime64_any_dtype(values):
        return values.dt.tz_localize(None).to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            s = pd.to_datetime(values, errors="coerce")  # one fixed offset throughout: vectorised
            wall = (s.dt.tz_localize(None) if s.dt.tz is not None else s).to_numpy()
        except (ValueError, TypeError):  # offsets that change (summer time), or zoned and plain cells mixed
            wall = np.full(len(values), np.datetime64("NaT"), dtype=utc.dtype)
        redo = np.flatnonzero(np.isnat(wall) & ~np.isnat(utc))
        for i in redo:  # one at a time, only what the vectorised parse missed (daily files are small)
            wall[i] = _naive(values.iloc[i])
    return wall.astype(utc.dtype)


def _naive(value: object) -> np.datetime64:
    """``value`` parsed alone, its zone dropped without converting; NaT if it does not parse."""
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError):
        return np.datetime64("NaT")
    return (ts.tz_localize(None) if ts.tzinfo is not None else ts).to_datetime64()


def _integral(values: pd.Series) -> bool:
    v = values.to_numpy(dtype=np.float64, na_value=np.nan)
    v = v[~np.isnan(v)]
    return bool(np.all(v == np.round(v)))


def _numbers(t: _Table, s: pd.Series, column: str) -> np.ndarray:
    if is_numeric_dtype(s) or is_bool_dtype(s):
        return s.to_numpy(dtype=np.float64, na_value=np.nan)
    coerced = pd.to_numeric(s, errors="coerce")
    bad = (coerced.isna() & s.notna()).to_numpy()
    if bad.any():
        pos = t.first(bad)
        raise t.error(f"{str(s.iloc[pos])!r} is not a number", pos=pos, column=column,
                      fix="use plain numbers with a '.' decimal point and no thousands separator")
    return coerced.to_numpy(dtype=np.float64, na_value=np.nan)


# --------------------------------------------------------------------------- checks


def _validate(t: _Table) -> None:
    """Sort (with a warning) and check the bars; first offending row in file order is reported."""
    ts = t.ts
    back = ts[1:] < ts[:-1]
    if back.any():
        i = int(np.argmax(back)) + 1
        t.notes.append(
            f"{t.file}, {t.where(i)}: rows are not in time order (earlier than {t.unit} "
            f"{int(t.lines[i - 1])}); sorted them by timestamp"
        )
        order = np.argsort(ts, kind="stable")
        t.ts, t.lines = ts[order], t.lines[order]
        t.cols = {k: v[order] for k, v in t.cols.items()}
        ts = t.ts

    dup = np.zeros(len(ts), dtype=bool)
    dup[1:] = ts[1:] == ts[:-1]
    if dup.any():
        pos = t.first(dup)
        raise t.error(f"duplicate timestamp (same as {t.unit} {int(t.lines[pos - 1])})", pos=pos,
                      column=t.time_col, fix="remove or merge the duplicate rows")

    prices = np.column_stack([t.cols[c] for c in _PRICES])
    _check_cells(t, prices, ~np.isfinite(prices), _PRICES, "price is {v}", "fill or remove the row")
    _check_cells(t, prices, prices <= 0, _PRICES, "non-positive price {v}", "prices must be > 0; fix or remove the row")
    # features are float32: a price beyond its range turns every later feature row into inf/NaN
    _check_cells(t, prices, prices > _MAX_VALUE, _PRICES, "price {v:g} is beyond the float32 range (3.4e38)",
                 "fix or remove the row")
    # a bar more than 1,000x (or under 1/1,000 of) the previous close: no market moves so; a corrupt cell
    prev = np.concatenate([[np.nan], t.cols["close"][:-1]])
    with np.errstate(invalid="ignore"):
        ratio = np.maximum(prices / prev[:, None], prev[:, None] / prices)
    _check_cells(t, ratio, ratio > _MAX_JUMP, _PRICES, "price is {v:,.0f}x the previous row's close",
                 "a bar 1,000x away from its neighbour is a corrupt cell: fix or remove the row")

    o, h, lo, c = (t.cols[k] for k in _PRICES)
    top, bottom = np.maximum(o, c), np.minimum(o, c)
    bad = (h < lo) | (h < top) | (lo > bottom)
    if bad.any():
        i = t.first(bad)
        if h[i] < lo[i]:
            problem, col = f"high {h[i]:g} is below low {lo[i]:g}", "high"
        elif h[i] < top[i]:
            problem, col = f"high {h[i]:g} is below max(open, close) {top[i]:g}", "high"
        else:
            problem, col = f"low {lo[i]:g} is above min(open, close) {bottom[i]:g}", "low"
        raise t.error(problem, pos=i, column=col, fix="correct the bar or remove the row")

    vol = t.cols["volume"][:, None]
    _check_cells(t, vol, ~np.isfinite(vol), ("volume",), "volume is {v}", "use 0 where volume is unknown")
    _check_cells(t, vol, vol < 0, ("volume",), "negative volume {v:g}", "volume must be >= 0; fix or remove the row")
    _check_cells(t, vol, vol > _MAX_VALUE, ("volume",), "volume {v:g} is beyond the float32 range (3.4e38)",
                 "fix or remove the row")


_MAX_VALUE = float(np.finfo(np.float32).max)
_MAX_JUMP = 1_000.0


def _check_cells(t: _Table, values: np.ndarray, bad: np.ndarray, names: tuple[str, ...],
                 problem: str, fix: str) -> None:
    rows = bad.any(axis=1)
    if rows.any():
        i = t.first(rows)
        j = int(np.argmax(bad[i]))
        raise t.error(problem.format(v=values[i, j]), pos=i, column=names[j], fix=fix)


# --------------------------------------------------------------------------- period


def _parse_bound(value: object, name: str, label: str) -> pd.Timestamp | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            ts = parse_date(value)
        except ValueError as exc:
            raise DataError(f"{name}: {exc}", file=label) from None
    else:
        try:
            ts = pd.Timestamp(value)
        except (ValueError, TypeError, OverflowError):
            ts = pd.NaT
    if pd.isna(ts):
        raise DataError(f"{name}={value!r} is not a timestamp", file=label,
                        fix=f"pass {name} like '2020-01-31' or '2020-01-31 09:30'")
    if ts.tzinfo is not None:
        return ts.tz_convert("UTC").tz_localize(None)
    if name == "end" and isinstance(value, str):
        # A date string means the whole day (a month string the whole month), as df.loc does.
        try:
            period = pd.Period(value)
        except (ValueError, TypeError):
            return ts
        if period.start_time == ts:
            return period.end_time
    return ts


def _slice(df: pd.DataFrame, lo, hi, start, end, label: str) -> pd.DataFrame:
    if lo is None and hi is None:
        return df
    idx = df.index
    a = 0 if lo is None else int(idx.searchsorted(lo, side="left"))
    b = len(idx) if hi is None else int(idx.searchsorted(hi, side="right"))
    if a >= b:
        raise DataError(
            f"period{_period_text(start, end)} selects no rows; the file covers {idx[0]} to {idx[-1]}",
            file=label, fix="choose start/end inside that range",
        )
    return df.iloc[a:b]


def _period_text(start: object, end: object) -> str:
    if start is None and end is None:
        return ""
    return f" from {start if start is not None else 'the start'} to {end if end is not None else 'the end'}"
