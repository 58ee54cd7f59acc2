"""benchmarks/bench_scale.py leaves no store folders behind: a kill ends through its cleanup, and a
kill -9's folders are swept by the next run."""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_scale.py"


def _load():
    if str(SCRIPT.parent) not in sys.path:  # its helpers (_common) sit beside it, as when run as a script
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("bench_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_removes_the_stores_of_dead_runs_only(tmp_path):
    bench = _load()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"bench_scale_{int(dead.stdout)}_abc"
    live = tmp_path / f"bench_scale_{os.getpid()}_def"
    other = tmp_path / "bench_scale_notes"
    for folder in (stale, live, other):
        (folder / "1M").mkdir(parents=True)
    assert bench.sweep_stale_stores(tmp_path) == [stale]
    assert not stale.exists() and live.is_dir() and other.is_dir()


def test_a_killed_run_removes_its_stores(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--sizes", "2x200000"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("bench_scale_*/2x200000")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the child has started writing its store
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert not list(tmp_path.glob("bench_scale_*")), list(tmp_path.iterdir())
