"""authd/server/reload.py on real inotify: each way files really change reaches the target, once."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from authd.errors import ConfigError
from authd.server.dirwatch import DirectoryWatcher, open_directory_watcher, resolution_paths
from authd.server.reload import Change, FileReloader, Timing

FAST = Timing(debounce=0.05, empty_grace=0.3, resync=60.0)
WAIT = 10.0  # bound for every wait on an event; a pass takes milliseconds


@dataclass
class Target:
    """A reload target that keeps what it was given; content starting `bad` is refused."""

    applied: list[bytes] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    parsed: list[bytes] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    _event: trio.Event = field(default_factory=trio.Event)

    def parse(self, data: bytes) -> bytes:
        """Refuse content starting with `bad`."""
        self.parsed.append(data)
        if data.startswith(b"bad"):
            raise ConfigError(f"line 1: content: {data!r} is bad")
        return data

    def apply(self, parsed: bytes, change: Change) -> None:
        """Record an applied version."""
        self.applied.append(parsed)
        self._record(change)

    def reject(self, error: ConfigError, change: Change) -> None:
        """Record a refusal."""
        self.rejected.append(str(error))
        self._record(change)

    def missing(self, change: Change) -> None:
        """Record an absent file."""
        self.absent.append(change.path)
        self._record(change)

    def _record(self, change: Change) -> None:
        self.changes.append(change)
        self._event.set()
        self._event = trio.Event()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait (bounded) until `condition()` holds after some outcome."""
        with trio.fail_after(WAIT):
            while not condition():
                await self._event.wait()


@dataclass
class Running:
    """A reloader running on a real watcher."""

    reloader: FileReloader[bytes]
    target: Target
    watcher: DirectoryWatcher


@pytest.fixture
async def watcher() -> AsyncIterator[DirectoryWatcher]:
    """A real inotify-backed watcher for the test."""
    async with open_directory_watcher() as w:
        yield w


async def start(
    nursery: trio.Nursery, watcher: DirectoryWatcher, path: Path, *, timing: Timing = FAST
) -> Running:
    """Start a reloader on `path` and wait until its first check is judged."""
    target = Target()
    reloader: FileReloader[bytes] = FileReloader(path, target, timing=timing)
    await nursery.start(reloader.run, watcher)
    with trio.fail_after(WAIT):
        await reloader.wait_checked(1)
    return Running(reloader, target, watcher)


def replace(path: Path, data: bytes) -> None:
    """An editor's save: write a temporary file beside it, then rename it over."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


async def test_editor_rename_is_applied(watcher: DirectoryWatcher, tmp_path: Path) -> None:
    """Write-then-rename over the file is applied with the new content and its event latency."""
    path = tmp_path / "m.yaml"
    path.write_bytes(b"v1")
    async with trio.open_nursery() as nursery:
        run = await start(nursery, watcher, path)
        assert run.target.applied == [b"v1"]
        replace(path, b"v2")
        await run.target.wait_until(lambda: run.target.applied[-1:] == [b"v2"])
        assert run.target.changes[-1].trigger == "event"
        assert run.target.changes[-1].event_at is not None
        nursery.cancel_scope.cancel()


def kubelet_write(volume: Path, files: dict[str, bytes], stamp: str) -> None:
    """Update a ConfigMap volume exactly as the kubelet's AtomicWriter does.

    A new `..<timestamp>` directory gets the files; a `..data_tmp` symlink points at it and is
    renamed over `..data`; user-visible names are symlinks to `..data/<name>` (made once); the
    old timestamped directory is removed.
    """
    new_dir = volume / f"..{stamp}"
    new_dir.mkdir()
    for name, data in files.items():
        (new_dir / name).write_bytes(data)
    old = os.readlink(volume / "..data") if (volume / "..data").is_symlink() else None
    os.symlink(new_dir.name, volume / "..data_tmp")
    os.rename(volume / "..data_tmp", volume / "..data")
    for name in files:
        if not (volume / name).is_symlink():
            os.symlink(f"..data/{name}", volume / name)
    if old is not None:
        shutil.rmtree(volume / old)


async def test_configmap_data_symlink_swap_is_applied(
    watcher: DirectoryWatcher, tmp_path: Path
) -> None:
    """The kubelet's `..data` swap changes nothing about config.yaml itself, and is applied."""
    volume = tmp_path / "volume"
    volume.mkdir()
    kubelet_write(volume, {"config.yaml": b"v1"}, "2026_01_01_00_00_00.000000001")
    async with trio.open_nursery() as nursery:
        run = await start(nursery, watcher, volume / "config.yaml")
        assert run.target.applied == [b"v1"]
        kubelet_write(volume, {"config.yaml": b"v2"}, "2026_01_01_00_01_00.000000002")
        await run.target.wait_until(lambda: run.target.applied[-1:] == [b"v2"])
        kubelet_write(volume, {"config.yaml": b"v3"}, "2026_01_01_00_02_00.000000003")
        await run.target.wait_until(lambda: run.target.applied[-1:] == [b"v3"])
        assert run.target.applied == [b"v1", b"v2", b"v3"]
        assert str(volume) in watcher.directories
        nursery.cancel_scope.cancel()


async def test_truncate_and_write_in_steps_is_one_change(
    watcher: DirectoryWatcher, tmp_path: Path
) -> None:
    """An in-place write in several steps is parsed once, whole: the steps themselves send
    nothing (single writes are not reported, so a busy log beside the file costs nothing),
    and the writer's close is the one change."""
    path = tmp_path / "m.json"
    path.write_bytes(b"v1")
    async with trio.open_nursery() as nursery:
        run = await start(nursery, watcher, path)
        sub = run.reloader._sub
        assert sub is not None
        with path.open("r+b") as stream:
            for part in (b"", b"v2-part-one;", b"v2-part-two"):
                if part:
                    stream.write(part)
                else:
                    stream.truncate(0)
                stream.flush()
                os.fsync(stream.fileno())
                # Give a (wrongly) reported step time to be read half-written.
                await trio.sleep(FAST.debounce * 3)
            assert run.target.parsed == [b"v1"]
            seen = sub.generation
        with trio.fail_after(WAIT):
            await sub.wait_rung_after(seen)  # the close
        await run.target.wait_until(lambda: len(run.target.applied) == 2)
        assert run.target.parsed == [b"v1", b"v2-part-one;v2-part-two"]
        nursery.cancel_scope.cancel()


async def test_delete_then_recreate(watcher: DirectoryWatcher, tmp_path: Path) -> None:
    """A deletion that lasts is reported missing; the re-created file is applied."""
    path = tmp_path / "dyn.json"
    path.write_bytes(b"v1")
    async with trio.open_nursery() as nursery:
        run = await start(nursery, watcher, path)
        path.unlink()
        await run.target.wait_until(lambda: bool(run.target.absent))
        path.write_bytes(b"v2")
        await run.target.wait_until(lambda: run.target.applied[-1:] == [b"v2"])
        nursery.cancel_scope.cancel()


async def test_quick_delete_and_recreate_is_not_seen_as_missing(
    watcher: DirectoryWatcher, tmp_path: Path
) -> None:
    """`rm f; cp g f` inside the debounce window is one change, never a missing file."""
    path = tmp_path / "dyn.json"
    path.write_bytes(b"v1")
    slow = Timing(debounce=0.5, empty_grace=0.3, resync=60.0)
    async with trio.open_nursery() as nursery:
        run = await start(nursery, watcher, path, timing=slow)
        path.unlink()
        path.write_bytes(b"v2")
        await run.target.wait_until(lambda: run.target.applied[-1:] == [b"v2"])
        assert run.target.absent == []
        nursery.cancel_scope.cancel()


async def test_missing_directory_at_start_is_picked_up(
    watcher: DirectoryWatcher, tmp_path: Path
) -> None:
    """A file whose directories do not exist yet is missing, then applied when written."""
    path = tmp_path / "a" / "b" / "dyn.json"
    async with trio.open_nursery() as nursery:
        run = await start(nursery, watcher, path)
        assert run.target.absent == [str(path)]
        assert watcher.directories == (str(tmp_path),)
        (tmp_path / "a" / "b").mkdir(parents=True)
        path.write_bytes(b"v1")
        await run.target.wait_until(lambda: run.target.applied == [b"v1"])
        assert watcher.directories == (str(tmp_path / "a" / "b"),)
        nursery.cancel_scope.cancel()


async def test_directory_deleted_and_recreated_is_watched_again(
    watcher: DirectoryWatcher, tmp_path: Path
) -> None:
    """After its directory is removed and made again, the file's changes are still seen."""
    folder = tmp_path / "cfg"
    folder.mkdir()
    path = folder / "dyn.json"
    path.write_bytes(b"v1")
    async with trio.open_nursery() as nursery:
        run = await start(nursery, watcher, path)
        shutil.rmtree(folder)
        await run.target.wait_until(lambda: bool(run.target.absent))
        folder.mkdir()
        path.write_bytes(b"v2")
        await run.target.wait_until(lambda: run.target.applied[-1:] == [b"v2"])
        replace(path, b"v3")
        await run.target.wait_until(lambda: run.target.applied[-1:] == [b"v3"])
        nursery.cancel_scope.cancel()


async def test_symlink_to_another_directory_follows_the_target(
    watcher: DirectoryWatcher, tmp_path: Path
) -> None:
    """A file that is a symlink into another directory is reloaded when the target changes."""
    (tmp_path / "real").mkdir()
    (tmp_path / "etc").mkdir()
    real = tmp_path / "real" / "config.yaml"
    real.write_bytes(b"v1")
    link = tmp_path / "etc" / "config.yaml"
    link.symlink_to(real)
    async with trio.open_nursery() as nursery:
        run = await start(nursery, watcher, link)
        replace(real, b"v2")
        await run.target.wait_until(lambda: run.target.applied[-1:] == [b"v2"])
        nursery.cancel_scope.cancel()


async def test_unchanged_content_is_a_no_op(watcher: DirectoryWatcher, tmp_path: Path) -> None:
    """Rewriting the same bytes is read and hashed but not parsed."""
    path = tmp_path / "m.yaml"
    path.write_bytes(b"v1")
    async with trio.open_nursery() as nursery:
        run = await start(nursery, watcher, path)
        checks = run.reloader.checks
        replace(path, b"v1")
        with trio.fail_after(WAIT):
            await run.reloader.wait_checked(checks + 1)
        assert run.target.parsed == [b"v1"]
        assert len(run.target.changes) == 1
        nursery.cancel_scope.cancel()


async def test_events_on_unwatched_neighbours_never_reach_the_reloader(
    watcher: DirectoryWatcher, tmp_path: Path
) -> None:
    """A log appended to beside the watched file rings nothing: only events on names the
    watched path resolves through get past watchdog's thread, so the file's own save that
    follows is the only ring."""
    path = tmp_path / "m.yaml"
    path.write_bytes(b"v1")
    async with trio.open_nursery() as nursery:
        run = await start(nursery, watcher, path)
        sub = run.reloader._sub
        assert sub is not None
        before, checks = sub.generation, run.reloader.checks
        for n in range(200):  # open, append, close: modify and close events that the
            with (tmp_path / "neighbour.log").open("a") as log:  # kernel cannot merge
                log.write(f"line {n}\n")
        path.write_bytes(b"v2")  # in place: modify + close events on the watched name only
        await run.target.wait_until(lambda: run.target.applied[-1:] == [b"v2"])
        assert run.reloader.checks == checks + 1
        # The watched file's own write makes a handful of events; 200 appends would make 200.
        assert sub.generation - before < 10
        nursery.cancel_scope.cancel()


def test_resolution_paths_follow_a_configmap_volume(tmp_path: Path) -> None:
    """Resolving a ConfigMap volume's file looks up its name, the `..data` link and the
    timestamped directory, so events on exactly those names are let through."""
    volume = tmp_path / "cm"
    (volume / "..2024_01_01").mkdir(parents=True)
    (volume / "..2024_01_01" / "config.yaml").write_bytes(b"v1")
    os.symlink("..2024_01_01", volume / "..data")
    os.symlink("..data/config.yaml", volume / "config.yaml")
    (volume / "other.log").write_bytes(b"")
    seen = resolution_paths(str(volume / "config.yaml"))
    in_volume = {os.path.basename(p) for p in seen if os.path.dirname(p) == str(volume)}
    assert in_volume == {"config.yaml", "..data", "..2024_01_01"}
    assert str(volume / "..2024_01_01" / "config.yaml") in seen
    missing = resolution_paths(str(tmp_path / "a" / "b" / "c.yaml"))
    assert {str(tmp_path / "a"), str(tmp_path / "a" / "b")} <= missing


async def test_trigger_reapplies_unchanged_content(
    watcher: DirectoryWatcher, tmp_path: Path
) -> None:
    """A manual trigger (SIGHUP) parses and applies the file again even if unchanged."""
    path = tmp_path / "m.yaml"
    path.write_bytes(b"v1")
    async with trio.open_nursery() as nursery:
        run = await start(nursery, watcher, path)
        run.reloader.trigger()
        await run.target.wait_until(lambda: len(run.target.applied) == 2)
        assert run.target.changes[-1].trigger == "signal"
        nursery.cancel_scope.cancel()


async def test_a_signal_during_a_judge_waits_for_a_read_begun_after_it(
    watcher: DirectoryWatcher, tmp_path: Path
) -> None:
    """SIGHUP while a version read before it is still being parsed: `wait_forced` returns only
    once a read begun after the signal has been judged, never on the older read's outcome (the
    race a review found: READY=1 was sent for a version read before the reload)."""
    path = tmp_path / "m.yaml"
    path.write_bytes(b"v1")
    parsing, release = threading.Event(), threading.Event()
    async with trio.open_nursery() as nursery:
        run = await start(nursery, watcher, path)
        original = run.target.parse

        def slow_parse(data: bytes) -> bytes:
            if data == b"v2":
                parsing.set()
                release.wait(WAIT)
            return original(data)

        run.target.parse = slow_parse  # type: ignore[method-assign]
        replace(path, b"v2")
        with trio.fail_after(WAIT):
            await trio.to_thread.run_sync(parsing.wait, WAIT)
        ticket = run.reloader.trigger()  # v2 was read before this signal
        done = trio.Event()

        async def wait() -> None:
            await run.reloader.wait_forced(ticket)
            done.set()

        nursery.start_soon(wait)
        release.set()
        with trio.fail_after(WAIT):
            await done.wait()
        # Checked as soon as the wait returns: the signal's own read is already judged.
        assert [c.trigger for c in run.target.changes] == ["start", "event", "signal"]
        assert run.target.applied == [b"v1", b"v2", b"v2"]
        nursery.cancel_scope.cancel()


async def test_broken_version_is_rejected_then_a_good_one_applies(
    watcher: DirectoryWatcher, tmp_path: Path
) -> None:
    """A version the parser refuses is rejected; the next good one is applied."""
    path = tmp_path / "m.yaml"
    path.write_bytes(b"v1")
    async with trio.open_nursery() as nursery:
        run = await start(nursery, watcher, path)
        replace(path, b"bad: yes")
        await run.target.wait_until(lambda: bool(run.target.rejected))
        assert "is bad" in run.target.rejected[0]
        replace(path, b"v1")  # back to the last good bytes: applied again, not skipped
        await run.target.wait_until(lambda: len(run.target.applied) == 2)
        nursery.cancel_scope.cancel()


async def test_empty_file_that_stays_empty_is_rejected(
    watcher: DirectoryWatcher, tmp_path: Path
) -> None:
    """A file left empty past the grace period is refused as empty, never applied."""
    path = tmp_path / "m.yaml"
    path.write_bytes(b"v1")
    async with trio.open_nursery() as nursery:
        run = await start(nursery, watcher, path)
        path.write_bytes(b"")
        await run.target.wait_until(lambda: bool(run.target.rejected))
        assert run.target.rejected == [f"{path}: file is empty"]
        assert run.target.applied == [b"v1"]
        nursery.cancel_scope.cancel()


async def test_resync_rereads_without_events(watcher: DirectoryWatcher, tmp_path: Path) -> None:
    """With no event at all, the periodic re-read still finds a changed file."""
    path = tmp_path / "m.yaml"
    path.write_bytes(b"v1")
    quick = Timing(debounce=0.01, empty_grace=0.3, resync=0.1)
    async with trio.open_nursery() as nursery:
        run = await start(nursery, watcher, path, timing=quick)
        assert run.reloader._sub is not None
        watcher.unsubscribe(run.reloader._sub)  # deaf: only the re-read can notice
        path.write_bytes(b"v2")
        await run.target.wait_until(lambda: run.target.applied[-1:] == [b"v2"])
        assert run.target.changes[-1].trigger == "resync"
        nursery.cancel_scope.cancel()


async def test_a_reload_never_touches_the_disk_on_the_event_loop(
    watcher: DirectoryWatcher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From event to applied version, every stat, readlink and read of a reload happens in a
    worker thread: the trio thread (which answers reviews) never waits on the disk."""
    import threading

    path = tmp_path / "m.yaml"
    path.write_bytes(b"v1")
    on_loop: list[str] = []
    trio_thread = threading.current_thread()

    def watching(name: str, real: Callable[..., object]) -> Callable[..., object]:
        def call(*args: object, **kwargs: object) -> object:
            if threading.current_thread() is trio_thread:
                on_loop.append(name)
            return real(*args, **kwargs)

        return call

    async with trio.open_nursery() as nursery:
        run = await start(nursery, watcher, path)
        for name in ("stat", "lstat", "fstat", "readlink", "open"):
            monkeypatch.setattr(os, name, watching(name, getattr(os, name)))
        monkeypatch.setattr("builtins.open", watching("open()", open))
        replace(path, b"v2")
        await run.target.wait_until(lambda: run.target.applied[-1:] == [b"v2"])
        monkeypatch.undo()
        nursery.cancel_scope.cancel()
    assert on_loop == []
