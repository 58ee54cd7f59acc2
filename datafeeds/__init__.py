"""Load and validate OHLCV data; hand it to backtrader; write artefacts atomically.

Names that need pandas or backtrader load their module on first use (PEP 562 ``__getattr__``): the
trainer's light parent process writes files with ``write_atomic`` without importing pandas, and the
trainer, which only loads data, does not pay for backtrader.
"""

from typing import TYPE_CHECKING

from datafeeds.atomic import write_atomic
from datafeeds.errors import DataError
from datafeeds.lazy import lazy_exports

if TYPE_CHECKING:
    from datafeeds.backtrader_feed import to_backtrader
    from datafeeds.dates import parse_date
    from datafeeds.loader import load_ohlcv
    from datafeeds.samples import file_sha256, list_samples, sample_info, samples_table
    from datafeeds.universe import is_universe, list_universes, load_universe, universe_info, universe_sha256

_LAZY = {  # public name -> its module
    "load_ohlcv": "datafeeds.loader",
    "parse_date": "datafeeds.dates",
    "file_sha256": "datafeeds.samples",
    "list_samples": "datafeeds.samples",
    "sample_info": "datafeeds.samples",
    "samples_table": "datafeeds.samples",
    "to_backtrader": "datafeeds.backtrader_feed",
    "is_universe": "datafeeds.universe",
    "load_universe": "datafeeds.universe",
    "list_universes": "datafeeds.universe",
    "universe_info": "datafeeds.universe",
    "universe_sha256": "datafeeds.universe",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__all__ = ["DataError", "file_sha256", "is_universe", "list_samples", "list_universes", "load_ohlcv", "load_universe",
           "parse_date", "sample_info", "samples_table", "to_backtrader", "universe_info", "universe_sha256",
           "write_atomic"]
