"""Write a file atomically: readers see the old content or the new, never half of either.

The cert, key and kubeconfig in the state dir are read by other processes (kube-apiserver, a
restarted authd) at any moment, so each is written to a temporary file in the same directory,
flushed to disk, renamed over the target with `os.replace`, and the directory entry flushed too.
A write that would change nothing (same bytes, same mode) is skipped, so an unchanged file keeps
its mtime and inotify watchers are not woken for nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["write_atomic"]


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
    return True


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
