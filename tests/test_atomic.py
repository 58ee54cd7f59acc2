"""Paths that are not regular files: write_atomic never replaces them, the loader never reads them.

Devices are made with mknod in a temporary folder (root only), and the CLI cases run in a private mount
namespace with a tmpfs over /dev, so the machine's own /dev is never touched.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from datafeeds.atomic import refusal, write_atomic

ROOT = Path(__file__).resolve().parents[1]
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mknod and mount namespaces need root")


def _null_device(folder: Path, name: str = "null", minor: int = 3) -> Path:
    """A character device with /dev/null's numbers (1, 3), or /dev/full's (1, 7), inside ``folder``."""
    dev = folder / name
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    return dev


@root_only
def test_a_character_device_is_written_through_not_replaced(tmp_path):
    dev = _null_device(tmp_path)
    write_atomic(dev, b"x" * 100_000)
    assert stat.S_ISCHR(os.stat(dev).st_mode)  # still the device
    assert [p.name for p in tmp_path.iterdir()] == ["null"]  # no temporary file left beside it
    assert refusal(dev) is None
    assert "device" in refusal(dev, streams=False)


@root_only
def test_a_full_device_is_an_oserror_and_stays_a_device(tmp_path):
    full = _null_device(tmp_path, "full", minor=7)
    with pytest.raises(OSError) as info:
        write_atomic(full, b"{}")
    assert info.value.errno == 28  # ENOSPC, which the CLIs print as one line
    assert stat.S_ISCHR(os.stat(full).st_mode)


def test_a_read_only_file_is_refused_and_kept(tmp_path):
    f = tmp_path / "report.json"
    f.write_bytes(b"old")
    f.chmod(0o444)
    with pytest.raises(PermissionError, match=r"read-only file \(mode 0444\)"):
        write_atomic(f, b"new")  # root could replace it: refused all the same
    assert f.read_bytes() == b"old" and stat.S_IMODE(f.stat().st_mode) == 0o444
    assert "read-only" in refusal(f)


def test_a_replaced_file_keeps_its_mode(tmp_path):
    f = tmp_path / "report.json"
    f.write_bytes(b"old")
    f.chmod(0o640)
    write_atomic(f, b"new")
    assert f.read_bytes() == b"new" and stat.S_IMODE(f.stat().st_mode) == 0o640


def test_a_symlink_is_followed_and_stays_a_link(tmp_path):
    real = tmp_path / "real.json"
    real.write_bytes(b"old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_atomic(link, b"new")
    assert link.is_symlink() and real.read_bytes() == b"new"
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "sub" / "made.json")
    write_atomic(dangling, b"made")  # a link to a file not there yet: the file is made
    assert dangling.is_symlink() and (tmp_path / "sub" / "made.json").read_bytes() == b"made"


def test_a_directory_is_refused_in_one_line(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        write_atomic(tmp_path, b"{}")
    assert "directory" in refusal(tmp_path)


def test_a_fifo_is_written_through_and_one_without_a_reader_is_refused(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="no reader"):
        write_atomic(fifo, b"{}")  # would block for ever
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    for _ in range(200):  # wait until the reader has the FIFO open
        try:
            write_atomic(fifo, b"payload" * 10_000)
            break
        except OSError:
            threading.Event().wait(0.01)
    reader.join(10)
    assert got == [b"payload" * 10_000] and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_dev_stdout_writes_through_this_process_descriptor(tmp_path):
    code = ("import sys; print('first', flush=True); from datafeeds.atomic import write_atomic; "
            "write_atomic('/dev/stdout', b'report\\n'); print('last')")
    out = tmp_path / "out.txt"
    with open(out, "wb") as fh:  # a redirect to a file: the report lands after what was printed
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=fh, check=True, timeout=60)
    assert out.read_text() == "first\nreport\nlast\n"
    assert stat.S_ISREG(out.stat().st_mode)


@root_only
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_run_backtest_report_to_dev_null_and_train_out_to_dev_full_in_a_private_dev(tmp_path):
    # a tmpfs over /dev in a private mount namespace, with its own null and full: the real /dev is not touched
    script = f"""
set -e
mount -t tmpfs none /dev
mknod -m 666 /dev/null c 1 3
mknod -m 666 /dev/full c 1 7
ln -s /proc/self/fd/1 /dev/stdout
cd {ROOT}
{sys.executable} run_backtest.py --strategy buyhold --quiet --no-plot --report /dev/null
test -c /dev/null && echo null-still-a-device
set +e
{sys.executable} run_backtest.py --strategy buyhold --quiet --no-plot --report /dev/full 2>{tmp_path}/full.err
echo "full-exit $?"
test -c /dev/full && echo full-still-a-device
{sys.executable} -m agents.train --out /dev/full --overwrite --epochs 1 2>{tmp_path}/train.err
echo "train-exit $?"
test -c /dev/full && echo full-still-a-device-after-train
"""
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "null-still-a-device" in lines
    assert "full-exit 2" in lines and "full-still-a-device" in lines
    assert (tmp_path / "full.err").read_text().strip().splitlines() == [
        "error: cannot write /dev/full: No space left on device"]
    assert "train-exit 2" in lines and "full-still-a-device-after-train" in lines
    assert (tmp_path / "train.err").read_text().strip() == (
        "error: --out /dev/full: is a device or a FIFO, not a file: choose a file path")


def test_a_fifo_as_data_is_refused_in_one_line_not_read_for_ever(tmp_path):
    # nobody writes the FIFO: reading it would block; the loader refuses it by its type, before opening it
    fifo = tmp_path / "bars.csv"
    os.mkfifo(fifo)
    done = subprocess.run([sys.executable, "run_backtest.py", "--strategy", "buyhold", "--data", str(fifo),
                           "--no-plot"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and "not a regular file (a FIFO, device or socket)" in err, err
