"""The configured mapping backends: build them, load them at start, run their reloaders, readiness.

MountedFile comes from the `--config` file, DynamicFile from `--dynamicfile-path`; both are
watched (authd/server/reload.py) and swapped atomically while the daemon serves, through the
targets in authd/server/targets.py. The rules (docs/reload.md):

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

from typing import Any

import structlog
import trio

from authd.config import ServerSettings
from authd.mapping.chain import Backend, MapperChain
from authd.metrics import Metrics
from authd.server.reload import (
    DirectoryWatcher,
    FileReloader,
    Timing,
    load_now,
    open_directory_watcher,
)
from authd.server.targets import ConfigTarget, DynamicTarget

log = structlog.get_logger("authd.backends")

IMPLEMENTED = ("MountedFile", "DynamicFile")


class Backends:
    """The configured backends, how to load them at start, and their hot reloaders."""

    def __init__(self, settings: ServerSettings, metrics: Metrics) -> None:
        self._settings = settings
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
        self.config_target = ConfigTarget(settings=settings, backends=self.by_name, metrics=metrics)
        dynamic = self.by_name.get("DynamicFile")
        self.dynamic_target = (
            None
            if dynamic is None
            else DynamicTarget(settings=settings, backend=dynamic, metrics=metrics)
        )
        self.reloaders: list[FileReloader[Any]] = []
        self._dynamic_digest: str | None = None

    @property
    def settings(self) -> ServerSettings:
        """The settings the daemon started with."""
        return self._settings

    def load_all(self) -> None:
        """Start-up: MountedFile from the settings' mapping; the DynamicFile read once if present.

        The DynamicFile goes through the reloader's own read, hash and parse steps
        (`load_now`), so its first check after the watch is armed skips this same version.
        """
        self.config_target.load_start()
        if self.dynamic_target is not None:
            self._dynamic_digest = load_now(self._settings.dynamicfile_path, self.dynamic_target)

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
        if self.dynamic_target is not None:
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


def _readiness_line(backend: Backend) -> str:
    """`Name: ok`, `Name: <why not>`, or degraded when a last good snapshot still serves."""
    if backend.problem is None and backend.table is not None:
        return f"{backend.name}: ok"
    if backend.table is not None:
        return f"{backend.name}: degraded, serving the last good mapping: {backend.problem}"
    return f"{backend.name}: {backend.problem}"
