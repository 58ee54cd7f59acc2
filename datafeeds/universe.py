"""Many instruments as one input (a "universe"): symbol -> validated OHLCV frame.

A universe source is a bundled universe name (`list_universes()`), a directory (its .csv, .csv.gz
and .parquet files, not recursive), a glob pattern, or a comma list of files or sample names. One
instrument per file; its symbol is the file name without the data suffix (``nvda_daily.csv.gz`` ->
``nvda_daily``) or the sample name. Every file is loaded with `load_ohlcv`, so it is validated the
same way as a single input and carries ``attrs["source"]`` and ``attrs["sha256"]``.

Only `load_universe` imports pandas (through the loader): `is_universe`, `list_universes`,
`universe_info` and `universe_sha256` stay light for command lines that parse arguments first.
"""

from __future__ import annotations

from collections.abc import Mapping

import copy
import difflib
import glob
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from datafeeds.errors import DataError
from datafeeds.samples import _SAMPLES_DIR, _is_sample, list_samples

if TYPE_CHECKING:
    import pandas as pd

_SUFFIXES = (".csv.gz", ".csv", ".parquet")  # longest first: ".csv.gz" must win over ".gz"
_SUFFIX_TEXT = ".csv, .csv.gz, .parquet"


@lru_cache(maxsize=1)
def _catalogue() -> dict[str, dict]:
    with open(_SAMPLES_DIR / "universes.json", encoding="utf-8") as fh:
        return json.load(fh)


def list_universes() -> list[str]:
    """Names of the bundled universes, sorted; each is a valid source for `load_universe`."""
    return sorted(_catalogue())


def universe_info(name: str) -> dict:
    """The universes.json entry of bundled universe `name` (``members``, ``notes``) plus ``name``."""
    info = copy.deepcopy(_catalogue().get(name)) if isinstance(name, str) else None
    if info is None:
        raise _unknown_universe(name)
    info["name"] = name
    return info


def universes_table() -> str:
    """The bundled universes as text, one line each: name, then its members in order."""
    rows = [("universe", "members")] + [(n, ", ".join(_catalogue()[n]["members"])) for n in list_universes()]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{r[0].ljust(width)}  {r[1]}" for r in rows)


def is_universe(source: object) -> bool:
    """True if `source` names many instruments: a bundled universe, a directory, a glob or a comma list.

    A single existing file or a sample name is not a universe (even if its name contains a comma
    or a glob character), so a caller can route it to `load_ohlcv` unchanged.
    """
    if isinstance(source, (list, tuple)):
        return True
    if not isinstance(source, (str, os.PathLike)):
        return False
    text = os.fspath(source)
    if not isinstance(text, str):
        return False
    if isinstance(source, str) and source in _catalogue():
        return True
    if _is_sample(source):
        return False
    path = Path(text).expanduser()
    if path.is_file():
        return False
    if path.is_dir():
        return True
    return _is_glob(text) or "," in text


def load_universe(
    source: str | os.PathLike | list | tuple,
    *,
    start: object = None,
    end: object = None,
    min_rows: int = 1,
    lazy: bool = False,
) -> Mapping[str, pd.DataFrame]:
    """Load every instrument of `source` with `load_ohlcv`: an ordered dict symbol -> frame.

    Order: a comma list (or a Python list/tuple of the same items) keeps its order, a bundled
    universe keeps its listed order, a directory and a glob are sorted by symbol. A single file or
    sample is a universe of one. `start`, `end` and `min_rows` apply to every member; a member
    that fails to load raises its own `DataError` (which names the file). ``lazy=True`` returns a
    read-only mapping that loads a member each time it is read and keeps none: a universe larger
    than memory is then processed one instrument at a time.
    """
    from datafeeds.loader import load_ohlcv  # pandas, loaded only when data is loaded

    items = _items(source)
    symbols: dict[str, str] = {}  # symbol -> item, to name both sides of a clash
    for item in items:
        symbol = _symbol(item)
        if symbol in symbols:
            raise DataError(
                f"two inputs have the symbol {symbol!r}: {symbols[symbol]} and {item}",
                file=_label(source),
                fix="rename or remove one of them (symbol = file name without .csv/.csv.gz/.parquet)",
            )
        symbols[symbol] = item
    if not symbols:
        raise DataError("no instruments", file=_label(source),
                        fix="pass a directory, a glob, a comma list of files or sample names, or a universe name")
    if lazy:
        return LazyUniverse(symbols, dict(start=start, end=end, min_rows=min_rows))
    return {symbol: load_ohlcv(item, start=start, end=end, min_rows=min_rows) for symbol, item in symbols.items()}


class LazyUniverse(Mapping):
    """symbol -> frame, loaded with `load_ohlcv` on every read and not kept (see `load_universe`)."""

    def __init__(self, items: dict[str, str], options: dict):
        self._items, self._options = dict(items), dict(options)

    def __getitem__(self, symbol: str) -> pd.DataFrame:
        from datafeeds.loader import load_ohlcv

        return load_ohlcv(self._items[symbol], **self._options)

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def universe_sha256(frames: Mapping[str, pd.DataFrame]) -> str:
    """One hex SHA-256 over the sorted (symbol, file sha256) pairs of a loaded universe.

    A cache or artefact key that changes when any member file, or the set of symbols, changes;
    it identifies the files, not the `start`/`end` window cut from them.
    """
    if not isinstance(frames, Mapping) or not frames:
        raise DataError("universe_sha256 needs a non-empty dict symbol -> frame",
                        fix="pass the result of load_universe()")
    digest = hashlib.sha256()
    for symbol in sorted(frames):
        sha = getattr(frames[symbol], "attrs", {}).get("sha256")
        if not isinstance(sha, str) or not sha:
            raise DataError(f"the frame of symbol {symbol!r} has no attrs['sha256']",
                            fix="load it with load_ohlcv() or load_universe()")
        digest.update(f"{symbol}\t{sha}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- sources


def _items(source: object) -> list[str]:
    """The members of `source` in load order: sample names and file paths (str)."""
    if isinstance(source, (list, tuple)):
        return _list_items([os.fspath(s) if isinstance(s, os.PathLike) else s for s in source], source)
    if not isinstance(source, (str, os.PathLike)) or not isinstance(os.fspath(source), str):
        raise DataError(f"source must be a universe name, directory, glob, comma list or path, "
                        f"got {type(source).__name__}", fix="pass a str or a path")
    text = os.fspath(source)
    if isinstance(source, str) and source in _catalogue():
        return list(_catalogue()[source]["members"])
    if not text.strip():
        raise DataError("empty source", fix="pass a directory, a glob, a comma list of files or sample names, "
                                            f"or a universe name ({', '.join(list_universes())})")
    if _is_sample(source):
        return [text]
    path = Path(text).expanduser()
    if path.is_file():
        return [text]
    if path.is_dir():
        found = [p for p in path.iterdir() if p.is_file() and _data_suffix(p.name)]
        if not found:
            raise DataError(f"no {_SUFFIX_TEXT} files in this directory (subdirectories are not searched)",
                            file=str(path.resolve()), fix="point at the folder that holds the data files")
        return [str(p) for p in sorted(found, key=lambda p: (_symbol(p.name), p.name))]
    if _is_glob(text):
        found = [p for p in glob.glob(os.path.expanduser(text)) if os.path.isfile(p) and _data_suffix(p)]
        if not found:
            raise DataError(f"the glob matches no {_SUFFIX_TEXT} file", file=text,
                            fix="check the pattern (only files ending in .csv, .csv.gz or .parquet count)")
        return sorted(found, key=lambda p: (_symbol(p), p))
    if "," in text:
        return _list_items(text.split(","), text)
    # One name that is neither a sample, a universe nor a file: suggest from both catalogues.
    if not Path(text).suffix and "/" not in text and "\\" not in text:
        known = list_samples() + list_universes()
        close = difflib.get_close_matches(text, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise DataError(f"unknown sample or universe {text!r} and no such file or directory", file=text,
                        fix=f"{hint}samples: {', '.join(list_samples())}; universes: {', '.join(list_universes())}")
    return [text]  # a missing file: load_ohlcv reports it


def _is_glob(text: str) -> bool:
    """A glob pattern: it holds * or ?, or a [...] class that matches an existing path. A missing file
    with [ in its name (``prices[1].csv``) is a missing file, reported as such by the loader."""
    if "*" in text or "?" in text:
        return True
    return "[" in text and bool(glob.glob(os.path.expanduser(text)))


def _list_items(parts: list, source: object) -> list[str]:
    items = []
    for i, part in enumerate(parts, 1):
        if not isinstance(part, str):
            raise DataError(f"item {i} of the list is a {type(part).__name__}, not a name or path",
                            file=_label(source), fix="list sample names or file paths")
        if not part.strip():
            raise DataError(f"item {i} of the comma list is empty", file=_label(source),
                            fix="remove the stray comma (items: sample names or file paths, no spaces needed)")
        items.append(part.strip())
    return items


def _data_suffix(name: str) -> str | None:
    lower = name.lower()
    return next((s for s in _SUFFIXES if lower.endswith(s)), None)


def _symbol(item: str) -> str:
    """A sample's name, else the file name without its data suffix (case kept)."""
    if _is_sample(item):
        return item
    name = Path(item).name
    suffix = _data_suffix(name)
    return name[: -len(suffix)] if suffix and len(name) > len(suffix) else name


def _label(source: object) -> str:
    if isinstance(source, (list, tuple)):
        return "list " + ",".join(map(str, source)) if source else "empty list"
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else repr(source)


def _unknown_universe(name: object) -> DataError:
    known = list_universes()
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return DataError(f"unknown universe {name!r}", fix=f"{hint}known universes: {', '.join(known)}")
