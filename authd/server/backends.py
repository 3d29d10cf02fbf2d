"""The configured mapping backends: build them, load and hot-reload the file-based ones, readiness.

MountedFile comes from the `--config` file, DynamicFile from `--dynamicfile-path`; both are
watched (authd/server/reload.py) and swapped atomically while the daemon serves. The rules
(authd.md section 2, mapping.md section 4):

- A version that cannot be read or parsed, has a wrong type, or names an ARN that does not parse
  never replaces the last good snapshot: it is logged with file, line and key, counted, and the
  backend reports itself degraded in `/readyz` until a good version arrives.
- A reload applies `server.mapRoles`, `mapUsers`, `mapAccounts` and `reservedPrefixConfig` (for
  every backend) and the DynamicFile. Any other key changed in the config file is logged as a
  warning and takes effect at the next restart.
- A DynamicFile that does not exist yet leaves its backend not ready until it appears. A
  DynamicFile deleted while serving clears its mappings, as upstream does; a deleted `--config`
  keeps its last good mapping (it also holds the cluster ID: losing it is an accident).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import trio

from authd.config import FileConfig, MappingConfig, ServerSettings
from authd.errors import AuthdError, ConfigError
from authd.mapping import MappingTable
from authd.mapping.chain import Backend, MapperChain
from authd.mapping.dynamicfile import DynamicFileTable
from authd.mapping.file import MountedFileTable
from authd.metrics import Metrics
from authd.server.reload import (
    Change,
    DirectoryWatcher,
    FileReloader,
    Timing,
    open_directory_watcher,
)

log = structlog.get_logger("authd.backends")

IMPLEMENTED = ("MountedFile", "DynamicFile")
CONFIG_SOURCE = "config"
DYNAMIC_SOURCE = "DynamicFile"


def count_mappings(table: MappingTable) -> int:
    """Entries in a snapshot: roles (with SSO patterns), users and allowed accounts."""
    if isinstance(table, MountedFileTable):
        sso = sum(len(patterns) for patterns in table.sso.values())
        return len(table.roles) + sso + len(table.users) + len(table.accounts)
    if isinstance(table, DynamicFileTable):
        return len(table.roles) + len(table.users) + len(table.accounts)
    return 0


class Backends:
    """The configured backends, how to load them at start, and their hot reloaders."""

    def __init__(self, settings: ServerSettings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        mapping = settings.mapping
        self.by_name = {
            name: Backend(name, reserved_prefixes=mapping.reserved_prefixes_for(name))
            for name in settings.backend_mode
        }
        for name, backend in self.by_name.items():
            if name not in IMPLEMENTED:
                problem = f"backend {name} is not implemented by this version of authd"
                log.warning("backend not available", backend=name, problem=problem)
                backend.mark_not_ready(problem)
        if settings.dynamic_backend_mode_path:
            log.warning(
                "server.dynamicBackendModePath is not implemented by this version of authd; "
                "the backend mode stays --backend-mode",
                path=settings.dynamic_backend_mode_path,
            )
        self.chain = MapperChain(
            list(self.by_name.values()), scrubbed_accounts=settings.scrubbed_accounts
        )
        self.config_target = _ConfigTarget(self)
        self.dynamic_target = _DynamicTarget(self)
        self.reloaders: list[FileReloader[Any]] = []
        self._dynamic_digest: str | None = None

    @property
    def settings(self) -> ServerSettings:
        """The settings the daemon started with."""
        return self._settings

    @property
    def metrics(self) -> Metrics:
        """Where reloads are counted."""
        return self._metrics

    def load_all(self) -> None:
        """Start-up: MountedFile from the settings' mapping; DynamicFile read once if present."""
        mounted = self.by_name.get("MountedFile")
        if mounted is not None:
            sso = self._settings.feature_gates.sso_role_match
            table = MountedFileTable.from_config(self._settings.mapping, sso_role_match=sso)
            mounted.publish(table)
            self._metrics.reload(CONFIG_SOURCE, ok=True)
            self._metrics.backend_loaded(
                "MountedFile", mappings=count_mappings(table), at=time.time()
            )
        if "DynamicFile" in self.by_name:
            self._load_dynamicfile_at_start()

    def _load_dynamicfile_at_start(self) -> None:
        """Read the DynamicFile once; missing or broken leaves the backend not ready."""
        path = self._settings.dynamicfile_path
        change = Change(path=path, data=None, digest="", event_at=None, trigger="start")
        try:
            data = Path(path).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            self._dynamic_digest = ""  # the reloader's first check then finds nothing new
            self.dynamic_target.missing(change)
            return
        except OSError as exc:
            self.dynamic_target.reject(f"{path}: {exc.strerror or exc}", change)
            return
        digest = hashlib.sha256(data).hexdigest()
        self._dynamic_digest = digest
        change = Change(path=path, data=data, digest=digest, event_at=None, trigger="start")
        if not data:
            self.dynamic_target.reject(f"{path}: file is empty", change)
            return
        try:
            table = self.dynamic_target.parse(data)
        except AuthdError as exc:
            self.dynamic_target.reject(str(exc), change)
            return
        self.dynamic_target.apply(table, change)

    async def serve_reloads(
        self,
        *,
        timing: Timing | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Watch `--config` and the DynamicFile until cancelled.

        `task_status.started()` comes once both watches are armed and each file was checked.
        """
        async with open_directory_watcher() as watcher, trio.open_nursery() as nursery:
            await self._start_reloaders(watcher, nursery, timing)
            task_status.started()

    async def _start_reloaders(
        self, watcher: DirectoryWatcher, nursery: trio.Nursery, timing: Timing | None
    ) -> None:
        """Create and arm one reloader per watched file."""
        reloaders: list[FileReloader[Any]] = []
        if self._settings.config_path:
            reloaders.append(
                FileReloader(self._settings.config_path, self.config_target, timing=timing)
            )
        if "DynamicFile" in self.by_name:
            reloaders.append(
                FileReloader(
                    self._settings.dynamicfile_path,
                    self.dynamic_target,
                    timing=timing,
                    digest=self._dynamic_digest,
                    on_watch_error=self.dynamic_target.watch_failed,
                )
            )
        for reloader in reloaders:
            await nursery.start(reloader.run, watcher)
        self.reloaders = reloaders

    def trigger_reload(self) -> None:
        """SIGHUP: re-read every watched file now, even if its content did not change."""
        for reloader in self.reloaders:
            reloader.trigger()

    def readiness(self) -> tuple[bool, str]:
        """(every backend has a good snapshot and no problem, one line per backend)."""
        lines = [_readiness_line(b) for b in self.by_name.values()]
        return all(b.ready for b in self.by_name.values()), "\n".join(lines) + "\n"

    def rejected(self, backend: Backend | None, source: str, problem: str, data: bytes) -> None:
        """A version of a source was refused: log where, count it, degrade the backend."""
        line, key = locate(problem, source=source, data=data)
        log.error(
            "reload failed; keeping the last good mapping",
            backend=backend.name if backend is not None else None,
            file=self._source_path(source),
            line=line,
            key=key,
            error=problem,
        )
        self._metrics.reload(source, ok=False)
        if backend is not None:
            backend.mark_not_ready(problem)
            self._metrics.backend_reload_failed(backend.name)
            self._metrics.backend_error(backend.name)

    def _source_path(self, source: str) -> str:
        """The file a source name stands for."""
        if source == CONFIG_SOURCE:
            return self._settings.config_path
        return self._settings.dynamicfile_path


def _readiness_line(backend: Backend) -> str:
    """`Name: ok`, `Name: <why not>`, or degraded when a last good snapshot still serves."""
    if backend.problem is None and backend.table is not None:
        return f"{backend.name}: ok"
    if backend.table is not None:
        return f"{backend.name}: degraded, serving the last good mapping: {backend.problem}"
    return f"{backend.name}: {backend.problem}"


# --------------------------------------------------------------------------------------------
# The two reload targets.


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigVersion:
    """One parsed version of the `--config` file."""

    file: FileConfig
    mapping: MappingConfig
    table: MountedFileTable


class _ConfigTarget:
    """Reload target for `--config`: MountedFile mappings and every backend's reserved prefixes."""

    def __init__(self, owner: Backends) -> None:
        self._owner = owner
        self._baseline: dict[str, object] | None = None
        self._mapping = owner.settings.mapping

    def parse(self, data: bytes) -> ConfigVersion:
        """Parse and validate (worker thread). Raises ConfigError with file:line: key."""
        settings = self._owner.settings
        file = FileConfig.from_bytes(data, path=settings.config_path)
        mapping = MappingConfig.from_file_config(file)
        sso = settings.feature_gates.sso_role_match
        table = MountedFileTable.from_config(mapping, sso_role_match=sso)
        return ConfigVersion(file=file, mapping=mapping, table=table)

    def apply(self, parsed: ConfigVersion, change: Change) -> None:
        """Swap MountedFile's table and all reserved prefixes in one step (no checkpoint)."""
        owner = self._owner
        baseline = parsed.file.restart_values()
        if self._baseline is None:
            self._baseline = baseline
            mounted = owner.by_name.get("MountedFile")
            if (
                change.trigger == "start"
                and parsed.mapping == self._mapping
                and (mounted is None or mounted.ready)
            ):
                return  # the version the daemon started with
        else:
            _warn_restart_only(self._baseline, baseline, change.path)
        for warning in (*parsed.file.warnings, *parsed.mapping.warnings):
            log.warning("config warning", file=change.path, warning=warning)
        mounted = owner.by_name.get("MountedFile")
        if mounted is not None:
            mounted.publish(parsed.table)
        for backend in owner.by_name.values():
            backend.set_reserved_prefixes(parsed.mapping.reserved_prefixes_for(backend.name))
        self._mapping = parsed.mapping
        owner.metrics.reload(CONFIG_SOURCE, ok=True)
        mappings = count_mappings(parsed.table)
        if mounted is not None:
            owner.metrics.backend_loaded(
                "MountedFile", mappings=mappings, at=time.time(), latency=_latency(change)
            )
        log.info(
            "configuration reloaded",
            file=change.path,
            mappings=mappings,
            trigger=change.trigger,
            sha256=change.digest[:12],
        )

    def reject(self, problem: str, change: Change) -> None:
        """Keep the last good mapping; MountedFile (if configured) reports degraded."""
        self._owner.rejected(
            self._owner.by_name.get("MountedFile"), CONFIG_SOURCE, problem, change.data or b""
        )

    def missing(self, change: Change) -> None:
        """The config file is gone: keep serving its last good mapping, report degraded."""
        self._owner.rejected(
            self._owner.by_name.get("MountedFile"),
            CONFIG_SOURCE,
            f"{change.path}: file was deleted; serving the last good mapping until it is back",
            b"",
        )


def _warn_restart_only(before: dict[str, object], after: dict[str, object], path: str) -> None:
    """Log each setting that changed in the file but only applies at the next restart."""
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        log.warning(
            "config settings changed; they apply at the next restart",
            file=path,
            keys=changed,
        )


class _DynamicTarget:
    """Reload target for the DynamicFile (mapping.md section 4)."""

    def __init__(self, owner: Backends) -> None:
        self._owner = owner
        self._loads = 0

    @property
    def _backend(self) -> Backend:
        return self._owner.by_name["DynamicFile"]

    def parse(self, data: bytes) -> DynamicFileTable:
        """Parse (worker thread); an ARN that does not parse rejects the whole version."""
        settings = self._owner.settings
        table = DynamicFileTable.from_bytes(
            data, path=settings.dynamicfile_path, userid_strict=settings.dynamicfile_userid_strict
        )
        if table.warnings:
            # Upstream keeps such an entry where nothing finds it; authd refuses the version
            # so the typo is seen and the last good mapping keeps serving.
            raise ConfigError("; ".join(table.warnings))
        return table

    def apply(self, parsed: DynamicFileTable, change: Change) -> None:
        """Swap the new table in and record upstream's end-to-end latency."""
        owner = self._owner
        self._backend.publish(parsed)
        self._loads += 1
        now = time.time()
        owner.metrics.reload(DYNAMIC_SOURCE, ok=True)
        owner.metrics.backend_loaded(
            "DynamicFile", mappings=count_mappings(parsed), at=now, latency=_latency(change)
        )
        if self._loads > 1:
            self._observe_e2e(parsed, now)
        log.info(
            "dynamic file reloaded",
            file=change.path,
            mappings=count_mappings(parsed),
            trigger=change.trigger,
            sha256=change.digest[:12],
        )

    def _observe_e2e(self, table: DynamicFileTable, now: float) -> None:
        """Upstream's `dynamic_e2e_latency_seconds`: now minus `LastUpdatedDateTime`."""
        try:
            written = int(table.last_updated)
        except ValueError:
            log.error("LastUpdatedDateTime is not unix seconds", value=table.last_updated)
            return
        if written > now:
            log.error("LastUpdatedDateTime is in the future", value=table.last_updated)
            return
        self._owner.metrics.dynamic_reload_latency("dynamic_file", int(now) - written)

    def reject(self, problem: str, change: Change) -> None:
        """Keep the last good table; report degraded with the reason."""
        self._owner.rejected(self._backend, DYNAMIC_SOURCE, problem, change.data or b"")

    def missing(self, change: Change) -> None:
        """Not there yet: not ready. Deleted: clear the mappings (upstream) and say so."""
        backend = self._backend
        if backend.table is None:
            backend.mark_not_ready(f"{change.path}: file does not exist yet")
            log.warning("dynamic file does not exist yet", file=change.path)
            return
        backend.clear(f"{change.path}: file was deleted; its mappings are cleared")
        self._owner.metrics.backend_cleared("DynamicFile")
        log.warning("dynamic file deleted; its mappings are cleared", file=change.path)

    def watch_failed(self, problem: str) -> None:
        """Upstream's `dynamicfile_failures_total`: the watch could not be set up."""
        self._owner.metrics.dynamicfile_failure()
        log.error("dynamic file watch failed", error=problem)


def _latency(change: Change) -> float | None:
    """Seconds since the first file event of this change, if an event led to it."""
    if change.event_at is None:
        return None
    return time.monotonic() - change.event_at


# --------------------------------------------------------------------------------------------
# Where a problem is: file line and key path for the log.

_JSON_KEY = re.compile(r"\b(map(?:roles|users|accounts))(?:\[(\d+)\])?(?:\.(\w+))?", re.IGNORECASE)
_JSON_LINE = re.compile(r"line (\d+) column \d+")
_YAML_WHERE = re.compile(r":(\d+)(?:: ([\w.\[\]-]+)(?=:))?")


def locate(problem: str, *, source: str, data: bytes) -> tuple[int | None, str | None]:
    """(line, key path) named by a reload error, finding the line in JSON when needed."""
    if source == CONFIG_SOURCE:
        match = _YAML_WHERE.search(problem.rpartition('": ')[2] or problem)
        if match is None:
            return None, None
        return int(match.group(1)), match.group(2)
    syntax = _JSON_LINE.search(problem)
    if syntax is not None:
        return int(syntax.group(1)), None
    key = _JSON_KEY.search(problem)
    if key is None:
        return None, None
    steps: list[str | int] = [key.group(1)]
    if key.group(2) is not None:
        steps.append(int(key.group(2)))
    if key.group(3) is not None:
        steps.append(key.group(3))
    return json_line(data, steps), key.group(0)


def json_line(data: bytes, steps: Sequence[str | int]) -> int | None:
    """The line where the value at `steps` (keys matched case-insensitively) starts, or None."""
    try:
        text = data.decode("utf-8")
        at = _value_at(text, steps)
    except (ValueError, IndexError):
        return None
    return None if at is None else text.count("\n", 0, at) + 1


def _value_at(text: str, steps: Sequence[str | int]) -> int | None:
    """Index in `text` where the value at `steps` starts (a small position-keeping walk)."""
    decoder = json.JSONDecoder()
    pos = _skip(text, 0)
    for step in steps:
        if isinstance(step, int):
            if text[pos] != "[":
                return None
            pos = _skip(text, pos + 1)
            for _ in range(step):
                _, pos = decoder.raw_decode(text, pos)
                pos = _skip(text, _skip(text, pos) + 1)  # past the comma
            continue
        if text[pos] != "{":
            return None
        pos = _skip(text, pos + 1)
        while text[pos] == '"':
            name, pos = decoder.raw_decode(text, pos)
            pos = _skip(text, _skip(text, pos) + 1)  # past the colon
            if str(name).lower() == step.lower():
                break
            _, pos = decoder.raw_decode(text, pos)
            pos = _skip(text, pos)
            if text[pos] == ",":
                pos = _skip(text, pos + 1)
        else:
            return None
    return pos


def _skip(text: str, pos: int) -> int:
    """The index of the next non-blank character."""
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos
