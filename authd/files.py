"""Write a file atomically: readers see the old content or the new, never half of either.

The cert, key and kubeconfig in the state dir are read by other processes (kube-apiserver, a
restarted authd) at any moment, so each is written to a temporary file in the same directory,
flushed to disk, renamed over the target with `os.replace`, and the directory entry flushed too.
A write that would change nothing (same bytes, same mode) is skipped, so an unchanged file keeps
its mtime and inotify watchers are not woken for nothing.

A process killed (SIGKILL, power loss) between creating its temporary file and the rename
leaves that file behind; the target itself is whole, old or new (docs/RELIABILITY.md, "Crash
safety"). The next call for the same target (written or unchanged) removes such leftovers once
they are older than `STALE_TEMPORARY` seconds; a younger one may belong to a writer still at
work (two `authd token` runs can store the same cache file at once).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import stat
import tempfile
import time
from pathlib import Path

__all__ = ["STALE_TEMPORARY", "write_atomic"]

STALE_TEMPORARY = 600.0


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int) -> bool:
    """Replace `path` with `data` and permission bits `mode`, atomically.

    The file is never chowned: it belongs to whoever runs authd (kops runs it as UID 10000).

    Args:
        path: the target file; its directory must exist.
        data: the complete new content.
        mode: permission bits (e.g. 0o600), set exactly, whatever the umask.

    Returns:
        True if the file was written, False if it already held `data` with `mode`.

    Raises:
        OSError: the directory is missing or not writable, the disk is full, ... . The target is
            then untouched and no temporary file is left behind.
    """
    target = Path(path)
    if _unchanged(target, data, mode):
        _remove_leftovers(target.parent, target.name)
        return False
    directory = target.parent
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    replaced = False
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
        replaced = True
    finally:
        # Whatever interrupted us (an error, KeyboardInterrupt), leave no temp file behind.
        if not replaced:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
    _fsync_directory(directory)
    _remove_leftovers(directory, target.name)
    return True


def _remove_leftovers(directory: Path, name: str) -> None:
    """Delete temporary files of `name` that a killed writer left, once they are stale."""
    oldest = time.time() - STALE_TEMPORARY
    for leftover in directory.glob(f".{glob.escape(name)}.*.tmp"):
        with contextlib.suppress(OSError):  # gone already, or not ours to remove
            if leftover.lstat().st_mtime < oldest:
                leftover.unlink()


def _unchanged(target: Path, data: bytes, mode: int) -> bool:
    """True when `target` is a regular file holding exactly `data` with permission bits `mode`."""
    try:
        info = target.stat()
        if not stat.S_ISREG(info.st_mode) or stat.S_IMODE(info.st_mode) != mode:
            return False
        if info.st_size != len(data):
            return False
        return target.read_bytes() == data
    except OSError:
        # Unreadable or missing: fall through to a write, which reports any real problem.
        return False


def _fsync_directory(directory: Path) -> None:
    """Flush the rename to disk; filesystems that cannot fsync a directory are tolerated."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)
