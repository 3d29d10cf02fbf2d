"""Tests for authd.files.write_atomic: content, mode, skipped writes, no half files."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from authd.files import write_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _leftovers(directory: Path, keep: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != keep)


def test_writes_content_and_exact_mode_whatever_the_umask(tmp_path: Path) -> None:
    """A new file gets the bytes and exactly the requested mode, even under a strict umask."""
    target = tmp_path / "cert.pem"
    old = os.umask(0o077)
    try:
        assert write_atomic(target, b"hello", mode=0o644) is True
    finally:
        os.umask(old)
    assert target.read_bytes() == b"hello"
    assert _mode(target) == 0o644
    assert _leftovers(tmp_path, "cert.pem") == []


def test_unchanged_content_and_mode_is_not_rewritten(tmp_path: Path) -> None:
    """Writing the same bytes with the same mode is skipped: same inode, same mtime."""
    target = tmp_path / "key.pem"
    write_atomic(target, b"secret", mode=0o600)
    before = target.stat()
    assert write_atomic(target, b"secret", mode=0o600) is False
    after = target.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_changed_mode_alone_rewrites(tmp_path: Path) -> None:
    """The same bytes with another mode are written, and the new mode is applied."""
    target = tmp_path / "f"
    write_atomic(target, b"x", mode=0o600)
    assert write_atomic(target, b"x", mode=0o644) is True
    assert _mode(target) == 0o644


def test_changed_content_replaces_the_file_by_rename(tmp_path: Path) -> None:
    """New content lands in a new inode (rename, not truncate-and-write), leaving no temp file."""
    target = tmp_path / "f"
    write_atomic(target, b"one", mode=0o644)
    inode = target.stat().st_ino
    assert write_atomic(target, b"two", mode=0o644) is True
    assert target.read_bytes() == b"two"
    assert target.stat().st_ino != inode
    assert _leftovers(tmp_path, "f") == []


def test_failed_write_leaves_target_and_directory_clean(tmp_path: Path) -> None:
    """A write that fails midway keeps the old content and removes its temporary file."""
    target = tmp_path / "f"
    write_atomic(target, b"old", mode=0o644)
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes", mode=0o644)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path, "f") == []


def test_missing_directory_is_an_oserror(tmp_path: Path) -> None:
    """A target in a directory that does not exist raises OSError and creates nothing."""
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "nope" / "f", b"x", mode=0o644)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    """While large contents are swapped repeatedly, every read returns one whole version."""
    target = tmp_path / "kubeconfig"
    versions = (b"a" * 300_000, b"b" * 200_000)
    write_atomic(target, versions[0], mode=0o644)
    seen: set[bytes] = set()
    bad: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            data = target.read_bytes()
            if data in versions:
                seen.add(data[:1])
            else:
                bad.append(len(data))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(60):
            write_atomic(target, versions[i % 2], mode=0o644)
    finally:
        stop.set()
        thread.join()
    assert bad == []
    assert seen  # the reader did read while the writer ran
