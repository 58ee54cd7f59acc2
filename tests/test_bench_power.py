"""benchmarks/bench_power.py --meta: meta-labeling with sizing beats the primary rule alone where the rule is right
in an identifiable regime only, and not on a random walk (issue 26, item 6)."""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_power.py"
ROW = re.compile(r"^\| (\S+) \| (planted|control|real) \| (\d+|-) \| [\d,]+ \| [\d-]+ \| ([\d.]+) \((\S+)\) \| "
                 r"(-?[\d.]+) \| (-?[\d.]+) \| (-?[\d.]+) \| ([+-][\d.]+) \| (\d+) / (\d+) / (\d+) \| (\d+|-) \| ")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_power", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_meta_check_passes_on_the_planted_regime_and_not_on_the_random_walk(bench, capsys):
    # the check's own sizes (40,000 bars, 5 draws each): a few seconds here
    rc = bench.main(["--meta", "--real", "sp500"])
    cap = capsys.readouterr()
    out = cap.out
    rows = [m for m in map(ROW.match, out.splitlines()) if m]
    planted = [m for m in rows if m[2] == "planted"]
    control = [m for m in rows if m[2] == "control"]
    assert [int(m[3]) for m in planted] == [201, 202, 203, 204, 205], out
    assert [int(m[3]) for m in control] == [301, 302, 303, 304, 305], out
    assert [m[1] for m in rows if m[2] == "real"] == ["sp500"], out
    for m in rows:  # the difference column is meta + sizing - primary, as printed
        assert float(m[9]) == pytest.approx(float(m[8]) - float(m[6]), abs=0.011)
        assert int(m[10]) > 0
    diff_p = [float(m[9]) for m in planted]
    diff_c = [float(m[9]) for m in control]
    # by value: the planted regime is found (AUC near the latent regime's) and pays; noise gives nothing
    assert all(float(m[4]) > 0.58 and float(m[4]) > float(m[5]) - 0.03 for m in planted), out
    assert all(abs(float(m[4]) - 0.5) < 0.03 for m in control), out
    assert min(diff_p) > 0.4 and np.mean(diff_p) >= bench.META_MARGIN, out
    assert np.mean(diff_c) < bench.META_MARGIN - 0.2, out
    assert all(float(m[6]) > 0 for m in planted)  # the primary alone is profitable there, just diluted
    assert rc == 0 and "checks passed" in out and "FAIL" not in cap.err, (out, cap.err)


def test_meta_checks_fail_each_way(bench):
    m = bench.META_MARGIN

    def rows(kind, diffs):
        return [{"kind": kind, "seed": k, "diff": d} for k, d in enumerate(diffs)]

    assert bench.meta_checks(rows("planted", [m + 0.2, m]) + rows("control", [m - 0.1, -1.0])
                             + rows("real", [-5.0, 5.0])) == []
    fails = bench.meta_checks(rows("planted", [3 * m, -0.01]))
    assert fails == ["planted seed 1: meta + sizing -0.01 of Sharpe against the primary alone, not above it"]
    fails = bench.meta_checks(rows("planted", [m - 0.02, m - 0.02]))
    assert len(fails) == 1 and fails[0].startswith("planted: meta + sizing beats the primary alone by +0.48")
    fails = bench.meta_checks(rows("control", [m, m]))
    assert len(fails) == 1 and fails[0].startswith("control: on a random walk")


def test_meta_features_read_no_later_bar(bench):
    from datafeeds import synthetic
    from labeling import parse_primary, primary_side

    df, _ = synthetic.regime_momentum(1_200, seed=9)
    sides = primary_side(df, parse_primary("momentum:lookback=20"))
    full = bench.meta_features(df, sides)
    assert list(full.columns) == ["side", "volume_regime", "vol_regime", "ret_1", "ret_5", "ret_20", "atr_close"]
    assert full.iloc[260:].notna().all().all()  # the warm-up is the 250-bar volume window
    for k in (300, 301, 777):
        part = bench.meta_features(df.iloc[:k], sides[sides.index < df.index[k]])
        pd.testing.assert_frame_equal(part, full.iloc[:k])
    flat = df.assign(volume=0.0)  # an index without volume: no volume regime, not NaN
    assert (bench.meta_features(flat, sides)["volume_regime"].iloc[260:] == 0.0).all()


@pytest.mark.parametrize("argv,message", [
    (["--meta", "--epochs", "2"], "--epochs and --datasets are the learner check's"),
    (["--meta", "--seeds", "0"], "--seeds must be >= 1"),
    (["--seeds", "2"], "--seeds is an option of --meta"),
    (["--meta", "--bars", "100"], "--bars must be at least 2000"),
])
def test_meta_usage_errors(bench, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_meta_unknown_real_data_is_one_line(bench, capsys):
    assert bench.main(["--meta", "--real", "no_such_sample", "--bars", "2000", "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --real: ") and err.count("\n") == 1
