"""Watch files through their directories and hand each settled new version to a loader.

watchdog's inotify observer runs in its own thread; its events enter trio only through
`trio.from_thread.run_sync(..., trio_token=...)`. authd watches the directory that holds a file,
never the file itself, because files are rarely edited in place (docs/reload.md,
kubernetes/kubernetes#112677):

- editors write a temporary file and rename it over the old one (a new inode);
- the kubelet swaps the `..data` symlink of a ConfigMap volume, so `config.yaml ->
  ..data/config.yaml` changes content while nothing happens to `config.yaml` itself;
- `cp`, `kubectl cp` or a shell redirect truncate and write in place, in several steps;
- a file is deleted and created again, or its directory does not exist yet.

So an event only says "look again", and only an event on a name that resolving the watched path
goes through (the file's own name, the `..data` link and the directory it points to, an ancestor
that does not exist yet) says it: watchdog's thread drops every other event before it reaches
trio, so a log appended to beside the config costs the event loop nothing.

Each change goes: debounce (no event for `debounce` seconds), look at the directories, read until
stable (no event, size or mtime change while reading) and hash (the same bytes as last time are a
no-op), all three in a worker thread, never on the event loop; then the target parses and
validates the bytes in a worker thread and swaps one reference in the trio thread. A file that
keeps its content changes nothing; a periodic re-read (`resync`) catches events the kernel never
sent (network file systems, a full inotify queue).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar

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

from authd.errors import AuthdError, ConfigError

log = structlog.get_logger("authd.server.reload")

T = TypeVar("T")

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


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    """How long a reloader waits, in seconds.

    Attributes:
        debounce: quiet time after the last event before the file is read; a multi-step write
            (truncate, write, write, close) becomes one change.
        empty_grace: an empty file is often a writer between truncate and write; it is judged
            (and rejected) only when no event follows for this long.
        resync: re-read this often even without events (a no-op when the hash is unchanged).
    """

    debounce: float = 0.05
    empty_grace: float = 1.0
    resync: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """One settled read of a watched file, as handed to a target.

    Attributes:
        path: the watched path, as configured.
        data: the bytes read, or None when the file does not exist.
        digest: sha256 of `data` (hex), "" when the file does not exist.
        event_at: `time.monotonic()` of the first file event that led to this read; None for
            a read at start, on a manual trigger, or by the periodic re-read.
        trigger: `start`, `event`, `signal` or `resync`.
    """

    path: str
    data: bytes | None
    digest: str
    event_at: float | None
    trigger: str


class ReloadTarget(Protocol[T]):
    """What a reloader feeds: parse in a worker thread, then swap (or refuse) in trio."""

    def parse(self, data: bytes) -> T:
        """Parse and validate one version (worker thread, no shared state touched).

        Raises:
            AuthdError: the content is broken; a ConfigError names file, line and key (in its
                message and its `path`, `line` and `key` attributes).
        """
        ...

    def apply(self, parsed: T, change: Change) -> None:
        """Swap the new snapshot in (trio thread, no checkpoint: reviews see old or new)."""
        ...

    def reject(self, error: ConfigError, change: Change) -> None:
        """Keep the last good snapshot; report `error` (unreadable or broken content)."""
        ...

    def missing(self, change: Change) -> None:
        """The file does not exist (not yet, or deleted)."""
        ...


@dataclass(frozen=True, slots=True)
class _Read:
    """The outcome of reading a file once."""

    data: bytes | None
    digest: str
    stable: bool
    error: str | None = None


def read_file(path: str) -> _Read:
    """Read `path` once; `stable` is False when it changed while being read.

    Only a regular file (or a symlink to one) is read. Anything else at the path is unreadable
    content: a directory, and a FIFO, socket or device, which are opened without blocking and
    never read (opening a FIFO waits for a writer, forever: it would wedge this file's reloads
    and the daemon's shutdown; a device such as /dev/zero never ends).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return _Read(None, "", stable=True)
    except OSError as exc:
        return _Read(None, "", stable=True, error=f"{path}: {exc.strerror or exc}")
    try:
        with open(fd, "rb") as stream:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                kind = "Is a directory" if stat.S_ISDIR(before.st_mode) else "not a regular file"
                return _Read(None, "", stable=True, error=f"{path}: {kind}")
            os.set_blocking(fd, True)
            data = stream.read()
            after = os.fstat(fd)
    except OSError as exc:
        return _Read(None, "", stable=True, error=f"{path}: {exc.strerror or exc}")
    stable = (
        before.st_size == after.st_size == len(data) and before.st_mtime_ns == after.st_mtime_ns
    )
    return _Read(data, hashlib.sha256(data).hexdigest(), stable=stable)


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


class FileReloader(Generic[T]):
    """Keeps one file's target up to date: watch, debounce, read, hash, parse, swap."""

    def __init__(
        self,
        path: str | Path,
        target: ReloadTarget[T],
        *,
        timing: Timing | None = None,
        digest: str | None = None,
        on_watch_error: Callable[[str], None] | None = None,
    ) -> None:
        """Set up; nothing is watched until `run`.

        Args:
            path: the file (it and its directory may not exist yet).
            target: what parses and swaps.
            timing: waits; the defaults suit production.
            digest: sha256 of the version already loaded at start, so an unchanged file is
                not parsed again; None to judge the file once when the watch is armed.
            on_watch_error: told when a directory cannot be watched (upstream counts these
                for the DynamicFile); re-reads every `timing.resync` seconds still happen.
        """
        self.path = str(path)
        self._target = target
        self._timing = timing or Timing()
        self._digest = digest
        self._on_watch_error = on_watch_error
        # Forced re-reads (SIGHUP) asked for, and the last one a judged read began after.
        self._forces_asked = 0
        self._forces_done = 0
        self._sub: Subscription | None = None
        self.checks = 0  # settled reads judged so far (tests and benches wait on it)
        self._checked = trio.Event()

    def trigger(self) -> int:
        """Re-read and re-apply now, even if the content is unchanged (SIGHUP).

        Returns:
            The ticket to hand `wait_forced`: it is done once a read begun after this call has
            been judged (a read already under way when the signal came does not count).
        """
        self._forces_asked += 1
        if self._sub is not None:
            self._sub.ring(event=False)
        return self._forces_asked

    async def wait_forced(self, ticket: int) -> None:
        """Wait until the forced re-read `ticket` (from `trigger`) has been judged."""
        while self._forces_done < ticket:
            await self._checked.wait()

    async def wait_checked(self, count: int) -> None:
        """Wait until at least `count` settled reads have been judged (for tests and benches)."""
        while self.checks < count:
            await self._checked.wait()

    async def run(
        self,
        watcher: DirectoryWatcher,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Watch until cancelled; `task_status.started()` once the watch is armed and the file
        has been judged once.

        That first check, made after arming, catches any change made before the watch existed.
        """
        sub = watcher.subscribe(self.path, on_watch_error=self._on_watch_error)
        self._sub = sub
        try:
            trigger = "start"
            while True:
                change, forces = await self._settle(sub, watcher, trigger)
                await self._judge(change, forces)
                if trigger == "start":
                    task_status.started()
                with trio.move_on_after(self._timing.resync) as idle:
                    await sub.wait()
                trigger = "resync" if idle.cancelled_caught else "event"
        finally:
            self._sub = None
            watcher.unsubscribe(sub)

    async def _settle(
        self, sub: Subscription, watcher: DirectoryWatcher, trigger: str
    ) -> tuple[Change, int]:
        """Debounce, then read until a read is stable; return the settled version and the
        forced re-reads asked for before that read began (which its judging serves)."""
        while True:
            while True:  # debounce: wait for a quiet period
                sub.clear()
                with trio.move_on_after(self._timing.debounce) as quiet:
                    await sub.wait()
                if quiet.cancelled_caught:
                    break
            await watcher.refresh_off_loop(sub)  # a directory may have appeared or been replaced
            generation = sub.generation
            forces = self._forces_asked
            forced = forces > self._forces_done
            read = await trio.to_thread.run_sync(read_file, self.path)
            if sub.generation != generation or not read.stable:
                continue  # written while we read: settle again
            if read.data == b"" and not forced:
                with trio.move_on_after(self._timing.empty_grace) as grace:
                    await sub.wait()
                if not grace.cancelled_caught:
                    continue  # the writer went on: settle again
            event_at, sub.first_event_at = sub.first_event_at, None
            trigger = "signal" if forced else trigger
            return _change(self.path, read, event_at=event_at, trigger=trigger), forces

    async def _judge(self, change: Change, forces: int) -> None:
        """Skip a no-op, else parse off-thread and apply, reject or report missing.

        `forces` (from `_settle`) says which forced re-reads this read serves: one asked for
        after it began is still pending, and its ring brings another read.
        """
        forced = forces > self._forces_done
        try:
            if change.digest == self._digest and not forced:
                return
            self._digest = _judged_digest(change)
            data = _triage(self._target, change)
            if data is not None:
                outcome = await trio.to_thread.run_sync(_parse, self._target, data, self.path)
                _deliver(self._target, outcome, change)
        finally:
            self._forces_done = max(self._forces_done, forces)
            self.checks += 1
            self._checked.set()
            self._checked = trio.Event()


def load_now(path: str, target: ReloadTarget[Any]) -> str | None:
    """Judge a file once, synchronously, with a reloader's own steps: the start-up load.

    Read, hash, then apply, reject or report missing, exactly as `FileReloader` does.

    Returns:
        The digest to hand `FileReloader(digest=...)`, so its first check skips this version;
        None when the file could not be read (the reloader then judges it again).
    """
    change = _change(path, read_file(path), event_at=None, trigger="start")
    data = _triage(target, change)
    if data is not None:
        _deliver(target, _parse(target, data, path), change)
    return _judged_digest(change)


def _change(path: str, read: _Read, *, event_at: float | None, trigger: str) -> Change:
    """The Change one read makes; an unreadable file's digest is `error:<why>`."""
    digest = read.digest if read.error is None else f"error:{read.error}"
    return Change(path=path, data=read.data, digest=digest, event_at=event_at, trigger=trigger)


def _judged_digest(change: Change) -> str | None:
    """The digest to remember once `change` is judged (None: unreadable, look again)."""
    return None if change.digest.startswith("error:") else change.digest


def _triage(target: ReloadTarget[Any], change: Change) -> bytes | None:
    """Reject an unreadable or empty file, report a missing one; else the bytes to parse."""
    if change.digest.startswith("error:"):
        target.reject(ConfigError(change.digest.removeprefix("error:"), path=change.path), change)
        return None
    if change.data is None:
        target.missing(change)
        return None
    if not change.data:
        target.reject(ConfigError(f"{change.path}: file is empty", path=change.path), change)
        return None
    return change.data


def _parse(target: ReloadTarget[T], data: bytes, path: str) -> T | ConfigError:
    """Parse one version (in a worker thread, or at start); a refusal is returned, not raised."""
    try:
        return target.parse(data)
    except ConfigError as exc:
        return exc
    except AuthdError as exc:
        return ConfigError(str(exc), path=path)
    except Exception as exc:  # a parser bug must not take the last good mapping down
        log.exception("could not load file", path=path)
        return ConfigError(f"{path}: could not load: {type(exc).__name__}: {exc}", path=path)


def _deliver(target: ReloadTarget[T], outcome: T | ConfigError, change: Change) -> None:
    """Swap the parsed version in (trio thread, no checkpoint), or refuse it."""
    if isinstance(outcome, ConfigError):
        target.reject(outcome, change)
    else:
        target.apply(outcome, change)
