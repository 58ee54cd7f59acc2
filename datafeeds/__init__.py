"""Load and validate OHLCV data; hand it to backtrader; write artefacts atomically."""

from datafeeds.atomic import write_atomic
from datafeeds.backtrader_feed import to_backtrader
from datafeeds.errors import DataError
from datafeeds.loader import load_ohlcv
from datafeeds.samples import file_sha256, list_samples, sample_info

__all__ = ["DataError", "file_sha256", "list_samples", "load_ohlcv", "sample_info", "to_backtrader", "write_atomic"]
