import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import weakref
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import agents.data.store as store_mod
from agents.data.features import FeatureConfig, FeatureSpec, compute_features
from agents.data.pooled import PooledSequenceDataset
from agents.data.store import FeatureStore, default_cache_root, release_pages
from datafeeds import load_ohlcv
from labeling import TBMConfig, triple_barrier_labels

ROOT = Path(__file__).resolve().parents[1]
SPEC = FeatureSpec.default()
TBM = TBMConfig(pt=1.5, sl=1.0, horizon=10)


@pytest.fixture(scope="module")
def frames():
    return {
        "sp500": load_ohlcv("sp500", end="2003-12-31"),
        "nasdaq": load_ohlcv("nasdaq", start="2001-01-01", end="2004-06-30"),
        "goog": load_ohlcv("goog", end="2006-12-31"),
    }


def _csv(tmp_path: Path, df: pd.DataFrame, name: str) -> Path:
    path = tmp_path / f"{name}.csv"
    df[["open", "high", "low", "close", "volume"]].to_csv(path, index_label="datetime")
    return path


def _no_compute(*args, **kwargs):
    raise AssertionError("compute_features was called: the store was rebuilt")


# ------------------------------------------------------------------------------------------- contents


def test_store_holds_each_instruments_features_labels_and_times(tmp_path, frames):
    store = FeatureStore.build_or_open(frames, SPEC, TBM, tmp_path)
    assert store.symbols == ["sp500", "nasdaq", "goog"]
    assert store.path == tmp_path / store.key and (store.path / "index.json").is_file()
    assert store.names == list(SPEC.pinned(frames["sp500"].columns).columns)
    assert store.spec == SPEC.pinned(frames["sp500"].columns) and store.tbm == TBM
    for sym, df in frames.items():
        x, _ = compute_features(df, SPEC.pinned(df.columns))
        labels = triple_barrier_labels(df, config=TBM)
        pos = df.index.get_indexer(labels.index)
        y = np.full(len(df), np.nan, np.float32)
        y[pos] = labels["label"].to_numpy(np.float32)
        t1 = np.full(len(df), -1, np.int32)
        t1[pos] = df.index.get_indexer(labels["t1"])
        for got, want in ((store.features(sym), x), (store.labels(sym), y), (store.t1(sym), t1),
                          (store.time(sym), df.index.as_unit("ns").asi8)):
            assert isinstance(got, np.memmap) and got.dtype == want.dtype and got.shape == want.shape
            assert got.tobytes() == want.tobytes()  # bit-equal, NaN included
            assert not got.flags.writeable
        info = store.info(sym)
        assert info["n_bars"] == len(df) and info["n_labelled"] == len(labels) > 0
        assert info["first"] == df.index[0].isoformat() and info["last"] == df.index[-1].isoformat()
        assert info["sha256"] == df.attrs["sha256"] and info["source"] == sym and info["warmup"] == SPEC.warmup
    assert store.n_bars == sum(len(df) for df in frames.values())
    index = json.loads((store.path / "index.json").read_text())
    assert index["format"] == store_mod.STORE_FORMAT and index["key"] == store.key
    assert index["spec"] == store.spec.to_dict() and index["tbm"] == TBM.to_dict()
    with pytest.raises(ValueError, match="'msft' is not in the feature store"):
        store.features("msft")


def test_pooled_windows_over_a_store_are_the_instruments_own_bars(tmp_path, frames):
    store = FeatureStore.build_or_open(frames, SPEC, TBM, tmp_path)
    seq_len = 8
    ranges = [(i, SPEC.warmup + seq_len, store.info(s)["n_bars"] - TBM.horizon) for i, s in enumerate(store.symbols)]
    ds = PooledSequenceDataset([store.features(s) for s in store.symbols], [store.labels(s) for s in store.symbols],
                               seq_len, ranges)
    ids = np.random.default_rng(0).integers(0, len(ds), 50)
    x, y = ds.batch(ids)
    inst, end = ds.ends(ids)
    for k in range(len(ids)):
        sym = store.symbols[inst[k]]
        x_ref, _ = compute_features(frames[sym], SPEC)
        np.testing.assert_array_equal(x[k].numpy(), x_ref[end[k] - seq_len + 1 : end[k] + 1])
        assert y[k].item() == store.labels(sym)[end[k]]


# ------------------------------------------------------------------------------------------- the cache


def test_identical_inputs_reuse_the_store_without_recomputing(tmp_path, frames, monkeypatch, caplog):
    first = FeatureStore.build_or_open(frames, SPEC, TBM, tmp_path)
    monkeypatch.setattr(store_mod, "compute_features", _no_compute)
    monkeypatch.setattr(store_mod, "triple_barrier_labels", _no_compute)
    with caplog.at_level(logging.INFO, logger="agents.data.store"):
        again = FeatureStore.build_or_open(dict(frames), SPEC, TBM, tmp_path)
    assert again.path == first.path and "reusing" in caplog.text
    assert again.features("goog").tobytes() == first.features("goog").tobytes()
    assert [p.name for p in tmp_path.iterdir()] == [first.key]  # nothing else was written
    opened = FeatureStore.open(first.path)
    assert opened.key == first.key and opened.symbols == first.symbols


class _LazyFrames(Mapping):
    """Loads a frame on access and keeps none: what a universe too big for RAM would pass."""

    def __init__(self, specs):
        self.specs, self.refs, self.most_alive, self.loads = specs, [], 0, 0

    def __getitem__(self, sym):
        df = load_ohlcv(*self.specs[sym][:1], **self.specs[sym][1])
        self.loads += 1
        self.refs.append(weakref.ref(df))
        self.most_alive = max(self.most_alive, sum(r() is not None for r in self.refs))
        return df

    def __iter__(self):
        return iter(self.specs)

    def __len__(self):
        return len(self.specs)


def test_frames_are_taken_one_at_a_time(tmp_path, frames):
    lazy = _LazyFrames({"sp500": ("sp500", {"end": "2003-12-31"}),
                        "nasdaq": ("nasdaq", {"start": "2001-01-01", "end": "2004-06-30"}),
                        "goog": ("goog", {"end": "2006-12-31"})})
    store = FeatureStore.build_or_open(lazy, SPEC, TBM, tmp_path)
    assert lazy.most_alive == 1 and lazy.loads == 6  # once for the key, once to build
    assert store.key == FeatureStore.build_or_open(frames, SPEC, TBM, tmp_path).key
    FeatureStore.build_or_open(lazy, SPEC, TBM, tmp_path)
    assert lazy.loads == 9  # reuse loads each frame once, for the key


def test_what_changes_the_key(tmp_path, frames, monkeypatch):
    base = FeatureStore.build_or_open(frames, SPEC, TBM, tmp_path).key
    keys = {}
    with monkeypatch.context() as m:
        m.setattr(FeatureStore, "_build", classmethod(lambda cls, *a: a[-1]))  # the key instead of a build
        keys["tbm"] = FeatureStore.build_or_open(frames, SPEC, TBMConfig(pt=2.0, sl=1.0, horizon=10), tmp_path)
        keys["spec"] = FeatureStore.build_or_open(frames, FeatureSpec.from_names(["log_ret", "rsi"]), TBM, tmp_path)
        keys["order"] = FeatureStore.build_or_open(dict(reversed(list(frames.items()))), SPEC, TBM, tmp_path)
        keys["subset"] = FeatureStore.build_or_open({"sp500": frames["sp500"]}, SPEC, TBM, tmp_path)
        keys["end date"] = FeatureStore.build_or_open(
            frames | {"goog": load_ohlcv("goog", end="2006-11-30")}, SPEC, TBM, tmp_path)  # same file, same sha256
        edited = frames["goog"].copy()
        edited.iloc[100, edited.columns.get_loc("close")] *= 1.01  # edited after loading: attrs unchanged
        assert edited.attrs["sha256"] == frames["goog"].attrs["sha256"]
        keys["edited"] = FeatureStore.build_or_open(frames | {"goog": edited}, SPEC, TBM, tmp_path)
        m.setattr(store_mod, "code_digest", lambda: "0" * 64)  # the feature or label code changed
        keys["code"] = FeatureStore.build_or_open(frames, SPEC, TBM, tmp_path)
        m.undo()
        m.setattr(FeatureStore, "_build", classmethod(lambda cls, *a: a[-1]))
        keys["same"] = FeatureStore.build_or_open(frames, SPEC, TBM, tmp_path)
    assert keys.pop("same").key == base  # an existing store is opened, not built
    assert all(isinstance(k, str) and len(k) == 64 for k in keys.values()), keys
    assert len(set(keys.values()) | {base}) == len(keys) + 1


def test_a_changed_file_builds_a_new_store(tmp_path, frames):
    data = tmp_path / "data"
    data.mkdir()
    df = frames["goog"]
    path = _csv(data, df, "goog")
    one = FeatureStore.build_or_open({"goog": load_ohlcv(path), "sp500": frames["sp500"]}, SPEC, TBM,
                                     tmp_path / "cache")
    changed = df.copy()
    changed.iloc[-1, changed.columns.get_loc("close")] += 1.0
    _csv(data, changed, "goog")
    two = FeatureStore.build_or_open({"goog": load_ohlcv(path), "sp500": frames["sp500"]}, SPEC, TBM,
                                     tmp_path / "cache")
    assert two.key != one.key and two.path.is_dir() and one.path.is_dir()
    assert two.info("goog")["sha256"] != one.info("goog")["sha256"]
    assert two.features("sp500").tobytes() == one.features("sp500").tobytes()
    assert two.features("goog")[-1].tobytes() != one.features("goog")[-1].tobytes()  # the new close's features
    assert two.features("goog")[:-1].tobytes() == one.features("goog")[:-1].tobytes()  # causal: earlier rows equal


# ------------------------------------------------------------------------------------------- atomicity


def test_a_failed_build_leaves_no_store_and_the_next_call_builds_it(tmp_path, frames, monkeypatch):
    calls = []

    def fail_on_second(df, spec):
        calls.append(len(df))
        if len(calls) == 2:
            raise RuntimeError("killed mid-build")
        return compute_features(df, spec)

    monkeypatch.setattr(store_mod, "compute_features", fail_on_second)
    with pytest.raises(RuntimeError, match="killed mid-build"):
        FeatureStore.build_or_open(frames, SPEC, TBM, tmp_path)
    assert list(tmp_path.iterdir()) == []  # no store at the key, no temporary folder
    monkeypatch.setattr(store_mod, "compute_features", compute_features)
    store = FeatureStore.build_or_open(frames, SPEC, TBM, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [store.key]
    assert store.features("goog").shape[0] == len(frames["goog"])


_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import agents.data.store as store_mod
    from agents.data.features import FeatureSpec, compute_features
    from datafeeds import load_ohlcv
    from labeling import TBMConfig
    root = Path(sys.argv[1])
    def slow(df, spec):
        out = compute_features(df, spec)
        (root / "started").write_text("1")
        time.sleep(60)  # killed here, with the first instrument's files written
        return out
    store_mod.compute_features = slow
    frames = {"sp500": load_ohlcv("sp500", end="2003-12-31"), "goog": load_ohlcv("goog", end="2006-12-31")}
    tbm = TBMConfig(pt=1.5, sl=1.0, horizon=10)
    store_mod.FeatureStore.build_or_open(frames, FeatureSpec.default(), tbm, root / "cache")
""")


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_a_killed_build_leaves_no_store_and_its_leftovers_are_removed(tmp_path, frames):
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "started").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the child build did not start"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = list((tmp_path / "cache").iterdir())
    assert len(left) == 1 and left[0].name.startswith(".") and ".tmp-" in left[0].name  # only the temporary folder
    universe = {"sp500": frames["sp500"], "goog": frames["goog"]}
    store = FeatureStore.build_or_open(universe, SPEC, TBM, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [store.key]  # the dead build's folder is gone
    assert left[0].name.startswith(f".{store.key}.tmp-")


def test_a_live_builders_folder_is_left_alone(tmp_path, frames):
    live = tmp_path / f".{'a' * 64}.tmp-{os.getpid()}-00ff"
    live.mkdir()
    (live / "owner.json").write_text(json.dumps({"host": "another-host", "pid": 1}))
    dead_elsewhere = tmp_path / f".{'b' * 64}.tmp-999999999-00ff"
    dead_elsewhere.mkdir()
    (dead_elsewhere / "owner.json").write_text(json.dumps({"host": "another-host", "pid": 999999999}))
    FeatureStore.build_or_open({"sp500": frames["sp500"]}, SPEC, TBM, tmp_path)
    assert live.is_dir() and dead_elsewhere.is_dir()  # another host's build may be alive
    day_old = time.time() - store_mod.STALE_AFTER - 60
    for path in (dead_elsewhere, dead_elsewhere / "owner.json"):
        os.utime(path, (day_old, day_old))
    FeatureStore.build_or_open({"sp500": frames["sp500"]}, SPEC, TBM, tmp_path)
    assert live.is_dir() and not dead_elsewhere.exists()  # untouched for a day: abandoned


def test_an_incomplete_store_is_rebuilt(tmp_path, frames, caplog):
    store = FeatureStore.build_or_open(frames, SPEC, TBM, tmp_path)
    victim = store.path / store.info("nasdaq")["dir"] / "labels.npy"
    with open(victim, "r+b") as fh:
        fh.truncate(victim.stat().st_size - 4)
    with pytest.raises(ValueError, match="labels.npy has .* bytes, expected"):
        FeatureStore.open(store.path)
    with caplog.at_level(logging.WARNING, logger="agents.data.store"):
        again = FeatureStore.build_or_open(frames, SPEC, TBM, tmp_path)
    assert "incomplete" in caplog.text and again.path == store.path
    assert again.labels("nasdaq").shape == (len(frames["nasdaq"]),)
    assert [p.name for p in tmp_path.iterdir()] == [store.key]


# ------------------------------------------------------------------------------------------- refusals


def test_a_frame_without_sha256_is_refused_in_one_line(tmp_path, frames):
    bare = frames["goog"].copy()
    bare.attrs.clear()
    with pytest.raises(ValueError, match=r"^goog: the frame has no attrs\['sha256'\].*load it with datafeeds") as err:
        FeatureStore.build_or_open({"sp500": frames["sp500"], "goog": bare}, SPEC, TBM, tmp_path)
    assert "\n" not in str(err.value)
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


def test_other_bad_inputs_are_refused(tmp_path, frames):
    with pytest.raises(ValueError, match="non-empty mapping"):
        FeatureStore.build_or_open({}, SPEC, TBM, tmp_path)
    with pytest.raises(ValueError, match="spec must be a FeatureSpec"):
        FeatureStore.build_or_open(frames, ["rsi"], TBM, tmp_path)
    with pytest.raises(ValueError, match=r"sp500: the frame lacks column\(s\) \['volume'\]"):
        FeatureStore.build_or_open({"sp500": frames["sp500"].drop(columns="volume")}, SPEC, TBM, tmp_path)
    book = frames["goog"].assign(bid_size=1.0, ask_size=2.0)
    book.attrs.update(frames["goog"].attrs)
    with pytest.raises(ValueError, match="resolves differently for 'sp500' and 'goog'.*pin it"):
        FeatureStore.build_or_open({"sp500": frames["sp500"], "goog": book}, SPEC, TBM, tmp_path)
    pinned = FeatureSpec((*SPEC.features[:-1], FeatureConfig("obi", {"source": "bvc"})))
    FeatureStore.build_or_open({"sp500": frames["sp500"], "goog": book}, pinned, TBM, tmp_path)  # pinned: fine
    with pytest.raises(ValueError, match="not a feature store"):
        FeatureStore.open(tmp_path)


def test_a_labelling_error_names_the_symbol(tmp_path, frames):
    bad = frames["goog"].copy()
    bad.iloc[5, bad.columns.get_loc("close")] = np.nan
    with pytest.raises(ValueError, match=r"^goog: column 'close'"):
        FeatureStore.build_or_open({"goog": bad}, SPEC, TBM, tmp_path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- odds and ends


def test_default_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("TBM_CACHE", str(tmp_path / "mine"))
    assert default_cache_root() == tmp_path / "mine"
    monkeypatch.delenv("TBM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "tbm-backtest" / "features"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_root() == tmp_path / "home" / ".cache" / "tbm-backtest" / "features"


def test_build_or_open_uses_the_default_root(monkeypatch, tmp_path, frames):
    monkeypatch.setenv("TBM_CACHE", str(tmp_path / "env"))
    store = FeatureStore.build_or_open({"sp500": frames["sp500"]}, SPEC, TBM)
    assert store.path.parent == tmp_path / "env"


def _rss_file_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise KeyError


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_release_unmaps_pages_that_were_read(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.ones((4_000_000, 4), np.float32))  # 64 MiB
    mm = np.load(path, mmap_mode="r")
    other = np.ones(10)
    before = _rss_file_kib()
    assert float(mm[::256].sum()) == 15625 * 4  # a row every 4 KiB: touches every page
    assert _rss_file_kib() - before > 32 * 1024
    assert release_pages(mm, mm[10:], other) == 1  # one mapping; the in-memory array is left alone
    assert _rss_file_kib() - before < 8 * 1024
    assert float(mm[::256].sum()) == 15625 * 4  # still readable
