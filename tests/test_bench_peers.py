"""benchmarks/bench_peers.py: on a few thousand bars vectorbt and backtesting.py make exactly our trades, long-only
and with longs and shorts mixed (side included); its comparison tells a trade of the other side apart.
Skipped without the peers (the optional ``bench`` extra: pip install -e ".[bench]")."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("vectorbt", reason='the peers are an optional extra: pip install -e ".[bench]"')
pytest.importorskip("backtesting", reason='the peers are an optional extra: pip install -e ".[bench]"')

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_peers.py"


def _load():
    sys.path.insert(0, str(SCRIPT.parent))  # its `from _common import ...`
    try:
        spec = importlib.util.spec_from_file_location("bench_peers", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def test_compare_counts_a_trade_of_the_other_side_as_different(capsys):
    bench = _load()
    ours = pd.DataFrame({"entry_bar": [3, 9], "exit_bar": [5, 12], "side": [1, -1],
                         "entry_price": [100.0, 101.0], "exit_price": [102.0, 99.0]})
    assert bench.compare("same", ours, ours.copy())
    flipped = ours.assign(side=[1, 1])  # same bars and prices, the short taken long
    assert not bench.compare("flipped", ours, flipped)
    out = capsys.readouterr().out
    assert "same: 2 trades (1 long, 1 short)" in out and "-> IDENTICAL" in out
    assert "flipped: 2 trades (2 long, 0 short), 1 with our entry and exit bars and side" in out
    assert "only ours 1, only theirs 1" in out and "-> DIFFERENT" in out


def test_tiny_run_matches_both_peers_long_only_and_with_shorts():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--bars", "3000", "--grid", "0", "--repeats", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    long_part, mixed = out.split("\nmixed sides:")
    for part in (long_part, mixed):
        assert re.search(r"^  vectorbt [\d.]+: .* -> IDENTICAL$", part, re.M), out
        assert re.search(r"^  backtesting\.py [\d.]+ \(3,000 bars\): .* -> IDENTICAL$", part, re.M), out
    assert re.search(r"^  vectorbt [\d.]+: [\d,]+ trades \([\d,]+ long, 0 short\)", long_part, re.M), out
    m = re.search(r"^ours: ([\d,]+) trades \(([\d,]+) long, ([\d,]+) short\)", mixed, re.M)
    assert m, out
    n, n_long, n_short = (int(g.replace(",", "")) for g in m.groups())
    assert n == n_long + n_short and n_long > 50 and n_short > 50
    # both peers: the same counts per side as ours
    for peer in ("vectorbt", "backtesting.py"):
        assert re.search(rf"^  {re.escape(peer)} .*: {n:,} trades \({n_long:,} long, {n_short:,} short\), {n:,} with "
                         "our entry and exit bars and side", mixed, re.M), out
    assert "ratios, mixed sides (same run):" in mixed
    assert out.rstrip().endswith("trades identical in every library compared, long-only and mixed sides")
