"""The bundled sample data sets: names, provenance (samples.json) and file hashing."""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from functools import lru_cache
from pathlib import Path

from datafeeds.errors import DataError

_SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
_CHUNK = 1 << 20


@lru_cache(maxsize=1)
def _catalogue() -> dict[str, dict]:
    with open(_SAMPLES_DIR / "samples.json", encoding="utf-8") as fh:
        return json.load(fh)


def list_samples() -> list[str]:
    """Names of the bundled samples, sorted; each is a valid `source` for `load_ohlcv`."""
    return sorted(_catalogue())


def samples_table() -> str:
    """The bundled samples as a text table: name, bar size, rows, period, licence and source."""
    rows = [("name", "bar", "rows", "period", "licence", "source")]
    for name in list_samples():
        info = _catalogue()[name]
        rows.append((name, info["bar"], f"{info['rows']:,}", f"{info['first'][:10]} .. {info['last'][:10]}",
                     info["licence"], info["source"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows)


def sample_info(name: str) -> dict:
    """The samples.json entry of sample `name` plus `name` and `path` (absolute, str)."""
    info = copy.deepcopy(_catalogue().get(name)) if isinstance(name, str) else None
    if info is None:
        raise _unknown_sample(name)
    info["name"] = name
    info["path"] = str(_SAMPLES_DIR / info["file"])
    return info


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks so large files don't fill memory."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    except FileNotFoundError:
        raise DataError("file not found", file=str(path), fix="check the path") from None
    except OSError as exc:
        raise DataError(f"cannot read the file ({exc.strerror})", file=str(path),
                        fix="check that it is a readable file") from None
    return digest.hexdigest()


def _is_sample(name: object) -> bool:
    return isinstance(name, str) and name in _catalogue()


def _unknown_sample(name: object) -> DataError:
    known = list_samples()
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return DataError(
        f"unknown sample {name!r} and no such file",
        file=str(name),
        fix=f"{hint}known samples: {', '.join(known)}; or pass a path to a .csv, .csv.gz or .parquet file",
    )
