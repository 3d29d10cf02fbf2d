"""The directory watch behind the reloader: which names matter, and a doorbell per watched path.

watchdog's inotify observer runs in its own thread; its events enter trio only through
`trio.from_thread.run_sync(..., trio_token=...)`. A file is watched through its directory,
never itself (docs/reload.md): `resolution_paths` names every entry that resolving the path goes
through (the file, a `..data` symlink and the directory it points to, the first ancestor that does
not exist yet), and watchdog's thread drops every event on any other name before it reaches trio.
An event only rings the path's `Subscription`; `authd.server.reload.FileReloader` reads and
judges the file.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import structlog
import trio
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

log = structlog.get_logger("authd.server.reload")

# What the kernel is asked to report for a watched directory's entries. Opens and reads without
# writing (our own reads among them) never change content. Nor are single writes reported: a file
# written in place is seen when its writer closes it (FileClosedEvent), so a log appended to beside
# the config, one write per line, costs nothing (inotify cannot report one entry's writes only; a
# writer that never closes is caught by the periodic re-read).
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileClosedEvent,
]


class Subscription:
    """One watched path's doorbell: rung (from the trio thread) when its directory changes."""

    def __init__(self, path: str, *, on_watch_error: Callable[[str], None] | None) -> None:
        self.path = os.path.abspath(path)
        self.generation = 0
        self.first_event_at: float | None = None
        self.on_watch_error = on_watch_error
        self._event = trio.Event()
        self._rung = trio.Event()
        # The directories scheduled for this path: dir -> True when it is the parent, False
        # when it is an ancestor waiting for the parent to appear.
        self.dirs: dict[str, bool] = {}
        # dir -> the entry names there whose events may change this file (see `Plan`).
        self.names: dict[str, frozenset[str]] = {}

    def ring(self, *, event: bool) -> None:
        """Note a change (or a manual trigger when `event` is False) and wake the reloader."""
        self.generation += 1
        if event and self.first_event_at is None:
            self.first_event_at = time.monotonic()
        self._event.set()
        self._rung.set()
        self._rung = trio.Event()

    async def wait_rung_after(self, generation: int) -> None:
        """Wait until rung at least once since `generation` was read (tests use it)."""
        while self.generation <= generation:
            await self._rung.wait()

    def concerns(self, directory: str, path: str) -> bool:
        """True when an event on `path` in watched `directory` may change this file: the
        directory itself, or an entry that resolving the watched path goes through."""
        if path == directory:
            return True
        return os.path.basename(path) in self.names.get(directory, ())

    async def wait(self) -> None:
        """Wait until rung (returns at once if rung since the last `clear`)."""
        await self._event.wait()

    def clear(self) -> None:
        """Forget rings so far (the next `wait` blocks until a new one)."""
        self._event = trio.Event()

    def plan(self) -> Plan:
        """What to watch now, from the file system (blocking: call it in a worker thread)."""
        wanted = self.wanted_dirs()
        visited = resolution_paths(self.path)
        names = {
            directory: frozenset(
                os.path.basename(path) for path in visited if os.path.dirname(path) == directory
            )
            for directory in wanted
        }
        inodes = {directory: _inode(directory) for directory in wanted}
        return Plan(wanted=wanted, names=names, inodes=inodes)

    def wanted_dirs(self) -> dict[str, bool]:
        """The directories to watch now: the parent (or its nearest existing ancestor), plus
        the directory of a symlink's target when that lies elsewhere."""
        parent = os.path.dirname(self.path)
        wanted: dict[str, bool] = {}
        existing = parent
        while not os.path.isdir(existing) and existing != os.path.dirname(existing):
            existing = os.path.dirname(existing)
        wanted[existing] = existing == parent
        real_parent = os.path.dirname(os.path.realpath(self.path))
        if os.path.isdir(real_parent) and not _is_within(real_parent, parent):
            wanted[real_parent] = True
        return wanted


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """One look at the file system for a subscription, taken in a worker thread.

    Attributes:
        wanted: the directories to watch (True: the parent or a symlink target's directory).
        names: per wanted directory, the entries whose events may change the file: every path
            that resolving the watched path looks up there (its own name, symlinks such as
            `..data`, the directories they point to, the next missing ancestor).
        inodes: (device, inode) of each wanted directory, to notice one replaced.
    """

    wanted: dict[str, bool]
    names: dict[str, frozenset[str]]
    inodes: dict[str, tuple[int, int]]


MAX_SYMLINKS = 40  # as the kernel's limit


def resolution_paths(path: str) -> set[str]:
    """Every absolute path looked up while resolving `path`, symlinks followed.

    For a ConfigMap volume's `/cm/config.yaml -> ..data/config.yaml` with
    `..data -> ..2024_01_01`, that is `/cm`, `/cm/config.yaml`, `/cm/..data`,
    `/cm/..2024_01_01` and `/cm/..2024_01_01/config.yaml`. Components that do not exist end
    nothing: the path is followed as written.
    """
    visited: set[str] = set()
    parts = [part for part in reversed(os.path.abspath(path).split(os.sep)) if part]
    current = os.sep
    hops = 0
    while parts:
        part = parts.pop()
        if part == ".":
            continue
        if part == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, part)
        visited.add(candidate)
        try:
            target = os.readlink(candidate)
        except OSError:  # not a link, or not there
            current = candidate
            continue
        hops += 1
        if hops > MAX_SYMLINKS:
            break
        if os.path.isabs(target):
            current = os.sep
        parts.extend(part for part in reversed(target.split(os.sep)) if part)
    return visited


def _is_within(path: str, directory: str) -> bool:
    """True when `path` is `directory` or below it."""
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


@dataclass(slots=True)
class _Scheduled:
    """One directory under watch and who listens to it."""

    watch: ObservedWatch
    inode: tuple[int, int]
    subscribers: set[Subscription]


class _Bridge(FileSystemEventHandler):
    """Runs in watchdog's thread; hands every event's paths to the trio thread."""

    def __init__(self, watcher: DirectoryWatcher, token: trio.lowlevel.TrioToken) -> None:
        self._watcher = watcher
        self._token = token

    def on_any_event(self, event: FileSystemEvent) -> None:
        """Forward one event that concerns a watched file; drop the rest here, in watchdog's
        thread, before they cost the event loop anything. After trio has finished there is no
        one left to tell."""
        paths = [os.fsdecode(event.src_path)]
        if event.dest_path:
            paths.append(os.fsdecode(event.dest_path))
        interest = self._watcher.interest  # one immutable snapshot, swapped by the trio thread
        if not any(_wanted(interest, path) for path in paths):
            return
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(self._watcher.dispatch, paths, trio_token=self._token)


def _wanted(interest: Mapping[str, frozenset[str]], path: str) -> bool:
    """True when an event on `path` may concern a watched file (see `DirectoryWatcher.interest`)."""
    if path in interest:
        return True  # a watched directory itself
    names = interest.get(os.path.dirname(path))
    return names is not None and os.path.basename(path) in names


class DirectoryWatcher:
    """One watchdog observer shared by every watched file; directories are watched once.

    Build with `open_directory_watcher()`. All bookkeeping happens in the trio thread.
    """

    def __init__(self, observer: BaseObserver, token: trio.lowlevel.TrioToken) -> None:
        self._observer = observer
        self._handler = _Bridge(self, token)
        self._scheduled: dict[str, _Scheduled] = {}
        self._subscriptions: set[Subscription] = set()
        # Watched directory -> entry names whose events matter to some subscriber. Replaced
        # whole (never mutated) by the trio thread and read by watchdog's thread.
        self.interest: Mapping[str, frozenset[str]] = MappingProxyType({})

    @property
    def directories(self) -> tuple[str, ...]:
        """The directories under watch now (for tests and logs)."""
        return tuple(sorted(self._scheduled))

    def subscribe(
        self, path: str | Path, *, on_watch_error: Callable[[str], None] | None = None
    ) -> Subscription:
        """Start watching `path` through its directory; `on_watch_error` hears watch failures."""
        sub = Subscription(str(path), on_watch_error=on_watch_error)
        self._subscriptions.add(sub)
        self.refresh(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop watching for `sub`; directories nobody else needs are released."""
        self._subscriptions.discard(sub)
        for directory in list(sub.dirs):
            self._release(sub, directory)
        sub.dirs.clear()
        sub.names.clear()
        self._update_interest()

    def refresh(self, sub: Subscription) -> None:
        """Re-arm `sub`'s watches for the directories that exist now.

        A watch whose directory was deleted (or replaced by a new one under the same name)
        is dropped and made again; a directory that cannot be watched is reported through
        `on_watch_error` and left to the periodic re-read. This looks at the file system in
        the calling thread: at start only; reloads use `refresh_off_loop`.
        """
        for _ in range(8):  # a directory created while arming changes what is wanted
            plan = sub.plan()
            self._arm(sub, plan)
            if sub.wanted_dirs() == plan.wanted:
                return

    async def refresh_off_loop(self, sub: Subscription) -> None:
        """`refresh`, with every look at the file system in a worker thread."""
        plan = await trio.to_thread.run_sync(sub.plan)
        for _ in range(8):
            self._arm(sub, plan)
            again = await trio.to_thread.run_sync(sub.plan)
            if again == plan:
                return
            plan = again

    def _arm(self, sub: Subscription, plan: Plan) -> None:
        """Make `sub`'s scheduled directories exactly `plan.wanted`, and its names the plan's."""
        wanted = plan.wanted
        for directory in list(sub.dirs):
            scheduled = self._scheduled.get(directory)
            stale = scheduled is None or plan.inodes.get(directory, (0, 0)) != scheduled.inode
            if directory not in wanted or stale:
                self._release(sub, directory)
                del sub.dirs[directory]
        for directory, is_parent in wanted.items():
            if directory in sub.dirs:
                sub.dirs[directory] = is_parent
                continue
            try:
                self._acquire(sub, directory, plan.inodes.get(directory, (0, 0)))
            except OSError as exc:
                problem = f"cannot watch {directory}: {exc.strerror or exc}"
                log.error("watch failed; falling back to periodic re-reads", error=problem)
                if sub.on_watch_error is not None:
                    sub.on_watch_error(problem)
                continue
            sub.dirs[directory] = is_parent
        sub.names = {directory: plan.names.get(directory, frozenset()) for directory in sub.dirs}
        self._update_interest()

    def _update_interest(self) -> None:
        """Recompute the names watchdog's thread lets through, and swap them in whole."""
        interest: dict[str, set[str]] = {}
        for directory, scheduled in self._scheduled.items():
            names = interest.setdefault(directory, set())
            for sub in scheduled.subscribers:
                names |= sub.names.get(directory, frozenset())
        self.interest = MappingProxyType(
            {directory: frozenset(names) for directory, names in interest.items()}
        )

    def dispatch(self, paths: list[str]) -> None:
        """Ring every subscription that an event on `paths` concerns (trio thread)."""
        for path in paths:
            directory = os.path.dirname(path)
            for candidate in (directory, path):
                scheduled = self._scheduled.get(candidate)
                if scheduled is None:
                    continue
                for sub in list(scheduled.subscribers):
                    if sub.concerns(candidate, path):
                        sub.ring(event=True)

    def _acquire(self, sub: Subscription, directory: str, inode: tuple[int, int]) -> None:
        """Add `sub` to `directory`'s listeners, scheduling the watch if it is the first."""
        scheduled = self._scheduled.get(directory)
        if scheduled is not None and scheduled.inode != inode:
            self._drop(directory)
            scheduled = None
        if scheduled is None:
            watch = self._observer.schedule(
                self._handler, directory, recursive=False, event_filter=EVENT_FILTER
            )
            scheduled = _Scheduled(watch, inode, set())
            self._scheduled[directory] = scheduled
        scheduled.subscribers.add(sub)

    def _release(self, sub: Subscription, directory: str) -> None:
        """Remove `sub` from `directory`'s listeners; unschedule when none are left."""
        scheduled = self._scheduled.get(directory)
        if scheduled is None:
            return
        scheduled.subscribers.discard(sub)
        if not scheduled.subscribers:
            self._drop(directory)

    def _drop(self, directory: str) -> None:
        """Unschedule `directory`'s watch (its emitter may already have stopped itself)."""
        scheduled = self._scheduled.pop(directory)
        with contextlib.suppress(KeyError, RuntimeError, OSError):
            self._observer.unschedule(scheduled.watch)


def _inode(directory: str) -> tuple[int, int]:
    """(device, inode) of a directory, or (0, 0) when it is gone."""
    try:
        st = os.stat(directory)
    except OSError:
        return (0, 0)
    return (st.st_dev, st.st_ino)


@contextlib.asynccontextmanager
async def open_directory_watcher() -> AsyncIterator[DirectoryWatcher]:
    """Start watchdog's observer thread for the duration of the block.

    Falls back to watchdog's polling observer (with an error logged) when inotify cannot be
    set up, for example when the per-user instance limit is reached.
    """
    token = trio.lowlevel.current_trio_token()
    observer: BaseObserver
    try:
        observer = Observer()
        observer.start()
    except OSError as exc:
        log.error("inotify unavailable; polling for file changes", error=str(exc))
        observer = PollingObserver(timeout=1.0)
        observer.start()
    try:
        yield DirectoryWatcher(observer, token)
    finally:
        observer.stop()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(observer.join, 5.0)
