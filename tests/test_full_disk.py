"""A full disk is one line, and nothing is lost: run as root in a private mount namespace, over a
tiny tmpfs (nothing outside the namespace is touched)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                                reason="needs root and util-linux unshare")

TRAIN = ["--data", "sp500", "--start", TINY["start"], "--end", TINY["end"], "--holdout", "0.25", "--seq-len", "16",
         "--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--batch-size", "64", "--horizon", "10", "--quiet",
         "--epochs", "2"]


def _in_namespace(script: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", f"set -e\n{script}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


def test_train_out_on_a_full_disk_is_one_line_and_resumes_once_there_is_room(tmp_path):
    full, ck = tmp_path / "full", tmp_path / "ck"
    full.mkdir()
    cmd = f"{sys.executable} -m agents.train {' '.join(TRAIN)} --out {full}/a.onnx --checkpoint-dir {ck}"
    done = _in_namespace(f"""
mount -t tmpfs -o size=256k none {full}
dd if=/dev/zero of={full}/fill bs=4k 2>/dev/null || true
set +e
{cmd} 2>{tmp_path}/full.err
echo "full-exit $?"
rm {full}/fill
{cmd} --resume >{tmp_path}/resumed.out 2>&1
echo "resume-exit $?"
test -s {full}/a.onnx && echo written
""")
    assert done.returncode == 0, done.stderr
    err = _lines(tmp_path / "full.err")
    assert "full-exit 1" in done.stdout, (done.stdout, err)
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(f"error: the export step cannot write {full}/a.onnx: No space left on device; once it "
                             f"can, continue from the last checkpoint ({ck}/last.pt) with: ")
    assert err[0].endswith(" --resume")
    assert "resume-exit 0" in done.stdout and "written" in done.stdout, (tmp_path / "resumed.out").read_text()


def test_a_checkpoint_folder_that_fills_is_one_line(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    done = _in_namespace(f"""
mount -t tmpfs -o size=64k none {full}
set +e
{sys.executable} -m agents.train {' '.join(TRAIN)} --out {tmp_path}/b.onnx --checkpoint-dir {full}/ck 2>{tmp_path}/err
echo "exit $?"
""")
    assert done.returncode == 0, done.stderr
    err = _lines(tmp_path / "err")
    assert "exit 1" in done.stdout and len(err) == 1, err
    assert err[0].startswith(f"error: the fit step cannot write {full}/ck/last.pt: No space left on device")
    assert not (tmp_path / "b.onnx").exists()


def test_a_walk_forward_whose_disk_fills_is_one_line(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    done = _in_namespace(f"""
mount -t tmpfs -o size=200k none {full}
set +e
{sys.executable} -m engine.walkforward --start 2008-01-01 --end 2012-12-31 --epochs 1 --seq-len 8 --d-model 8 \\
    --n-heads 1 --batch-size 256 --search labels --quiet --folds 2 --trials 2 --study df --out {full}/wf """
                         f"""2>{tmp_path}/err
echo "exit $?"
""")
    assert done.returncode == 0, done.stderr
    err = _lines(tmp_path / "err")
    assert "exit 1" in done.stdout and len(err) == 1, err  # was 101 lines of Optuna and tracebacks
    assert err[0].startswith(f"error: the study storage sqlite:///{full}/wf/optuna.db failed: ")
    assert "disk is full; free space, then rerun the same command to resume" in err[0]
