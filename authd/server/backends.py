"""The configured mapping backends: build them, load them at start, run their sources, readiness.

MountedFile comes from the `--config` file, DynamicFile from `--dynamicfile-path`; both are
watched (authd/server/reload.py) and swapped atomically while the daemon serves, through the
targets in authd/server/targets.py. EKSConfigMap and CRD follow the API server through
informers (authd/server/kubebackends.py, docs/kubernetes.md). The rules (docs/reload.md):

- A version that cannot be read or parsed, has a wrong type, or names an ARN that does not parse
  never replaces the last good snapshot: it is logged with file, line and key, counted, and the
  backend reports itself degraded in `/readyz` until a good version arrives.
- A reload applies `server.mapRoles`, `mapUsers`, `mapAccounts` and `reservedPrefixConfig` (for
  every backend) and the DynamicFile. Any other key changed in the config file is logged as a
  warning and takes effect at the next restart.
- A DynamicFile that does not exist yet leaves its backend not ready until it appears. A
  DynamicFile deleted while serving clears its mappings, as upstream does; a deleted `--config`
  keeps its last good mapping (it also holds the cluster ID: losing it is an accident).

The dynamic backend mode (`server.dynamicBackendModePath`, docs/server.md): each good version of
that file names the chain; a backend it names that is not running yet is built and started
(its first load awaited) before the chain is swapped in one step; a deleted file reverts to
`--backend-mode`. Backends once started keep running, so switching back is immediate.
`/readyz` judges the backends of the current chain.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import TYPE_CHECKING, Any

import structlog
import trio

from authd.config import ServerSettings
from authd.errors import AuthdError
from authd.mapping.chain import Backend, MapperChain
from authd.metrics import Metrics
from authd.names import KUBE_BACKENDS
from authd.server.dirwatch import DirectoryWatcher, open_directory_watcher
from authd.server.reload import FileReloader, Timing, load_now
from authd.server.targets import BackendModeTarget, ConfigTarget, DynamicTarget

if TYPE_CHECKING:
    # The Kubernetes modules load with the first Kubernetes backend (docs/memory.md).
    from authd.server.kube.client import KubeClient
    from authd.server.kubebackends import KubeBackend

log = structlog.get_logger("authd.backends")

KubeOpener = Callable[[], "AbstractAsyncContextManager[KubeClient]"]


class Backends:
    """The backends, the current chain, how to load them at start, and their live sources.

    Args:
        settings: the daemon's settings.
        metrics: where every backend counts.
        open_kube: opens the Kubernetes API client (called once, when the first Kubernetes
            backend starts); None when there is no API server to talk to.
    """

    def __init__(
        self,
        settings: ServerSettings,
        metrics: Metrics,
        *,
        open_kube: KubeOpener | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._open_kube = open_kube
        self.by_name: dict[str, Backend] = {}
        self._serving = False
        for name in settings.backend_mode:
            self._slot(name)
        self.modes: tuple[str, ...] = settings.backend_mode
        self.chain = MapperChain(
            [self.by_name[n] for n in self.modes], scrubbed_accounts=settings.scrubbed_accounts
        )
        self.config_target = ConfigTarget(settings=settings, backends=self.by_name, metrics=metrics)
        self.dynamic_target: DynamicTarget | None = None
        if "DynamicFile" in self.by_name:
            self.dynamic_target = self._dynamic_target()
        self.mode_target = (
            BackendModeTarget(settings=settings, metrics=metrics, switch=self._want)
            if settings.dynamic_backend_mode_path
            else None
        )
        self.kube: dict[str, KubeBackend[Any]] = {}
        self.reloaders: list[FileReloader[Any]] = []
        self._dynamic_digest: str | None = None
        self._mode_digest: str | None = None
        self._started: set[str] = set()
        self._wanted: tuple[tuple[str, ...], str] | None = None
        self._wanted_changed = trio.Event()
        self._client: KubeClient | None = None
        self._nursery: trio.Nursery | None = None
        self._watcher: DirectoryWatcher | None = None
        self._stack: AsyncExitStack | None = None
        self._timing: Timing | None = None

    @property
    def settings(self) -> ServerSettings:
        """The settings the daemon started with."""
        return self._settings

    def _slot(self, name: str) -> Backend:
        """The named backend's slot, created (not loaded) when first asked for."""
        backend = self.by_name.get(name)
        if backend is None:
            mapping = self.config_target.mapping if self._serving else self._settings.mapping
            prefixes = mapping.reserved_prefixes_for(name)
            backend = self.by_name[name] = Backend(name, reserved_prefixes=prefixes)
        return backend

    def _dynamic_target(self) -> DynamicTarget:
        return DynamicTarget(
            settings=self._settings, backend=self.by_name["DynamicFile"], metrics=self._metrics
        )

    def load_all(self) -> None:
        """Start-up: MountedFile from the settings' mapping; the DynamicFile and the backend-mode
        file read once if present.

        They go through the reloader's own read, hash and parse steps (`load_now`), so the
        first check after the watch is armed skips this same version.
        """
        self.config_target.load_start()
        if self.dynamic_target is not None:
            self._dynamic_digest = load_now(self._settings.dynamicfile_path, self.dynamic_target)
        if self.mode_target is not None:
            self._mode_digest = load_now(self._settings.dynamic_backend_mode_path, self.mode_target)

    async def serve_reloads(
        self,
        *,
        timing: Timing | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run every source (file watches, informers, the backend-mode file) until cancelled.

        `task_status.started()` comes once the watches are armed, each file was checked, each
        Kubernetes backend made its first list attempt, and the backend mode is applied.

        Raises:
            KubeError: the Kubernetes connection could not be configured (at start).
        """
        async with (
            open_directory_watcher() as watcher,
            AsyncExitStack() as stack,
            trio.open_nursery() as nursery,
        ):
            self._watcher, self._nursery, self._stack = watcher, nursery, stack
            self._timing, self._serving = timing, True
            if self._settings.config_path:
                await self._start_reloader(
                    FileReloader(self._settings.config_path, self.config_target, timing=timing)
                )
            for name in self.modes:
                await self._start(name)
            if self.mode_target is not None:
                await self._start_reloader(
                    FileReloader(
                        self._settings.dynamic_backend_mode_path,
                        self.mode_target,
                        timing=timing,
                        digest=self._mode_digest,
                        on_watch_error=self.mode_target.watch_failed,
                    )
                )
                await self._switch_wanted()
                nursery.start_soon(self._switch_forever)
            task_status.started()

    async def _start_reloader(self, reloader: FileReloader[Any]) -> None:
        assert self._nursery is not None and self._watcher is not None
        await self._nursery.start(reloader.run, self._watcher)
        self.reloaders.append(reloader)

    async def _start(self, name: str) -> None:
        """Start the named backend's source, once; its first load is done on return.

        Raises:
            AuthdError: it cannot be built (no DynamicFile path, no Kubernetes connection).
        """
        if name in self._started:
            return
        backend = self._slot(name)
        if name == "MountedFile":
            if backend.table is None:
                self.config_target.load_start()
        elif name == "DynamicFile":
            await self._start_dynamic_file()
        elif name in KUBE_BACKENDS:
            from authd.server.kubebackends import ConfigMapBackend, CrdBackend

            client = await self._kube_client()
            source: KubeBackend[Any]
            gates = self._settings.feature_gates
            if name == "EKSConfigMap":
                source = ConfigMapBackend(
                    backend=backend,
                    client=client,
                    metrics=self._metrics,
                    sso_role_match=gates.sso_role_match,
                    role_path_match=gates.role_path_match,
                )
            else:
                source = CrdBackend(
                    backend=backend,
                    client=client,
                    metrics=self._metrics,
                    role_path_match=gates.role_path_match,
                )
            self.kube[name] = source
            assert self._nursery is not None
            await self._nursery.start(source.run)
        self._started.add(name)
        log.info("starting mapper", backend=name)

    async def _start_dynamic_file(self) -> None:
        if self.dynamic_target is None:
            if not self._settings.dynamicfile_path:
                raise AuthdError(
                    "dynamicfile is set in backend-mode but dynamicfilepath is not set"
                )
            self.dynamic_target = self._dynamic_target()
            self._dynamic_digest = load_now(self._settings.dynamicfile_path, self.dynamic_target)
        target = self.dynamic_target
        await self._start_reloader(
            FileReloader(
                self._settings.dynamicfile_path,
                target,
                timing=self._timing,
                digest=self._dynamic_digest,
                on_watch_error=target.watch_failed,
            )
        )

    async def _kube_client(self) -> KubeClient:
        """The one API client, opened on first use and closed when serving ends."""
        if self._client is None:
            if self._open_kube is None:
                raise AuthdError("no Kubernetes API connection is configured")
            assert self._stack is not None
            self._client = await self._stack.enter_async_context(self._open_kube())
        return self._client

    # --- the dynamic backend mode ---

    def _want(self, modes: tuple[str, ...], reason: str) -> None:
        """The backend-mode file asks for `modes` (the switch happens in `_switch_forever`)."""
        self._wanted = (modes, reason)
        self._wanted_changed.set()

    async def _switch_forever(self) -> None:
        while True:
            await self._wanted_changed.wait()
            await self._switch_wanted()

    async def _switch_wanted(self) -> None:
        """Build what the newest wanted mode needs, then swap the chain in one step."""
        self._wanted_changed = trio.Event()
        if self._wanted is None:
            return
        modes, reason = self._wanted
        if modes == self.modes:
            return
        try:
            for name in modes:
                await self._start(name)
        except AuthdError as exc:
            log.error(
                "backend mode not applied; keeping the current chain",
                modes=list(modes),
                source=reason,
                error=str(exc),
            )
            if self.mode_target is not None:
                self.mode_target.problem = f"backend mode {' '.join(modes)}: {exc}"
            self._metrics.reload(BackendModeTarget.SOURCE, ok=False)
            return
        if self._wanted is not None and self._wanted[0] != modes:
            return  # a newer version arrived while starting; it is applied next
        self.chain.replace_backends([self.by_name[n] for n in modes])
        previous, self.modes = self.modes, modes
        if reason != "--backend-mode":
            self._metrics.backend_mode_switched(modes)
        log.info(
            "backend mode switched",
            modes=list(modes),
            previous=list(previous),
            source=reason,
        )

    # --- signals and readiness ---

    async def reload_all(self) -> None:
        """SIGHUP: re-read every watched file now, even if its content did not change, and
        return once each has been judged by a read begun after this call."""
        tickets = [(reloader, reloader.trigger()) for reloader in list(self.reloaders)]
        for reloader, ticket in tickets:
            await reloader.wait_forced(ticket)

    def readiness(self) -> tuple[bool, str]:
        """(every backend of the chain has a good snapshot and no problem, one line each)."""
        active = [self.by_name[n] for n in self.modes]
        lines = [_readiness_line(b) for b in active]
        ready = all(b.ready for b in active)
        problem = self.mode_target.problem if self.mode_target is not None else None
        if problem is not None:
            lines.append(f"backend mode: degraded, keeping {' '.join(self.modes)}: {problem}")
            ready = False
        return ready, "\n".join(lines) + "\n"


def _readiness_line(backend: Backend) -> str:
    """`Name: ok`, `Name: <why not>`, or degraded when a last good snapshot still serves."""
    if backend.problem is None and backend.table is not None:
        return f"{backend.name}: ok"
    if backend.table is not None:
        return f"{backend.name}: degraded, serving the last good mapping: {backend.problem}"
    return f"{backend.name}: {backend.problem}"
