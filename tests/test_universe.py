"""datafeeds.universe: many instruments as one input, and the bundled us_daily universe."""

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import datafeeds
from datafeeds import (DataError, file_sha256, is_universe, list_universes, load_ohlcv, load_universe,
                       sample_info, universe_info, universe_sha256)
from datafeeds.__main__ import main as datafeeds_main

SAMPLES_DIR = Path(datafeeds.__file__).parent / "samples"
US_DAILY = ["sp500", "nasdaq", "goog", "nvda", "orcl", "yhoo"]


def _csv_bytes(name: str) -> bytes:
    return gzip.decompress(Path(sample_info(name)["path"]).read_bytes())


@pytest.fixture
def folder(tmp_path):
    """tmp_path/data with orcl.csv, goog.csv, nvda_daily.csv.gz, plus files a universe must skip."""
    d = tmp_path / "data"
    d.mkdir()
    (d / "orcl.csv").write_bytes(_csv_bytes("orcl"))
    (d / "goog.csv").write_bytes(_csv_bytes("goog"))
    (d / "nvda_daily.csv.gz").write_bytes(Path(sample_info("nvda")["path"]).read_bytes())
    (d / "README.txt").write_text("not data\n")
    (d / "sub").mkdir()
    (d / "sub" / "yhoo.csv").write_bytes(_csv_bytes("yhoo"))  # not recursive
    return d


def _one_line_error(func, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        func(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text and text.strip() == text
    return text


# --------------------------------------------------------------------------- bundled data


@pytest.mark.parametrize("name, rows, first, last", [
    ("goog", 2148, "2004-08-19", "2013-03-01"),
    ("nvda", 4012, "1999-01-22", "2014-12-31"),
    ("orcl", 5036, "1995-01-03", "2014-12-31"),
    ("yhoo", 4965, "1996-04-12", "2015-12-31"),
])
def test_new_stock_samples_load(name, rows, first, last):
    df = load_ohlcv(name)
    assert len(df) == rows
    assert df.index[0] == pd.Timestamp(first) and df.index[-1] == pd.Timestamp(last)
    assert df.attrs["source"] == name
    info = sample_info(name)
    assert (info["rows"], info["first"][:10], info["last"][:10]) == (rows, first, last)
    # the bundled gzip holds exactly the recorded original file
    assert hashlib.sha256(_csv_bytes(name)).hexdigest() == info["original_sha256"]


def test_first_values_are_the_source_digits():
    assert load_ohlcv("goog").iloc[0].tolist() == [100.0, 104.06, 95.96, 100.34, 22351900.0]
    assert load_ohlcv("nvda").iloc[0].tolist() == [1.75, 1.953125, 1.552083, 1.640625, 67867200.0]


def test_new_entries_have_the_same_fields_as_the_old_ones():
    catalogue = json.loads((SAMPLES_DIR / "samples.json").read_text())
    fields = list(catalogue["sp500"])
    for name in ("goog", "nvda", "orcl", "yhoo"):
        assert list(catalogue[name]) == fields
        assert catalogue[name]["file"] == f"{name}.csv.gz"
        assert catalogue[name]["original_file"] == f"{name}_daily.csv"
    assert catalogue["goog"]["licence"] == "AGPL-3.0"
    assert {catalogue[n]["licence"] for n in ("nvda", "orcl", "yhoo")} == {"GPL-3.0"}
    assert all("b853d7c9" in catalogue[n]["source"] for n in ("nvda", "orcl", "yhoo"))


def test_bundled_gzips_are_deterministic():
    for name in ("goog", "nvda", "orcl", "yhoo"):
        head = Path(sample_info(name)["path"]).read_bytes()[:10]
        assert head[3] == 0 and head[4:8] == b"\0\0\0\0"  # no file name, mtime 0


def test_universe_catalogue():
    assert list_universes() == ["us_daily"]
    info = universe_info("us_daily")
    assert info["members"] == US_DAILY and info["name"] == "us_daily" and info["notes"]
    info["members"].append("x")  # a returned dict must not alias the catalogue
    assert universe_info("us_daily")["members"] == US_DAILY
    for name in list_universes():
        assert set(universe_info(name)["members"]) <= set(datafeeds.list_samples())


def test_listing_shows_universes(capsys):
    assert datafeeds_main([]) == 0
    out = capsys.readouterr().out
    samples_at = out.index("stoxx50fut_1m")
    line = next(ln for ln in out.splitlines() if ln.startswith("us_daily"))
    assert line.split(None, 1)[1] == "sp500, nasdaq, goog, nvda, orcl, yhoo"
    assert out.index(line) > samples_at  # below the samples table


# --------------------------------------------------------------------------- sources


def test_bundled_universe_in_listed_order():
    frames = load_universe("us_daily")
    assert list(frames) == US_DAILY
    for name, df in frames.items():
        assert len(df) == sample_info(name)["rows"]
        assert df.attrs["source"] == name
        assert df.attrs["sha256"] == file_sha256(sample_info(name)["path"])


def test_directory_sorted_by_symbol_not_recursive(folder):
    frames = load_universe(folder)
    assert list(frames) == ["goog", "nvda_daily", "orcl"]
    assert load_universe(str(folder)).keys() == frames.keys()
    pd.testing.assert_frame_equal(frames["orcl"], load_ohlcv("orcl"))
    assert len(frames["nvda_daily"]) == 4012
    assert frames["goog"].attrs["source"] == str((folder / "goog.csv").resolve())
    assert frames["goog"].attrs["sha256"] == file_sha256(folder / "goog.csv")


def test_glob_sorted_by_symbol(folder):
    assert list(load_universe(str(folder / "*.csv"))) == ["goog", "orcl"]
    assert list(load_universe(str(folder / "*"))) == ["goog", "nvda_daily", "orcl"]  # README.txt skipped
    assert list(load_universe(str(folder / "[on]*"))) == ["nvda_daily", "orcl"]


def test_comma_list_of_paths_keeps_its_order(folder):
    frames = load_universe(f"{folder / 'orcl.csv'},{folder / 'nvda_daily.csv.gz'},{folder / 'goog.csv'}")
    assert list(frames) == ["orcl", "nvda_daily", "goog"]
    assert [len(df) for df in frames.values()] == [5036, 4012, 2148]


def test_comma_list_of_sample_names_keeps_its_order():
    frames = load_universe("yhoo, sp500,goog")
    assert list(frames) == ["yhoo", "sp500", "goog"]
    assert [df.attrs["source"] for df in frames.values()] == ["yhoo", "sp500", "goog"]
    assert list(load_universe(["nvda", "orcl"])) == ["nvda", "orcl"]  # a Python list is a comma list


def test_single_file_or_sample_is_a_universe_of_one(folder):
    assert list(load_universe("goog")) == ["goog"]
    assert list(load_universe(folder / "nvda_daily.csv.gz")) == ["nvda_daily"]


def test_symbol_drops_only_the_data_suffix(tmp_path):
    (tmp_path / "BRK.B.csv").write_bytes(_csv_bytes("orcl"))
    (tmp_path / "x.CSV.GZ").write_bytes(Path(sample_info("goog")["path"]).read_bytes())
    assert list(load_universe(tmp_path)) == ["BRK.B", "x"]


def test_start_end_and_min_rows_pass_through():
    frames = load_universe("us_daily", start="2010-01-01", end="2010-12-31")
    for name, df in frames.items():
        assert df.index[0] >= pd.Timestamp("2010-01-01") and df.index[-1] <= pd.Timestamp("2010-12-31")
        assert df.index[0].year == 2010 and df.index[-1].year == 2010
        assert len(df) == len(load_ohlcv(name, start="2010-01-01", end="2010-12-31")) == 252
    text = _one_line_error(load_universe, "sp500,goog", start="2012-01-01", min_rows=1000)
    assert text.startswith("sample 'goog': only 291 rows from 2012-01-01 to the end, need min_rows=1000")


# --------------------------------------------------------------------------- errors


def test_empty_directory(tmp_path):
    text = _one_line_error(load_universe, tmp_path)
    assert text.startswith(f"{tmp_path.resolve()}: no .csv, .csv.gz, .parquet files in this directory")
    (tmp_path / "notes.txt").write_text("x")
    assert "no .csv, .csv.gz, .parquet files" in _one_line_error(load_universe, tmp_path)


def test_glob_matching_nothing(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    text = _one_line_error(load_universe, str(tmp_path / "*"))
    assert text.startswith(f"{tmp_path / '*'}: the glob matches no .csv, .csv.gz, .parquet file")


def test_two_files_with_one_symbol_named_both(folder):
    (folder / "goog.csv.gz").write_bytes(Path(sample_info("goog")["path"]).read_bytes())
    text = _one_line_error(load_universe, folder)
    assert f"two inputs have the symbol 'goog': {folder / 'goog.csv'} and {folder / 'goog.csv.gz'}" in text
    text = _one_line_error(load_universe, "sp500,nasdaq,sp500")
    assert "two inputs have the symbol 'sp500': sp500 and sp500" in text
    (folder / "sp500.csv").write_bytes(_csv_bytes("sp500"))
    assert "symbol 'sp500'" in _one_line_error(load_universe, f"sp500,{folder / 'sp500.csv'}")


def test_member_that_fails_to_load_names_its_file(folder):
    bad = folder / "bad.csv"
    bad.write_text("datetime,open,high,low,close,volume\n2020-01-01,1,2,0.5,1.5,10\n2020-01-02,1,2,0.5,x,10\n")
    text = _one_line_error(load_universe, folder)
    assert text.startswith(f"{bad}, line 3 (2020-01-02 00:00:00), column 'close'")
    missing = folder / "missing.csv"
    assert _one_line_error(load_universe, f"goog,{missing}").startswith(f"{missing}: file not found")


def test_no_instruments_and_empty_items():
    assert _one_line_error(load_universe, []).startswith("empty list: no instruments")
    assert "empty source" in _one_line_error(load_universe, "  ")
    assert "goog,,nvda: item 2 of the comma list is empty" in _one_line_error(load_universe, "goog,,nvda")
    assert "item 2 of the comma list is empty" in _one_line_error(load_universe, "goog,")


def test_unknown_names_suggest_a_near_miss():
    text = _one_line_error(universe_info, "us_dayly")
    assert text == "unknown universe 'us_dayly'; fix: did you mean 'us_daily'? known universes: us_daily"
    text = _one_line_error(load_universe, "us_dayly")
    assert "unknown sample or universe 'us_dayly'" in text and "did you mean 'us_daily'?" in text
    assert "did you mean 'nvda'?" in _one_line_error(load_universe, "nvdaa")


def test_source_of_wrong_type():
    assert "got int" in _one_line_error(load_universe, 42)


# --------------------------------------------------------------------------- key


def test_universe_sha256_is_a_file_key(folder):
    first = universe_sha256(load_universe(folder))
    assert first == universe_sha256(load_universe(folder))
    expected = hashlib.sha256("".join(
        f"{s}\t{file_sha256(folder / f)}\n" for s, f in
        [("goog", "goog.csv"), ("nvda_daily", "nvda_daily.csv.gz"), ("orcl", "orcl.csv")]).encode()).hexdigest()
    assert first == expected
    # order of the dict does not matter, a window cut from the files does not either
    frames = load_universe(f"{folder / 'orcl.csv'},{folder / 'goog.csv'},{folder / 'nvda_daily.csv.gz'}")
    assert universe_sha256(frames) == first
    assert universe_sha256(load_universe(folder, start="2010")) == first
    # one changed value in one file changes the key
    text = (folder / "orcl.csv").read_text()
    lines = text.splitlines()
    lines[-1] = lines[-1].rsplit(",", 1)[0] + ",1"  # last row's volume
    (folder / "orcl.csv").write_text("\n".join(lines) + "\n")
    assert universe_sha256(load_universe(folder)) != first


def test_universe_sha256_needs_loaded_frames():
    assert "non-empty dict" in _one_line_error(universe_sha256, {})
    assert "symbol 'x' has no attrs['sha256']" in _one_line_error(universe_sha256, {"x": pd.DataFrame()})


# --------------------------------------------------------------------------- is_universe


def test_is_universe_truth_table(folder, tmp_path):
    odd = tmp_path / "a,b[1].csv"
    odd.write_bytes(_csv_bytes("goog"))
    assert is_universe("us_daily")
    assert is_universe(folder) and is_universe(str(folder))
    assert is_universe(str(folder / "*.csv")) and is_universe("data/?.csv") and is_universe(str(folder / "[gn]*"))
    assert is_universe(str(folder / "[go]o[gr]*.csv"))  # a [...] class that matches files is a glob
    assert is_universe("sp500,nasdaq") and is_universe("a.csv,b.csv")
    assert is_universe(["sp500"])
    assert not is_universe("sp500") and not is_universe("nvda")
    assert not is_universe(folder / "goog.csv") and not is_universe(str(folder / "goog.csv"))
    assert not is_universe(str(odd))  # an existing file, whatever its name
    assert not is_universe("missing.csv") and not is_universe("us_dayly")
    assert not is_universe("data/[ab].csv") and not is_universe(str(folder / "prices[1].csv"))  # missing files
    assert not is_universe(42) and not is_universe(None)
    assert list(load_universe(str(odd))) == ["a,b[1]"]


def test_listing_and_routing_do_not_load_pandas():
    code = ("import sys, datafeeds; assert datafeeds.is_universe('us_daily'); "
            "assert datafeeds.list_universes() == ['us_daily']; datafeeds.universe_info('us_daily'); "
            "assert 'pandas' not in sys.modules, 'pandas was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(datafeeds.__file__).parent.parent)
    assert result.returncode == 0, result.stderr


def test_a_lazy_universe_loads_each_member_when_read_and_keeps_none(monkeypatch):
    import datafeeds.loader as loader

    calls = []
    real = loader.load_ohlcv
    monkeypatch.setattr(loader, "load_ohlcv", lambda item, **kw: calls.append(item) or real(item, **kw))
    frames = datafeeds.load_universe("sp500,nvda", start="2010-01-01", lazy=True)
    assert list(frames) == ["sp500", "nvda"] and len(frames) == 2 and calls == []  # nothing loaded yet
    first = frames["nvda"]
    assert first.index[0] >= pd.Timestamp("2010-01-01") and calls == ["nvda"]
    assert frames["nvda"] is not first and calls == ["nvda", "nvda"]  # read again, loaded again: none kept
    assert datafeeds.universe_sha256(frames) == datafeeds.universe_sha256(dict(datafeeds.load_universe("sp500,nvda")))


def test_a_missing_file_with_a_bracket_in_its_name_is_a_missing_file_not_a_universe(folder):
    # before: "prices[1].csv" was taken for a glob, so run_backtest called it a universe
    missing = folder / "prices[1].csv"
    assert _one_line_error(load_universe, str(missing)) == (f"{missing}: file not found; fix: check the path (or pass "
                                                            "a name from list_samples())")
    assert _one_line_error(load_ohlcv, str(missing)).startswith(f"{missing}: file not found")
    assert list(load_universe(str(folder / "[gn]*"))) == ["goog", "nvda_daily"]  # a real glob still is one
    done = subprocess.run([sys.executable, "run_backtest.py", "--data", str(missing)], capture_output=True, text=True,
                          cwd=Path(datafeeds.__file__).parent.parent, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == (f"error: --data: {missing}: file not found; fix: check "
                                                           "the path (or pass a name from list_samples())")
