"""Write files all-or-nothing: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import re
import stat
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
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync and a rename.

    Only a regular file is ever replaced, and it keeps its mode. A symbolic link is followed: the file
    it points to is written, the link stays. A character device or a FIFO (``/dev/null``,
    a pipe) is written through, never replaced; ``/dev/stdout``, ``/dev/stderr`` and ``/dev/fd/N`` through
    this process's own descriptor. Refused, as an OSError whose ``strerror`` says what to do: a read-only file (mode
    without any w bit: root could otherwise replace it), a directory, a block device or a socket,
    and a FIFO without a reader.
    """
    path = Path(path)
    fd = _own_descriptor(path)
    if fd is not None:
        return _write_to_descriptor(path, fd, data)
    target = Path(os.path.realpath(path))  # a link's target; the link itself stays
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None:
        if _is_stream(st):
            return _write_to_stream(path, data)
        _raise_if_refused(st, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_space()}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if st is not None:  # the file's own mode and, where allowed, its owner
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
            try:
                os.chown(tmp, st.st_uid, st.st_gid)
            except OSError:  # not root: the new file is ours
                pass
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a full disk fails in write(): name the file the caller asked for
        raise
    return path


def refusal(path: str | os.PathLike, *, streams: bool = True) -> str | None:
    """Why ``write_atomic(path)`` would refuse ``path`` (one line, what to do included), or None; for CLIs to
    check before any work. ``streams=False`` also refuses devices and FIFOs (an agent file must be a file)."""
    path = Path(path)
    if _own_descriptor(path) is not None:
        return None if streams else "is a stream, not a file: choose a file path"
    try:
        st = os.stat(os.path.realpath(path))
    except OSError:  # not there (yet), or its folder is not one: the writer's folder check says why
        return None
    if _is_stream(st):
        return None if streams else "is a device or a FIFO, not a file: choose a file path"
    refused = _refused(st)
    return refused[2] if refused else None


def _is_stream(st: os.stat_result) -> bool:
    """A character device or a FIFO: written through, never replaced."""
    return stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)


def _refused(st: os.stat_result) -> tuple[type[OSError], int, str] | None:
    """Why what ``st`` describes is never written (exception type, errno, what to do), or None (a
    writable regular file, or a stream)."""
    if stat.S_ISDIR(st.st_mode):
        return IsADirectoryError, errno.EISDIR, "is a directory: name a file inside it"
    if not stat.S_ISREG(st.st_mode) and not _is_stream(st):
        return OSError, errno.EINVAL, "not a regular file (a block device or a socket): choose a file path"
    if stat.S_ISREG(st.st_mode) and not st.st_mode & 0o222:
        return (PermissionError, errno.EACCES, f"read-only file (mode {stat.S_IMODE(st.st_mode):04o}): make it "
                "writable (chmod u+w) or choose another path")
    return None


def _raise_if_refused(st: os.stat_result, path: Path) -> None:
    refused = _refused(st)
    if refused:
        kind, code, message = refused
        raise kind(code, message, str(path))


def _own_descriptor(path: Path) -> int | None:
    """The descriptor that ``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N`` or ``/proc/self/fd/N`` names, else
    None. Written through the process's own descriptor, so a redirect (``> out.txt``) keeps its offset."""
    text = os.path.abspath(path)
    if text in _STD_PATHS:
        return _STD_PATHS[text]
    m = re.fullmatch(r"/(?:dev/fd|proc/self/fd)/(\d+)", text)
    return int(m.group(1)) if m else None


_STD_PATHS = {"/dev/stdout": 1, "/dev/stderr": 2}


def _write_to_descriptor(path: Path, fd: int, data: bytes) -> Path:
    import sys

    for stream in (sys.stdout, sys.stderr):  # what was printed comes first
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or "cannot write", str(path)) from None
    return path


def _write_to_stream(path: Path, data: bytes) -> Path:
    """Write ``data`` into a character device or FIFO as it is (no temporary file, no rename)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such device or stream", str(path)) from None
    _raise_if_refused(st, path)  # it may have changed since the caller looked
    flags = os.O_WRONLY | (os.O_NONBLOCK if stat.S_ISFIFO(st.st_mode) else 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO nobody reads: writing would block for ever
            raise OSError(errno.ENXIO, "a FIFO with no reader: start the reader first", str(path)) from None
        raise
    try:
        if flags & os.O_NONBLOCK:
            os.set_blocking(fd, True)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
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
