"""Whether an input file fits in the memory that applies, checked before pandas reads it.

The budget is what this process may still allocate (`datafeeds.memory.memory_budget`: the cgroup limit
less what is in use, capped by MemAvailable). A CSV is streamed once in 1 MiB chunks (a .csv.gz is
decompressed in the stream, so a gzip bomb is stopped as soon as it is over the budget): the scan counts
bytes, rows and fields, and refuses NUL bytes and other binary junk naming the line, before pandas
would tokenize all of it. A parquet file is judged from its footer (rows, columns, uncompressed size).

What pandas needs grows with rows and fields, not bytes (the measured table: docs/DECISIONS.md).
"""

from __future__ import annotations

import codecs
import gzip
import re
import zlib
from pathlib import Path

from datafeeds.errors import DataError
from datafeeds.memory import MIB, memory_budget, size_text

# CSV: bytes needed = CSV_PER_BYTE * text bytes + CSV_PER_ROW * rows + CSV_PER_FIELD * fields (docs/DECISIONS.md;
# the tokenizer holds the text once, then ~100 bytes per row and ~16 per cell of parsed values and copies).
CSV_PER_BYTE = 1
CSV_PER_ROW = 96
CSV_PER_FIELD = 16
# parquet: uncompressed column data + PARQUET_PER_ROW * rows + PARQUET_PER_CELL * rows * columns (arrow,
# the pandas copy and ours; set a little above the measured peak: docs/DECISIONS.md)
PARQUET_PER_ROW = 64
PARQUET_PER_CELL = 40
SCAN_CHUNK = MIB  # bytes of (decompressed) text read at a time by the scan
# Bytes no text CSV holds: C0 controls but tab, LF and CR; DEL. (A sparse or truncated copy is NULs.)
_JUNK = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
_JUNK_RE = re.compile(b"[" + re.escape(_JUNK) + b"]")
_LF = b"\n"
_FIX = ("split the file into smaller ones (fewer rows each: a directory of them loads one by one as a "
        "universe) or raise the container's memory limit")


def check_csv(path: Path, label: str) -> None:
    """Refuse (DataError, one line) a .csv/.csv.gz whose load would not fit in memory, or with binary junk."""
    budget, source = memory_budget()
    gz = path.name.lower().endswith(".gz")
    size = path.stat().st_size
    if not gz and CSV_PER_BYTE * size > budget:  # the text alone does not fit: nothing is read
        raise _too_big(label, f"{size_text(size)} of text", CSV_PER_BYTE * size, budget, source)
    decoder = codecs.getincrementaldecoder("utf-8")()
    total = rows = commas = 0
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            while chunk := fh.read(SCAN_CHUNK):
                _check_text(chunk, decoder, rows, label)
                rows, commas, total = rows + chunk.count(b"\n"), commas + chunk.count(b","), total + len(chunk)
                need = _csv_need(total, rows, commas)
                if not gz and total == len(chunk) and total < size:  # first chunk: extrapolate to the file
                    need = int(need * size / total)
                    if need > budget:
                        raise _too_big(label, f"{size_text(size)} of text, ~{int(rows * size / total):,} rows", need,
                                       budget, source)
                elif need > budget:
                    what = f"over {size_text(total)} of text, {rows:,} rows read" + (
                        f" (decompressed so far from a {size_text(size)} .gz file; stopped there)" if gz else "")
                    raise _too_big(label, what, need, budget, source)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DataError("not a UTF-8 text file: the text ends inside a character", file=label,
                        row=f"line {rows + 1}", fix="save it as UTF-8 CSV") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read the file ({' '.join(str(exc).split())[:200] or type(exc).__name__})",
                        file=label, fix="check that it is an intact .csv or .csv.gz file") from None


def check_parquet(path: Path, label: str) -> None:
    """Refuse (DataError, one line) a parquet file whose rows and columns (from its footer) would not fit."""
    import pyarrow.parquet as pq

    budget, source = memory_budget()
    size = path.stat().st_size
    if size > budget:
        raise _too_big(label, f"{size_text(size)} of parquet", size, budget, source)
    meta = pq.read_metadata(path)
    raw = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    need = raw + meta.num_rows * (PARQUET_PER_ROW + PARQUET_PER_CELL * meta.num_columns)
    if need > budget:
        what = f"{size_text(size)} of parquet, {meta.num_rows:,} rows x {meta.num_columns} columns"
        raise _too_big(label, what, need, budget, source)


def _csv_need(text_bytes: int, rows: int, commas: int) -> int:
    """Bytes pandas needs to load that much CSV (module docstring); every line has commas + 1 fields."""
    return CSV_PER_BYTE * text_bytes + CSV_PER_ROW * rows + CSV_PER_FIELD * (commas + rows)


def _check_text(chunk: bytes, decoder, rows_before: int, label: str) -> None:
    """Refuse binary junk and invalid UTF-8 in ``chunk``, naming the line it is on."""
    if len(chunk.translate(None, _JUNK)) != len(chunk):  # C speed; the regex only finds where
        at = _JUNK_RE.search(chunk).start()
        byte = chunk[at]
        name = " (NUL)" if byte == 0 else ""
        raise DataError(f"binary data, not CSV text: byte 0x{byte:02x}{name}", file=label,
                        row=_line(chunk, at, rows_before),
                        fix="the file is binary or damaged (a truncated or sparse copy?): export it again as text CSV")
    pending = len(decoder.getstate()[0])
    try:
        decoder.decode(chunk)
    except UnicodeDecodeError as exc:
        at = max(0, exc.start - pending)
        raise DataError(f"not a UTF-8 text file (byte 0x{chunk[min(at, len(chunk) - 1)]:02x})", file=label,
                        row=_line(chunk, at, rows_before),
                        fix="save it as UTF-8 CSV") from None


def _line(chunk: bytes, at: int, rows_before: int) -> str:
    """"line N" of byte ``at`` of ``chunk``, which starts after ``rows_before`` line breaks."""
    return f"line {rows_before + chunk.count(_LF, 0, at) + 1}"


def _too_big(label: str, what: str, need: int, budget: int, source: str) -> DataError:
    return DataError(f"too large to load: {what} need ~{size_text(need)}, over the {size_text(budget)} this process "
                     f"may still use ({source})", file=label, fix=_FIX)
