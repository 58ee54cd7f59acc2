"""benchmarks/bench_universe_wf.py: its synthetic universe exercises the calendar union (late starts, early
ends, missing days) and reads back as a universe folder; its timers leave the walk-forward unchanged; its
table prints every step."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from datafeeds import is_universe, load_universe

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_universe_wf.py"


def _load():
    if str(SCRIPT.parent) not in sys.path:  # its helpers (_common) sit beside it, as when run as a script
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("bench_universe_wf", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_synthetic_universe_reads_back_with_late_starts_and_early_ends(tmp_path):
    bench = _load()
    info = bench.write_universe(tmp_path / "data", 8, 300, seed=0)
    assert is_universe(str(tmp_path / "data"))
    frames = load_universe(str(tmp_path / "data"))
    assert list(frames) == [f"SYN{i:03d}" for i in range(8)]
    assert info["late_start"] == ["SYN003"] and info["early_end"] == ["SYN007"]
    assert info["bars"] == sum(len(f) for f in frames.values())
    calendar = pd.bdate_range("2000-01-03", periods=300)
    union = pd.DatetimeIndex(sorted(set().union(*(f.index for f in frames.values()))))
    assert union.equals(pd.DatetimeIndex(calendar))  # daily-spaced, and the members together cover every day
    assert frames["SYN003"].index[0] >= calendar[60] and frames["SYN007"].index[-1] < calendar[300 - 45]
    for sym, df in frames.items():
        assert len(df) < 300  # each misses some days of its own
        assert (df["low"] <= df[["open", "close"]].min(axis=1)).all()
        assert (df["high"] >= df[["open", "close"]].max(axis=1)).all()
        if sym not in ("SYN003", "SYN007"):
            assert df.index[0] == calendar[0] and df.index[-1] == calendar[-1]
    # deterministic: the same seed writes the same files
    bench.write_universe(tmp_path / "again", 8, 300, seed=0)
    assert (tmp_path / "again" / "SYN005.csv").read_bytes() == (tmp_path / "data" / "SYN005.csv").read_bytes()


def test_the_child_times_the_steps_and_puts_the_walk_forward_back(tmp_path, monkeypatch):
    """run_child with the walk-forward's main replaced: every wrapped function is called through its timer,
    and afterwards the modules hold the original functions again."""
    import engine.walkforward.cli as cli
    import engine.walkforward.run as wfr
    from engine.walkforward import universe

    bench = _load()
    names = {(universe, "load"): "load", (wfr, "_search"): "search", (wfr, "fit"): "fit (search)",
             (wfr, "_finalise"): "finalise", (wfr, "export_agent"): "onnx export"}
    originals = {key: getattr(*key) for key in names}

    def fake_main(argv):
        universe.load("cfg")
        wfr._search()
        wfr._finalise()
        return 3  # no report.json is read unless the command succeeded

    def search():
        wfr.fit()

    def finalise():
        wfr.fit()
        wfr.export_agent()

    for (module, attr), fn in {(universe, "load"): lambda cfg: None, (wfr, "_search"): search,
                               (wfr, "_finalise"): finalise, (wfr, "fit"): lambda: None,
                               (wfr, "export_agent"): lambda: None}.items():
        monkeypatch.setattr(module, attr, fn)
    patched = {key: getattr(*key) for key in names}
    monkeypatch.setattr(cli, "main", fake_main)
    result = tmp_path / "r.json"
    assert bench.run_child(str(result), ["--out", str(tmp_path)]) == 3
    r = __import__("json").loads(result.read_text())
    assert r["rc"] == 3 and "report" not in r
    assert {k: v["calls"] for k, v in r["steps"].items()} == {
        "load": 1, "search": 1, "fit (search)": 1, "finalise": 1, "fit (finalise)": 1, "onnx export": 1}
    assert r["peak"] >= r["steps"]["search"]["peak"] > 0
    assert {key: getattr(*key) for key in names} == patched  # unwrapped again
    monkeypatch.undo()
    assert {key: getattr(*key) for key in names} == originals


def test_the_table_names_every_step(capsys):
    bench = _load()
    steps = {name: {"s": 1.5, "calls": 2, "peak": 2048 if name in ("search", "finalise") else 0}
             for name in bench.ORDER}
    bench.print_table({"imports_s": 4.0, "peak_imports": 1024, "steps": steps, "wall_s": 30.25, "peak": 4096})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["step", "seconds", "calls", "peak"]
    rows = {ln.split("  ")[0].strip(): ln for ln in lines[2:]}
    assert list(rows) == ["imports", *bench.ORDER, "total (child)"]
    assert rows["total (child)"].split()[2:4] == ["30.2", "4"]  # seconds; peak MiB (4096 KiB)
    assert rows["search"].split()[1:4] == ["1.5", "2", "2"]


def test_sweep_removes_the_folders_of_dead_runs_only(tmp_path):
    bench = _load()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"bench_universe_wf_{int(dead.stdout)}_abc"
    live = tmp_path / f"bench_universe_wf_{os.getpid()}_def"
    for folder in (stale, live):
        (folder / "data").mkdir(parents=True)
    assert bench.sweep_stale(tmp_path) == [stale]
    assert not stale.exists() and live.is_dir()
