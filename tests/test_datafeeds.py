"""datafeeds: loading, validation messages and the backtrader feed."""

import gzip
import hashlib
import json
import logging
import os
import time
import warnings
from pathlib import Path

import backtrader as bt
import numpy as np
import pandas as pd
import pytest

import datafeeds
from datafeeds import DataError, file_sha256, list_samples, load_ohlcv, sample_info, to_backtrader

SAMPLES_JSON = Path(datafeeds.__file__).parent / "samples" / "samples.json"
OHLCV = ["open", "high", "low", "close", "volume"]

GOOD = """datetime,open,high,low,close,volume
2020-01-01,10,11,9,10.5,100
2020-01-02,10.5,12,10,11,200
2020-01-03,11,11.5,10.5,11.2,150
2020-01-06,11.2,11.8,11,11.5,0
"""


def _write(tmp_path, text, name="bad.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _replace_line(lineno, new):
    """GOOD with its 1-based line `lineno` replaced by `new`."""
    lines = GOOD.splitlines()
    lines[lineno - 1] = new
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- samples


def test_public_names():
    assert sorted(datafeeds.__all__) == sorted(
        ["load_ohlcv", "list_samples", "sample_info", "samples_table", "file_sha256", "parse_date", "DataError",
         "to_backtrader", "write_atomic", "is_universe", "load_universe", "list_universes", "universe_info",
         "universe_sha256"]
    )
    assert issubclass(DataError, ValueError)


def test_list_samples_matches_catalogue():
    names = list_samples()
    assert names == sorted(json.loads(SAMPLES_JSON.read_text()))
    assert {"sp500", "nasdaq", "eurusd_1h", "stoxx50fut_1m", "stoxx50_1d"} <= set(names)


def test_sample_info_has_entry_and_path():
    info = sample_info("sp500")
    assert info["rows"] == 5031 and info["name"] == "sp500"
    assert Path(info["path"]).is_file() and info["path"].endswith("sp500.csv.gz")
    info["rows"] = -1  # a returned dict must not alias the catalogue
    assert sample_info("sp500")["rows"] == 5031


def test_file_sha256_known_answer(tmp_path):
    path = tmp_path / "abc.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    big = tmp_path / "big.bin"
    payload = bytes(range(256)) * 20_000  # > one read chunk
    big.write_bytes(payload)
    assert file_sha256(str(big)) == hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize("name", list_samples())
def test_every_sample_loads(name):
    info = sample_info(name)
    df = load_ohlcv(name)
    assert len(df) == info["rows"]
    assert list(df.columns) == OHLCV
    assert (df.dtypes == np.float64).all()
    assert isinstance(df.index, pd.DatetimeIndex) and df.index.tz is None
    assert df.index.dtype.kind == "M"
    assert df.index.name == "datetime"
    assert df.index.is_monotonic_increasing and df.index.is_unique
    assert df.index[0] == pd.Timestamp(info["first"]) and df.index[-1] == pd.Timestamp(info["last"])
    assert df.attrs["source"] == name
    assert df.attrs["sha256"] == file_sha256(info["path"])
    assert (df[["open", "high", "low", "close"]] > 0).all().all()
    assert (df["high"] >= df[["open", "close"]].max(axis=1)).all()
    assert (df["low"] <= df[["open", "close"]].min(axis=1)).all()


def test_sample_values_are_the_file_values():
    df = load_ohlcv("sp500")
    first = df.iloc[0]
    assert first.tolist() == [1229.22998, 1248.810059, 1219.099976, 1228.099976, 877000000.0]
    assert (load_ohlcv("stoxx50_1d")["volume"] == 0).all()


# --------------------------------------------------------------------------- period


def test_start_end_inclusive():
    df = load_ohlcv("sp500", start="2018-12-24", end="2018-12-31")
    expected = ["2018-12-24", "2018-12-26", "2018-12-27", "2018-12-28", "2018-12-31"]
    assert list(df.index) == [pd.Timestamp(d) for d in expected]
    assert df.attrs["source"] == "sp500"


def test_end_date_string_covers_the_whole_day_on_intraday_data():
    df = load_ohlcv("stoxx50fut_1m", end="2006-01-02")
    assert df.index[0] == pd.Timestamp("2006-01-02 09:01")
    assert df.index[-1].normalize() == pd.Timestamp("2006-01-02")
    assert df.index[-1].hour >= 17
    exact = load_ohlcv("stoxx50fut_1m", start="2006-01-02 09:02", end=pd.Timestamp("2006-01-02 09:05"))
    assert exact.index[0] == pd.Timestamp("2006-01-02 09:02")
    assert exact.index[-1] == pd.Timestamp("2006-01-02 09:05")


def test_tz_aware_bounds_are_compared_in_utc(tmp_path):
    path = _write(tmp_path, GOOD, "good.csv")
    df = load_ohlcv(path, start=pd.Timestamp("2020-01-02 01:00", tz="Europe/Berlin"))
    assert df.index[0] == pd.Timestamp("2020-01-02")


# --------------------------------------------------------------------------- header spellings


def test_yahoo_header_adj_close_ignored(tmp_path):
    path = _write(tmp_path, "Date,Open,High,Low,Close,Adj Close,Volume\n"
                            "2020-01-02,10,11,9,10.5,5.25,100\n"
                            "2020-01-03,10.5,12,10,11,5.5,200\n", "yahoo.csv")
    df = load_ohlcv(path)
    assert list(df.columns) == OHLCV
    assert df["close"].tolist() == [10.5, 11.0]
    assert list(df.index) == [pd.Timestamp("2020-01-02"), pd.Timestamp("2020-01-03")]
    assert df.attrs["source"] == str(path.resolve())
    assert df.attrs["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_timestamp_header_and_vol(tmp_path):
    path = _write(tmp_path, "TIMESTAMP,open,HIGH,Low,close,vol\n"
                            "2020-01-02 09:30:00,10,11,9,10.5,3\n"
                            "2020-01-02 09:31:00,10.5,12,10,11,4\n", "ts.csv")
    df = load_ohlcv(path)
    assert df.index[1] == pd.Timestamp("2020-01-02 09:31")
    assert df["volume"].tolist() == [3.0, 4.0]


def test_separate_date_and_time_columns(tmp_path):
    path = _write(tmp_path, "Date,Time,Open,High,Low,Close,Volume\n"
                            "2006-01-02,09:01:00,3602,3603,3597,3599,5699\n"
                            "2006-01-02,09:02:00,3600,3601,3598,3599,894\n", "dt.csv")
    df = load_ohlcv(path)
    assert list(df.index) == [pd.Timestamp("2006-01-02 09:01"), pd.Timestamp("2006-01-02 09:02")]
    assert list(df.columns) == OHLCV


def test_integer_dates(tmp_path):
    path = _write(tmp_path, "date,open,high,low,close,volume\n20200102,1,2,1,2,0\n20200103,2,3,2,3,0\n", "int.csv")
    assert list(load_ohlcv(path).index) == [pd.Timestamp("2020-01-02"), pd.Timestamp("2020-01-03")]


def test_tz_aware_strings_become_naive_utc(tmp_path):
    path = _write(tmp_path, "datetime,open,high,low,close,volume\n"
                            "2020-06-01T10:00:00+02:00,1,2,1,2,0\n"
                            "2020-06-01T11:00:00+02:00,2,3,2,3,0\n", "tz.csv")
    df = load_ohlcv(path)
    assert df.index.tz is None
    assert list(df.index) == [pd.Timestamp("2020-06-01 08:00"), pd.Timestamp("2020-06-01 09:00")]


def test_csv_gz(tmp_path):
    path = tmp_path / "good.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(GOOD)
    df = load_ohlcv(path)
    assert len(df) == 4 and df["high"].iloc[1] == 12.0


def test_parquet_round_trip_with_datetime_index(tmp_path):
    original = load_ohlcv("stoxx50_1d").iloc[:20]
    path = tmp_path / "stoxx.parquet"
    original.to_parquet(path)
    back = load_ohlcv(path)
    pd.testing.assert_frame_equal(back, original, check_index_type=False, check_exact=True)
    assert back.index.name == "datetime"
    assert back.attrs["source"] == str(path.resolve())


def test_parquet_tz_aware_index_and_timestamp_column(tmp_path):
    idx = pd.DatetimeIndex(["2020-06-01 10:00", "2020-06-01 11:00"], tz="Europe/Berlin", name="ts")
    frame = pd.DataFrame({"Open": [1.0, 2.0], "High": [2.0, 3.0], "Low": [1.0, 2.0],
                          "Close": [2.0, 3.0], "Volume": [5, 6]}, index=idx)
    frame.to_parquet(tmp_path / "a.parquet")
    df = load_ohlcv(tmp_path / "a.parquet")
    assert list(df.index) == [pd.Timestamp("2020-06-01 08:00"), pd.Timestamp("2020-06-01 09:00")]
    frame.reset_index().rename(columns={"ts": "timestamp"}).to_parquet(tmp_path / "b.parquet")
    pd.testing.assert_frame_equal(load_ohlcv(tmp_path / "b.parquet"), df, check_exact=True)


def test_extra_numeric_columns_kept_text_dropped(tmp_path, caplog):
    path = _write(tmp_path, "datetime,open,high,low,close,volume,bid_size,ask_size,venue\n"
                            "2020-01-02,10,11,9,10.5,100,5,7,XETR\n"
                            "2020-01-03,10.5,12,10,11,200,,8,XETR\n", "extra.csv")
    with caplog.at_level(logging.DEBUG, logger="datafeeds.loader"):
        df = load_ohlcv(path)
    assert "dropping non-numeric column 'venue'" in caplog.text
    assert list(df.columns) == OHLCV + ["bid_size", "ask_size"]
    assert (df.dtypes == np.float64).all()
    assert df["ask_size"].tolist() == [7.0, 8.0]
    assert df["bid_size"].iloc[0] == 5.0 and np.isnan(df["bid_size"].iloc[1])


def test_missing_volume_filled_with_zero_and_warned(tmp_path):
    path = _write(tmp_path, "date,open,high,low,close\n2020-01-02,1,2,1,2\n2020-01-03,2,3,2,3\n", "novol.csv")
    with pytest.warns(UserWarning, match=r"novol\.csv: no volume column .*volume set to 0\.0"):
        df = load_ohlcv(path)
    assert df["volume"].tolist() == [0.0, 0.0]


def test_unsorted_rows_sorted_with_warning(tmp_path):
    lines = GOOD.splitlines()
    text = "\n".join([lines[0], lines[1], lines[3], lines[2], lines[4]]) + "\n"
    path = _write(tmp_path, text, "unsorted.csv")
    with pytest.warns(UserWarning, match=r"unsorted\.csv, line 4 \(2020-01-02 00:00:00\): rows are not in time order"):
        df = load_ohlcv(path)
    assert df.index.is_monotonic_increasing
    assert df.loc["2020-01-02", "high"] == 12.0 and df.loc["2020-01-03", "high"] == 11.5


def test_clean_file_emits_no_warning(tmp_path):
    path = _write(tmp_path, GOOD, "good.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = load_ohlcv(path)
    assert df["volume"].tolist() == [100.0, 200.0, 150.0, 0.0]


# --------------------------------------------------------------------------- DataError cases


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: file not found; fix: check the path"):
        load_ohlcv(tmp_path / "nope.csv")


def test_unknown_sample_suggests_near_miss():
    with pytest.raises(DataError, match=r"unknown sample 'sp50'.*did you mean 'sp500'\?.*known samples: eurusd_1h, "):
        load_ohlcv("sp50")


def test_unknown_sample_lists_known():
    with pytest.raises(DataError, match=r"unknown sample 'qqqqqq'") as info:
        load_ohlcv("qqqqqq")
    assert "did you mean" not in str(info.value)
    assert all(name in str(info.value) for name in list_samples())
    with pytest.raises(DataError, match="did you mean 'nasdaq'"):
        sample_info("nasdak")


def test_unsupported_extension(tmp_path):
    path = _write(tmp_path, GOOD, "prices.txt")
    with pytest.raises(DataError, match=r"prices\.txt: unsupported file type '\.txt'; fix: convert it to \.csv"):
        load_ohlcv(path)


def test_source_of_wrong_type():
    with pytest.raises(DataError, match="source must be a sample name or a path, got int"):
        load_ohlcv(42)


def test_missing_required_column(tmp_path):
    path = _write(tmp_path, "datetime,open,high,low,volume\n2020-01-02,1,2,1,5\n", "noclose.csv")
    with pytest.raises(DataError, match=r"noclose\.csv, line 1 \(header\), column 'close': "
                                        r"required column missing \(found: datetime, open"):
        load_ohlcv(path)


def test_missing_timestamp_column(tmp_path):
    path = _write(tmp_path, "when,open,high,low,close,volume\n2020-01-02,1,2,1,2,5\n", "notime.csv")
    with pytest.raises(DataError, match=r"notime\.csv, line 1 \(header\), column 'datetime': no timestamp column"):
        load_ohlcv(path)


def test_ambiguous_columns(tmp_path):
    path = _write(tmp_path, "datetime,open,high,low,close,Close,volume\n2020-01-02,1,2,1,2,2,5\n", "twice.csv")
    with pytest.raises(DataError, match=r"twice\.csv, line 1 \(header\), column 'Close': "
                                        r"columns 'close' and 'Close' both mean 'close'"):
        load_ohlcv(path)


def test_not_comma_separated(tmp_path):
    path = _write(tmp_path, "datetime;open;high;low;close;volume\n2020-01-02;1;2;1;2;5\n", "semi.csv")
    with pytest.raises(DataError, match=r"semi\.csv, line 1 \(header\).*not comma-separated"):
        load_ohlcv(path)


def test_unparsable_timestamp(tmp_path):
    path = _write(tmp_path, _replace_line(3, "notadate,10.5,12,10,11,200"), "bad.csv")
    with pytest.raises(DataError, match=r"bad\.csv, line 3, column 'datetime': cannot parse timestamp 'notadate'"):
        load_ohlcv(path)


def test_missing_timestamp_cell(tmp_path):
    path = _write(tmp_path, _replace_line(4, ",11,11.5,10.5,11.2,150"), "bad.csv")
    with pytest.raises(DataError, match=r"bad\.csv, line 4, column 'datetime': missing timestamp"):
        load_ohlcv(path)


def test_unparsable_date_time_pair_names_both_columns(tmp_path):
    path = _write(tmp_path, "Date,Time,Open,High,Low,Close,Volume\n"
                            "2006-01-02,09:01:00,1,2,1,2,0\n2006-01-02,25:99,1,2,1,2,0\n", "dt.csv")
    with pytest.raises(DataError, match=r"dt\.csv, line 3, column 'Date\+Time': "
                                        r"cannot parse timestamp '2006-01-02 25:99'"):
        load_ohlcv(path)


def test_duplicate_timestamps(tmp_path):
    path = _write(tmp_path, _replace_line(4, "2020-01-02,11,11.5,10.5,11.2,150"), "dup.csv")
    with pytest.raises(DataError, match=r"dup\.csv, line 4 \(2020-01-02 00:00:00\), column 'datetime': "
                                        r"duplicate timestamp \(same as line 3\)"):
        load_ohlcv(path)


def test_blank_lines_do_not_shift_line_numbers(tmp_path):
    text = GOOD.replace("2020-01-02,", "\n2020-01-02,").replace("11.8", "-11.8")
    path = _write(tmp_path, text, "blank.csv")
    with pytest.raises(DataError, match=r"blank\.csv, line 6 \(2020-01-06 00:00:00\), column 'high': "
                                        r"non-positive price -11\.8"):
        load_ohlcv(path)


@pytest.mark.parametrize(
    ("row", "pattern"),
    [
        ("2020-01-03,11,11.5,,11.2,150", r"line 4 \(2020-01-03 00:00:00\), column 'low': price is nan"),
        ("2020-01-03,11,inf,10.5,11.2,150", r"line 4 \(2020-01-03 00:00:00\), column 'high': price is inf"),
        ("2020-01-03,11,11.5,10.5,0,150", r"line 4 \(2020-01-03 00:00:00\), column 'close': non-positive price 0"),
        ("2020-01-03,-11,11.5,10.5,11.2,150", r"line 4 \(2020-01-03 00:00:00\), column 'open': non-positive price -11"),
        ("2020-01-03,11,11.5,abc,11.2,150", r"line 4 \(2020-01-03 00:00:00\), column 'low': 'abc' is not a number"),
        ("2020-01-03,11,10,10.5,10.6,150",
         r"line 4 \(2020-01-03 00:00:00\), column 'high': high 10 is below low 10\.5"),
        ("2020-01-03,11,11.1,10.5,11.2,150",
         r"line 4 \(2020-01-03 00:00:00\), column 'high': high 11\.1 is below max\(open, close\) 11\.2"),
        ("2020-01-03,11,11.5,11.1,11.2,150",
         r"line 4 \(2020-01-03 00:00:00\), column 'low': low 11\.1 is above min\(open, close\) 11"),
        ("2020-01-03,11,11.5,10.5,11.2,-1", r"line 4 \(2020-01-03 00:00:00\), column 'volume': negative volume -1"),
        ("2020-01-03,11,11.5,10.5,11.2,", r"line 4 \(2020-01-03 00:00:00\), column 'volume': volume is nan"),
    ],
)
def test_bad_bar(tmp_path, row, pattern):
    path = _write(tmp_path, _replace_line(4, row), "bad.csv")
    with pytest.raises(DataError, match=r"bad\.csv, " + pattern + r".*; fix: "):
        load_ohlcv(path)


def test_first_offending_row_is_reported(tmp_path):
    text = _replace_line(5, "2020-01-06,11.2,11.8,11,-1,0")
    text = text.replace("2020-01-03,11,11.5,10.5,11.2,150", "2020-01-03,11,11.5,10.5,0,150")
    with pytest.raises(DataError, match=r"line 4 .*column 'close'"):
        load_ohlcv(_write(tmp_path, text, "two.csv"))


def test_bad_parquet_row_is_named_by_row_and_timestamp(tmp_path):
    frame = load_ohlcv("stoxx50_1d").iloc[:5].copy()
    frame.iloc[2, frame.columns.get_loc("low")] = frame["high"].iloc[2] + 1
    frame.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet, row 3 \(2005-01-05 00:00:00\), column 'high': "
                                        r"high .* is below low"):
        load_ohlcv(tmp_path / "bad.parquet")


def test_empty_file(tmp_path):
    with pytest.raises(DataError, match=r"empty\.csv: empty file: no header and no rows"):
        load_ohlcv(_write(tmp_path, "", "empty.csv"))


def test_header_only(tmp_path):
    path = _write(tmp_path, "datetime,open,high,low,close,volume\n", "header.csv")
    with pytest.raises(DataError, match=r"header\.csv, line 1 \(header\): no data rows"):
        load_ohlcv(path)


def test_malformed_csv_names_line(tmp_path):
    path = _write(tmp_path, _replace_line(3, "2020-01-02,10.5,12,10,11,200,7"), "ragged.csv")
    with pytest.raises(DataError, match=r"ragged\.csv, line 3: malformed CSV"):
        load_ohlcv(path)


def test_corrupt_gzip_and_parquet(tmp_path):
    with pytest.raises(DataError, match=r"broken\.csv\.gz: cannot read the file"):
        load_ohlcv(_write(tmp_path, GOOD, "broken.csv.gz"))
    with pytest.raises(DataError, match=r"broken\.parquet: cannot read the file"):
        load_ohlcv(_write(tmp_path, GOOD, "broken.parquet"))


def test_fewer_rows_than_min_rows(tmp_path):
    path = _write(tmp_path, GOOD, "good.csv")
    assert len(load_ohlcv(path, min_rows=4)) == 4
    with pytest.raises(DataError, match=r"good\.csv: only 4 rows, need min_rows=5"):
        load_ohlcv(path, min_rows=5)
    with pytest.raises(DataError, match=r"sample 'sp500': only 5 rows from 2018-12-24 to 2018-12-31, need min_rows=10"):
        load_ohlcv("sp500", start="2018-12-24", end="2018-12-31", min_rows=10)
    with pytest.raises(DataError, match="min_rows must be an integer >= 1"):
        load_ohlcv(path, min_rows=0)


def test_start_after_end(tmp_path):
    path = _write(tmp_path, GOOD, "good.csv")
    with pytest.raises(DataError, match=r"good\.csv: start 2020-01-05 is after end 2020-01-02; fix: swap"):
        load_ohlcv(path, start="2020-01-05", end="2020-01-02")


@pytest.mark.parametrize("kwargs, message", [
    ({"start": "yesterday-ish"}, "start: 'yesterday-ish' is not an ISO date: write it as YYYY-MM-DD"),
    ({"end": "2020-13-45"}, "end: '2020-13-45' is not a valid date"),
    ({"start": "01/02/2020"}, "start: '01/02/2020' is not an ISO date"),  # 1 February or 2 January?
    ({"end": "31/12/2020"}, "end: '31/12/2020' is not an ISO date"),  # unambiguous, but the rule is one rule
    ({"start": "20200102"}, "start: '20200102' is not an ISO date"),
    ({"start": object()}, "start=.* is not a timestamp; fix: pass start like"),
])
def test_unparsable_and_ambiguous_bounds(tmp_path, kwargs, message):
    path = _write(tmp_path, GOOD, "good.csv")
    with pytest.raises(DataError, match=rf"good\.csv: {message}"):
        load_ohlcv(path, **kwargs)


@pytest.mark.parametrize("text, expected", [
    ("2016-01-02", "2016-01-02 00:00:00"), ("2016-01-02 09:30", "2016-01-02 09:30:00"),
    ("2016-01-02T09:30:15", "2016-01-02 09:30:15"), ("2016-03", "2016-03-01 00:00:00"), ("2016", "2016-01-01 00:00:00"),
])
def test_iso_dates_are_read_one_way(text, expected):
    from datafeeds import parse_date

    assert str(parse_date(text)) == expected


def test_period_selecting_no_rows(tmp_path):
    path = _write(tmp_path, GOOD, "good.csv")
    with pytest.raises(DataError, match=r"good\.csv: period from 2021-01-01 to the end selects no rows; "
                                        r"the file covers 2020-01-01 00:00:00 to 2020-01-06 00:00:00"):
        load_ohlcv(path, start="2021-01-01")
    with pytest.raises(DataError, match="selects no rows"):
        load_ohlcv(path, start="2020-01-04", end="2020-01-05")  # a weekend gap


def test_messages_are_one_line(tmp_path):
    cases = [
        lambda: load_ohlcv(_write(tmp_path, "", "e.csv")),
        lambda: load_ohlcv(_write(tmp_path, _replace_line(3, "2020-01-02,10.5,12,10,11,200,7"), "r.csv")),
        lambda: load_ohlcv(_write(tmp_path, _replace_line(3, "x\ny,1,2,1,2,0"), "n.csv")),
        lambda: load_ohlcv("sp5000"),
        lambda: load_ohlcv(tmp_path / "line\nbreak.csv"),
    ]
    for case in cases:
        with pytest.raises(DataError) as info:
            case()
        assert "\n" not in str(info.value) and "\r" not in str(info.value)
    err = DataError("two\nlines", file="a\nb.csv", row="line 2", column="close", fix="do\r\nthis")
    assert str(err) == "a\\nb.csv, line 2, column 'close': two lines; fix: do this"  # the name escaped, as written
    assert (err.file, err.row, err.column) == ("a\nb.csv", "line 2", "close")


# --------------------------------------------------------------------------- backtrader


def _run(feed):
    """Per bar: (datetime, close, signal) as seen by a strategy."""
    seen = []

    class Record(bt.Strategy):
        def next(self):
            seen.append((self.data.datetime.datetime(0), self.data.close[0], self.data.signal[0]))

    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(feed)
    cerebro.addstrategy(Record)
    cerebro.run()
    return seen


def test_signal_line_visible_to_a_strategy():
    df = load_ohlcv("sp500").iloc[:40].copy()
    df["prob"] = np.linspace(0.0, 1.0, 40)
    df.iloc[5, df.columns.get_loc("prob")] = np.nan
    seen = _run(to_backtrader(df, signal="prob"))
    assert [s[0] for s in seen] == list(df.index.to_pydatetime())
    assert [s[1] for s in seen] == df["close"].tolist()
    np.testing.assert_array_equal([s[2] for s in seen], df["prob"].to_numpy())


def test_signal_from_array_and_aligned_series():
    df = load_ohlcv("stoxx50_1d").iloc[:25]
    probs = np.arange(25) / 25.0
    feed = to_backtrader(df, signal=pd.Series(probs, index=df.index))
    np.testing.assert_array_equal([s[2] for s in _run(feed)], probs)
    feed = to_backtrader(df, signal=probs[::-1].copy())
    np.testing.assert_array_equal([s[2] for s in _run(feed)], probs[::-1])


def test_feed_classes_are_cached_per_line_names():
    df = load_ohlcv("stoxx50_1d").iloc[:10]
    a = to_backtrader(df, signal=np.zeros(10))
    b = to_backtrader(df, signal=np.ones(10))
    c = to_backtrader(df, signal=np.ones(10), atr=np.ones(10))
    assert type(a) is type(b) and type(c) is not type(a)
    assert isinstance(a, bt.feeds.PandasData) and isinstance(c, bt.feeds.PandasData)
    assert type(c).lines.getlinealiases()[-2:] == ("signal", "atr")
    assert type(to_backtrader(df)) is bt.feeds.PandasData


def test_feed_name_timeframe_and_no_openinterest():
    daily = to_backtrader(load_ohlcv("sp500").iloc[:30])
    assert daily._name == "sp500"
    assert (daily.p.timeframe, daily.p.compression) == (bt.TimeFrame.Days, 1)
    assert daily.p.openinterest is None
    minute = to_backtrader(load_ohlcv("stoxx50fut_1m").iloc[:200], name="fesx")
    assert minute._name == "fesx"
    assert (minute.p.timeframe, minute.p.compression) == (bt.TimeFrame.Minutes, 1)
    hourly = to_backtrader(load_ohlcv("eurusd_1h").iloc[:200])
    assert (hourly.p.timeframe, hourly.p.compression) == (bt.TimeFrame.Minutes, 60)
    idx = pd.date_range("2020-01-06 09:00", periods=12, freq="5min", name="datetime")
    five = pd.DataFrame({c: 1.0 for c in OHLCV}, index=idx)
    assert (to_backtrader(five).p.timeframe, to_backtrader(five).p.compression) == (bt.TimeFrame.Minutes, 5)
    weekly = pd.DataFrame({c: 1.0 for c in OHLCV}, index=pd.date_range("2020-01-06", periods=8, freq="7D"))
    assert to_backtrader(weekly).p.timeframe == bt.TimeFrame.Weeks
    assert to_backtrader(five, timeframe=bt.TimeFrame.Days, compression=2).p.compression == 2


def test_openinterest_is_nan_in_a_run():
    df = load_ohlcv("stoxx50_1d").iloc[:10]
    seen = []

    class Record(bt.Strategy):
        def next(self):
            seen.append(self.data.openinterest[0])

    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(to_backtrader(df))
    cerebro.addstrategy(Record)
    cerebro.run()
    assert len(seen) == 10 and np.isnan(seen).all()


@pytest.mark.parametrize(
    ("lines", "pattern"),
    [
        ({"signal": np.zeros(9)},
         r"column 'signal': values for line 'signal' have shape \(9,\), the frame has 10 rows"),
        ({"signal": "nope"}, r"column 'nope': signal='nope' is not a column"),
        ({"signal": ["a"] * 10}, r"column 'signal': values for line 'signal' are not numeric"),
        ({"close": np.zeros(10)}, r"column 'close': line name clashes"),
        ({"tz": np.zeros(10)}, r"column 'tz': line name clashes"),
        ({"Signal": np.zeros(10), "signal": np.zeros(10)},
         r"column 'signal': line name differs from another only in case"),
    ],
)
def test_bad_extra_lines(lines, pattern):
    df = load_ohlcv("stoxx50_1d").iloc[:10]
    with pytest.raises(DataError, match=r"stoxx50_1d, " + pattern):
        to_backtrader(df, **lines)


def test_misaligned_series_rejected():
    df = load_ohlcv("stoxx50_1d").iloc[:10]
    shifted = pd.Series(np.zeros(10), index=df.index + pd.Timedelta(days=1))
    with pytest.raises(DataError, match="different DatetimeIndex than the frame; fix: reindex it to df.index"):
        to_backtrader(df, signal=shifted)


def test_bad_frame_rejected():
    with pytest.raises(DataError, match="index must be a tz-naive DatetimeIndex"):
        to_backtrader(pd.DataFrame({c: [1.0] for c in OHLCV}))
    df = load_ohlcv("stoxx50_1d").iloc[:3].drop(columns="volume")
    with pytest.raises(DataError, match=r"missing columns \['volume'\]"):
        to_backtrader(df)
    with pytest.raises(DataError, match="expected a pandas DataFrame"):
        to_backtrader(np.zeros((3, 5)))


def test_write_atomic_replaces_whole_files_only(tmp_path, monkeypatch):
    from datafeeds import write_atomic

    target = tmp_path / "sub" / "out.bin"
    write_atomic(target, b"first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert (target.stat().st_mode & 0o777) == 0o666 & ~_umask()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("datafeeds.atomic.os.replace", broken_replace)
    with pytest.raises(OSError):
        write_atomic(target, b"third")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]  # no temp file left behind


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(
    "text, message",
    [
        ("datetime,open,high,low,close,close,volume\n2020-01-01,1,2,0.5,1.5,1.5,10\n",
         r"line 1 \(header\), column 'close': duplicate column name"),
        ("time,open,high,low,close,volume\n09:30,1,2,0.5,1.5,10\n",
         r"line 2, column 'time': column holds times of day only"),
    ],
)
def test_repeated_header_and_time_only_column_are_refused(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        load_ohlcv(path)


# --------------------------------------------------------------------------- hostile names and bytes


def test_file_names_are_printed_with_terminal_escapes_escaped(tmp_path):
    # a name like "\x1b[31m.csv" reached the terminal raw and coloured (or cleared) it
    err = DataError("bad", file="\x1b[31mred\x1b[0m.csv", fix="\x1b[2J")
    assert "\x1b" not in str(err) and str(err).startswith("\\x1b[31mred\\x1b[0m.csv: bad")
    assert err.file == "\x1b[31mred\x1b[0m.csv"  # the attribute keeps the real name
    assert "\\u202e" in str(DataError("x", file="evil\u202ecsv.exe"))  # a bidi override reorders what is shown
    with pytest.raises(DataError) as info:
        load_ohlcv(tmp_path / "\x1b[31m.csv")
    assert "\x1b" not in str(info.value) and "\\x1b[31m.csv: file not found" in str(info.value)


def _budget(monkeypatch, mib: float) -> None:
    """Make the loader see ``mib`` MiB of memory left, from a pretend limit named in its messages."""
    from datafeeds import budget

    monkeypatch.setattr(budget, "memory_budget", lambda: (int(mib * 2**20), "a test's limit"))


def test_nul_bytes_are_refused_naming_their_line(tmp_path):
    path = tmp_path / "nul.csv"
    path.write_bytes(GOOD.encode() + b"2020-01-07,1,2,1,2,0\n" + b"\0" * 5000)
    with pytest.raises(DataError, match=r"nul\.csv, line 7: binary data, not CSV text: byte 0x00 \(NUL\); fix: "):
        load_ohlcv(path)
    path.write_bytes(GOOD.encode().replace(b"10.5,100", b"10.5,1\x07"))
    with pytest.raises(DataError, match=r"line 2: binary data, not CSV text: byte 0x07"):
        load_ohlcv(path)


def test_a_sparse_file_on_a_large_machine_is_refused_at_its_first_nul(tmp_path):
    # before: 14.5 GiB of memory, then the wrong message; now the first MiB says what it is
    path = tmp_path / "sparse.csv"
    path.write_bytes(GOOD.encode())
    os.truncate(path, 2**31)
    t0 = time.monotonic()
    with pytest.raises(DataError, match=r"line 6: binary data, not CSV text: byte 0x00 \(NUL\)"):
        load_ohlcv(path)
    assert time.monotonic() - t0 < 5


def test_invalid_utf8_names_its_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(GOOD.encode() + "2020-01-07,1,2,1,2,0,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"line 6: not a UTF-8 text file \(byte 0xe9\); fix: save it as UTF-8"):
        load_ohlcv(path)


def test_a_csv_larger_than_memory_is_refused_up_front_naming_size_budget_and_limit(tmp_path, monkeypatch):
    path = tmp_path / "big.csv"
    path.write_bytes(GOOD.encode())
    os.truncate(path, 64 * 2**20)
    _budget(monkeypatch, 10)
    monkeypatch.setattr(pd, "read_csv", lambda *a, **k: pytest.fail("pandas read the file"))
    with pytest.raises(DataError) as info:
        load_ohlcv(path)
    assert str(info.value) == (f"{path}: too large to load: 64 MiB of text need ~64 MiB, over the 10 MiB "
                               "this process may still use (a test's limit); fix: split the file into smaller ones "
                               "(fewer rows each: a directory of them loads one by one as a universe) "
                               "or raise the container's memory limit")


def test_the_rows_of_the_first_mib_size_the_whole_file(tmp_path, monkeypatch):
    # 3 MiB of short lines fits as text but not as rows: judged from the first MiB, before pandas
    line = b"2020-01-02,1,1,1,1,5\n"
    path = tmp_path / "rows.csv"
    path.write_bytes(b"datetime,open,high,low,close,volume\n" + line * (3 * 2**20 // len(line)))
    _budget(monkeypatch, 20)
    monkeypatch.setattr(pd, "read_csv", lambda *a, **k: pytest.fail("pandas read the file"))
    with pytest.raises(DataError, match=r"too large to load: 3\.0 MiB of text, ~149,7\d\d rows need ~3\d MiB, "
                                        r"over the 20 MiB"):
        load_ohlcv(path)


def test_a_gzip_bomb_is_stopped_once_over_the_budget(tmp_path, monkeypatch):
    line = b"2020-01-02,1.5,2.5,1.0,2.0,100\n"
    member = gzip.compress(line * (2**20 // len(line)))
    path = tmp_path / "bomb.csv.gz"
    path.write_bytes(gzip.compress(b"datetime,open,high,low,close,volume\n") + member * 256)  # 256 MiB of text
    assert path.stat().st_size < 2**20
    _budget(monkeypatch, 16)
    t0 = time.monotonic()
    with pytest.raises(DataError, match=r"bomb\.csv\.gz: too large to load: over \d\.\d MiB of text, [\d,]+ rows read "
                                        r"\(decompressed so far from a \d+ KiB \.gz file; stopped there\) "
                                        r"need ~\d\d MiB, over the 16 MiB"):
        load_ohlcv(path)
    assert time.monotonic() - t0 < 5


def test_a_parquet_file_is_judged_from_its_footer(tmp_path, monkeypatch):
    frame = load_ohlcv("sp500")
    path = tmp_path / "sp.parquet"
    frame.to_parquet(path)
    _budget(monkeypatch, 1)
    monkeypatch.setattr(pd, "read_parquet", lambda *a, **k: pytest.fail("pandas read the file"))
    with pytest.raises(DataError, match=rf"sp\.parquet: too large to load: \d+ KiB of parquet, {len(frame):,} rows x 6 "
                                        r"columns need ~\d\.\d MiB, over the 1\.0 MiB this process may still use"):
        load_ohlcv(path)


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the shared sample data folder is not here")
def test_the_shared_real_data_still_loads():
    for path in sorted(SHARED_DATA.glob("*.csv")):
        assert len(load_ohlcv(path)) > 10, path


# --------------------------------------------------------------------------- time zones


def test_daily_bars_keep_their_local_date_whatever_their_zone(tmp_path, caplog):
    # before: Friday bars stamped 20:00-05:00 became Saturday 01:00 UTC
    rows = "".join(f"2020-01-{d:02d} 20:00:00-05:00,1,2,1,2,0\n" for d in (3, 10, 17, 24, 31))
    path = _write(tmp_path, "datetime,open,high,low,close,volume\n" + rows, "fridays.csv")
    with caplog.at_level(logging.INFO, logger="datafeeds.loader"):
        df = load_ohlcv(path)
    assert set(df.index.day_name()) == {"Friday"} and df.index[0] == pd.Timestamp("2020-01-03 20:00")
    assert "the bars are daily or coarser (median spacing 168.0 h): each keeps its local date" in caplog.text
    # midnight stamps across a summer-time change keep their dates too (offsets differ row to row)
    path = _write(tmp_path, "Date,Open,High,Low,Close,Volume\n2020-03-06 00:00-05:00,1,2,1,2,0\n"
                            "2020-03-09 00:00-04:00,1,2,1,2,0\n2020-03-10 00:00-04:00,1,2,1,2,0\n", "dst.csv")
    assert list(load_ohlcv(path).index) == [pd.Timestamp(d) for d in ("2020-03-06", "2020-03-09", "2020-03-10")]


def test_hourly_bars_with_offsets_still_convert_to_utc(tmp_path, caplog):
    path = _write(tmp_path, "datetime,open,high,low,close,volume\n2020-03-06 20:00:00-05:00,1,2,1,2,0\n"
                            "2020-03-06 21:00:00-05:00,1,2,1,2,0\n2020-03-06 23:00:00-04:00,1,2,1,2,0\n", "hourly.csv")
    with caplog.at_level(logging.INFO, logger="datafeeds.loader"):
        df = load_ohlcv(path)
    assert list(df.index) == [pd.Timestamp("2020-03-07 01:00"), pd.Timestamp("2020-03-07 02:00"),
                              pd.Timestamp("2020-03-07 03:00")]
    assert "the bars are intraday (median spacing 1.0 h): converted to UTC" in caplog.text


def test_a_tz_aware_daily_parquet_keeps_its_local_dates(tmp_path):
    idx = pd.DatetimeIndex(["2020-01-03 20:00", "2020-01-06 20:00", "2020-01-07 20:00"], tz="America/New_York")
    frame = pd.DataFrame({"open": 1.0, "high": 2.0, "low": 1.0, "close": 2.0, "volume": 0.0}, index=idx)
    frame.to_parquet(tmp_path / "d.parquet")
    assert list(load_ohlcv(tmp_path / "d.parquet").index.day_name()) == ["Friday", "Monday", "Tuesday"]
