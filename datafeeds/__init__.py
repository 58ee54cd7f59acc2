"""Load and validate OHLCV data; hand it to backtrader; write artefacts atomically.

``to_backtrader`` imports backtrader on first use (PEP 562 ``__getattr__``), so the trainer, which
only loads data, does not pay for it.
"""

from typing import TYPE_CHECKING

from datafeeds.atomic import write_atomic
from datafeeds.errors import DataError
from datafeeds.loader import load_ohlcv
from datafeeds.dates import parse_date
from datafeeds.samples import file_sha256, list_samples, sample_info, samples_table

if TYPE_CHECKING:
    from datafeeds.backtrader_feed import to_backtrader


def __getattr__(name: str):
    if name != "to_backtrader":
        raise AttributeError(f"module 'datafeeds' has no attribute {name!r}")
    from datafeeds.backtrader_feed import to_backtrader

    globals()["to_backtrader"] = to_backtrader  # later lookups skip this function
    return to_backtrader


__all__ = ["DataError", "file_sha256", "list_samples", "load_ohlcv", "parse_date", "sample_info", "samples_table",
           "to_backtrader", "write_atomic"]
