"""benchmarks/bench_train.py: with tiny sizes its main() runs both sides, prints the table and a verdict."""

import importlib.util
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_train.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_prints_the_table_and_both_sides_train_the_same_windows(capsys):
    bench = _load()
    threads = torch.get_num_threads()
    try:
        # --threads 1: also the path that imposes a thread count on fit; one thread is the fastest on busy cores
        rc = bench.main(["--bars", "3000", "--seq-len", "8", "--d-model", "16", "--epochs", "1", "--repeats", "1",
                         "--batch", "32,64", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)  # main() sets the process's thread count
    out = capsys.readouterr().out
    assert rc in (0, 1), out
    assert "| batch | trainer windows |" in out and "| bare/trainer |" in out
    rows = {}
    for line in out.splitlines():
        m = re.match(r"\| (\d+)( \(default\))? \| ([\d,]+) \| [\d.]+ \| ([\d,]+) \| [\d.]+ \| ([\d,]+) \| [\d.]+ "
                     r"\| ([\d,]+) \| ([\d.]+)x \|$", line)
        if m:
            rows[int(m[1])] = m
    assert sorted(rows) == [32, 64], out
    for m in rows.values():
        trainer_windows, bare_windows = int(m[3].replace(",", "")), int(m[5].replace(",", ""))
        assert trainer_windows == bare_windows > 1000
        assert int(m[4].replace(",", "")) > 0 and int(m[6].replace(",", "")) > 0 and float(m[7]) > 0
    assert "threads 1 (the trainer's own choice" in out
    assert "load average" in out.split("| batch |")[0] and "end: load average" in out
    assert "projected default training on 40,000 bars" in out and "early stopping" in out
    # the default CPU batch (64) was measured: the check ran and said so
    assert re.search(r"^(PASS|FAIL): at the default batch 64 ", out, re.M), out
    assert (rc == 0) == ("\nPASS: " in out)
