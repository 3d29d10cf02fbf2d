"""Watch files through their directories and hand each settled new version to a loader.

The watch itself is `authd.server.dirwatch`. authd watches the directory that holds a file,
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

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import structlog
import trio

from authd.errors import AuthdError, ConfigError
from authd.server.dirwatch import DirectoryWatcher, Subscription

log = structlog.get_logger("authd.server.reload")

T = TypeVar("T")


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
