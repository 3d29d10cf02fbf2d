"""A FIFO, device or directory at a watched path is refused at once, never read (reload.py).

Opening a FIFO for reading waits for a writer: before the reloader refused non-regular files,
a FIFO put in place of the config wedged that file's reloads for good, and the daemon's shutdown
with it (found by tests/test_reload_storm.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import trio

from authd.server.dirwatch import DirectoryWatcher
from authd.server.reload import read_file
from tests.test_reload import replace, start, watcher

__all__ = ["watcher"]  # the fixture, used by name


def test_read_file_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    """A FIFO (no writer), a device that never ends and a directory: each an error, at once."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "dir"
    folder.mkdir()
    assert read_file(str(fifo)).error == f"{fifo}: not a regular file"
    assert read_file("/dev/zero").error == "/dev/zero: not a regular file"
    assert read_file(str(folder)).error == f"{folder}: Is a directory"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real")
    (tmp_path / "real").write_bytes(b"v1")
    assert read_file(str(link)).data == b"v1"  # a symlink to a regular file is read


async def test_fifo_in_place_of_the_file_is_refused_and_the_next_version_applies(
    watcher: DirectoryWatcher, tmp_path: Path
) -> None:
    """The FIFO is refused as unreadable; a good version after it applies; cancelling ends."""
    path = tmp_path / "m.yaml"
    path.write_bytes(b"v1")
    async with trio.open_nursery() as nursery:
        run = await start(nursery, watcher, path)
        path.unlink()
        os.mkfifo(path)
        await run.target.wait_until(lambda: bool(run.target.rejected))
        assert run.target.rejected == [f"{path}: not a regular file"]
        path.unlink()
        replace(path, b"v2")
        await run.target.wait_until(lambda: run.target.applied[-1:] == [b"v2"])
        nursery.cancel_scope.cancel()
