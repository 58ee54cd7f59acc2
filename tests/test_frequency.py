"""datafeeds.frequency: bar spacing and its name; the card records it."""

from __future__ import annotations

import pandas as pd
import pytest

from datafeeds import load_ohlcv
from datafeeds.frequency import bar_seconds, describe_spacing, same_frequency


def test_bar_seconds_is_the_median_spacing():
    days = pd.DatetimeIndex(["2024-01-04", "2024-01-05", "2024-01-08", "2024-01-09", "2024-01-10"])  # a weekend
    assert bar_seconds(days) == 86400.0
    assert bar_seconds(pd.date_range("2024-01-01", periods=5, freq="5min")) == 300.0
    assert bar_seconds(days[:1]) is None
    assert bar_seconds(load_ohlcv("sp500").index) == 86400.0
    assert bar_seconds(load_ohlcv("eurusd_1h").index) == 3600.0


@pytest.mark.parametrize("seconds, text", [(86400, "1 day"), (604800, "1 week"), (3600, "1 hour"), (14400, "4 hours"),
                                           (300, "5 minutes"), (1, "1 second"), (0.5, "0.5 seconds"),
                                           (5400, "1.5 hours")])
def test_describe_spacing(seconds, text):
    assert describe_spacing(seconds) == text


def test_same_frequency_allows_a_factor_of_one_and_a_half():
    assert same_frequency(86400, 86400) and same_frequency(86400, 1.5 * 86400)
    assert not same_frequency(86400, 3600) and not same_frequency(3600, 4 * 3600)


def test_an_agent_card_records_its_bar_spacing(tiny_agent):
    _, result = tiny_agent
    assert result.card["dataset"]["bar_seconds"] == 86400.0
