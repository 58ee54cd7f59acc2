"""benchmarks/bench_gpu.py: one line and exit 2 without CUDA; its code runs end to end on CPU (a dry run)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present: the script would run the benchmark")
def test_without_cuda_it_exits_2_with_one_line():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA is not available" in lines[0] and "Traceback" not in proc.stderr


def test_the_dry_run_on_cpu_trains_every_path_and_checks_parity():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--bars", "20000", "--cap-s", "0.5",
                           "--workers", "1", "--seq-len", "16", "--d-model", "16"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for path in ("(a) safe CPU path", "(b) DataLoader, 1 workers", "(c) resident, fp32", "(d) resident, bf16"):
        assert path in out
    # (c) and (d) run the whole epoch; their validation losses agree within the AMP tolerance
    assert out.count(" full ") == 2
    assert "relative difference" in out and "AMP allowed 0.02): PASS" in out
    assert "onnxruntime (CPU) vs torch (CPU)" in out and "(tolerance 1e-5): PASS" in out
