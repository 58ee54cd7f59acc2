"""Write files all-or-nothing: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import glob
import hashlib
import os
import re
import tempfile
import time
from pathlib import Path

from datafeeds.process import pid_alive, pid_space

# A temporary file is named .<name>.<space>.<pid>.<random>.tmp, <space> a digest of the pid space
# (datafeeds.process: containers may share a host name, not their pids). One left by a killed writer
# is removed by the next write of the same file: at once when its writer is a dead process of this pid
# space, after a day when it comes from another (a shared folder: its process cannot be checked here).
_FOREIGN_MAX_AGE = 86_400.0


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_space()}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of ``path`` that killed writers left behind; the ones removed."""
    path = Path(path)
    mine = re.compile(rf"\.{re.escape(path.name)}\.([^.]*)\.(\d+)\.[^.]+\.tmp")
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        m = mine.fullmatch(tmp.name)
        try:
            if m and m.group(1) == _space():
                stale = not pid_alive(int(m.group(2)))
            else:  # another host's, or the naming before hosts and pids: by age only
                stale = time.time() - tmp.stat().st_mtime > _FOREIGN_MAX_AGE
            if stale:
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # gone meanwhile, or not ours to remove
            pass
    return removed


def _space() -> str:
    """This process's pid space (``datafeeds.process.pid_space``) as 12 hex digits, for file names."""
    return hashlib.sha256(pid_space().encode()).hexdigest()[:12]
