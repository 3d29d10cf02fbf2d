"""The reloader's targets: the `--config` file (MountedFile), the DynamicFile, the backend mode.

Each parses one version of its file off the trio thread, then swaps it in (or refuses it) in
one step; a refused version is logged with the `path`, `line` and `key` its `ConfigError`
carries, counted, and leaves the backend degraded on its last good snapshot (docs/reload.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from authd.config import FileConfig, MappingConfig, ServerSettings
from authd.config.located import as_str, as_strs, section
from authd.config.settings import parse_backend_modes
from authd.config.yamlevents import read_tree
from authd.errors import ConfigError
from authd.mapping.chain import Backend
from authd.mapping.file import MountedFileTable
from authd.mapping.lint import Finding, KindError, lint_text
from authd.metrics import Metrics
from authd.server.reload import Change

if TYPE_CHECKING:
    from authd.mapping.dynamicfile import DynamicFileTable

log = structlog.get_logger("authd.backends")

CONFIG_SOURCE = "config"
DYNAMIC_SOURCE = "DynamicFile"


def report_rejected(
    metrics: Metrics, backend: Backend | None, *, source: str, path: str, error: ConfigError
) -> None:
    """A version of a source was refused: log where, count it, degrade the backend."""
    log.error(
        "reload failed; keeping the last good mapping",
        backend=backend.name if backend is not None else None,
        file=path,
        line=error.line,
        key=error.key,
        error=str(error),
    )
    metrics.reload(source, ok=False)
    if backend is not None:
        backend.mark_not_ready(str(error))
        metrics.backend_reload_failed(backend.name)
        metrics.backend_error(backend.name)


def lint(data: bytes, *, path: str, settings: ServerSettings) -> tuple[Finding, ...]:
    """The `authd validate` findings of one version of a mapping file (none if it is no text).

    Only logged (`log_findings`): findings never refuse a version (docs/validate.md).
    """
    role_path_match = settings.feature_gates.role_path_match
    try:
        text = data.decode("utf-8")
        return tuple(lint_text(text, src=path, role_path_match=role_path_match))
    except (UnicodeDecodeError, KindError):
        return ()


def log_findings(findings: tuple[Finding, ...]) -> None:
    """Log each finding with the rule code `authd validate` gives it."""
    for finding in findings:
        log.warning(
            "mapping finding",
            file=finding.file,
            line=finding.line,
            key=finding.key,
            rule=finding.rule,
            severity=finding.severity,
            problem=finding.message,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigVersion:
    """One parsed version of the `--config` file."""

    file: FileConfig
    mapping: MappingConfig
    table: MountedFileTable
    findings: tuple[Finding, ...] = ()


class ConfigTarget:
    """Reload target for `--config`: MountedFile mappings and every backend's reserved prefixes."""

    def __init__(
        self, *, settings: ServerSettings, backends: Mapping[str, Backend], metrics: Metrics
    ) -> None:
        self._settings = settings
        self._backends = backends
        self._metrics = metrics
        self._baseline: dict[str, object] | None = None
        self._mapping = settings.mapping

    @property
    def mapping(self) -> MappingConfig:
        """The mappings (and reserved prefixes) of the config version now applied."""
        return self._mapping

    @property
    def _mounted(self) -> Backend | None:
        return self._backends.get("MountedFile")

    def load_start(self) -> None:
        """Publish the mapping the settings were resolved with (the version read at start)."""
        self._log_start_findings()
        mounted = self._mounted
        if mounted is None:
            return
        sso = self._settings.feature_gates.sso_role_match
        paths = self._settings.feature_gates.role_path_match
        table = MountedFileTable.from_config(
            self._mapping, sso_role_match=sso, role_path_match=paths
        )
        mounted.publish(table)
        self._metrics.reload(CONFIG_SOURCE, ok=True)
        self._metrics.backend_loaded("MountedFile", mappings=len(table), at=time.time())

    def _log_start_findings(self) -> None:
        """Log the findings of the config file the daemon starts with."""
        path = self._settings.config_path
        if not path:
            return
        try:
            data = Path(path).read_bytes()
        except OSError:
            return  # reading it is the settings' job, which already succeeded or failed
        log_findings(lint(data, path=path, settings=self._settings))

    def parse(self, data: bytes) -> ConfigVersion:
        """Parse and validate (worker thread). Raises ConfigError with file, line and key."""
        settings = self._settings
        file = FileConfig.from_bytes(data, path=settings.config_path)
        mapping = MappingConfig.from_file_config(file)
        sso = settings.feature_gates.sso_role_match
        paths = settings.feature_gates.role_path_match
        table = MountedFileTable.from_config(mapping, sso_role_match=sso, role_path_match=paths)
        findings = lint(data, path=settings.config_path, settings=settings)
        return ConfigVersion(file=file, mapping=mapping, table=table, findings=findings)

    def apply(self, parsed: ConfigVersion, change: Change) -> None:
        """Swap MountedFile's table and all reserved prefixes in one step (no checkpoint)."""
        baseline = parsed.file.restart_values()
        if self._baseline is None:
            self._baseline = baseline
            mounted = self._mounted
            if (
                change.trigger == "start"
                and parsed.mapping == self._mapping
                and (mounted is None or mounted.ready)
            ):
                return  # the version the daemon started with
        else:
            _warn_restart_only(self._baseline, baseline, change.path)
        log_findings(parsed.findings)
        for warning in (*parsed.file.warnings, *parsed.mapping.warnings):
            log.warning("config warning", file=change.path, warning=warning)
        mounted = self._mounted
        if mounted is not None:
            mounted.publish(parsed.table)
        for backend in self._backends.values():
            backend.set_reserved_prefixes(parsed.mapping.reserved_prefixes_for(backend.name))
        self._mapping = parsed.mapping
        self._metrics.reload(CONFIG_SOURCE, ok=True)
        if mounted is not None:
            self._metrics.backend_loaded(
                "MountedFile", mappings=len(parsed.table), at=time.time(), latency=_latency(change)
            )
        log.info(
            "configuration reloaded",
            file=change.path,
            mappings=len(parsed.table),
            trigger=change.trigger,
            sha256=change.digest[:12],
        )

    def reject(self, error: ConfigError, change: Change) -> None:
        """Keep the last good mapping; MountedFile (if configured) reports degraded."""
        report_rejected(
            self._metrics, self._mounted, source=CONFIG_SOURCE, path=change.path, error=error
        )

    def missing(self, change: Change) -> None:
        """The config file is gone: keep serving its last good mapping, report degraded."""
        problem = f"{change.path}: file was deleted; serving the last good mapping until it is back"
        self.reject(ConfigError(problem, path=change.path), change)


def _warn_restart_only(before: dict[str, object], after: dict[str, object], path: str) -> None:
    """Log each setting that changed in the file but only applies at the next restart."""
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        log.warning(
            "config settings changed; they apply at the next restart",
            file=path,
            keys=changed,
        )


class DynamicTarget:
    """Reload target for the DynamicFile (docs/reload.md)."""

    def __init__(self, *, settings: ServerSettings, backend: Backend, metrics: Metrics) -> None:
        self._settings = settings
        self._backend = backend
        self._metrics = metrics
        self._loads = 0

    def parse(self, data: bytes) -> DynamicFileTable:
        """Parse (worker thread); an ARN that does not parse rejects the whole version.

        The version's `authd validate` findings are logged first, whether or not it is refused.
        """
        from authd.mapping.dynamicfile import DynamicFileTable  # only with a DynamicFile

        settings = self._settings
        log_findings(lint(data, path=settings.dynamicfile_path, settings=settings))
        return DynamicFileTable.from_bytes(
            data,
            path=settings.dynamicfile_path,
            userid_strict=settings.dynamicfile_userid_strict,
            refuse_bad_arns=True,
        )

    def apply(self, parsed: DynamicFileTable, change: Change) -> None:
        """Swap the new table in and record upstream's end-to-end latency."""
        self._backend.publish(parsed)
        self._loads += 1
        now = time.time()
        self._metrics.reload(DYNAMIC_SOURCE, ok=True)
        self._metrics.backend_loaded(
            "DynamicFile", mappings=len(parsed), at=now, latency=_latency(change)
        )
        if self._loads > 1:
            observe_e2e(self._metrics, "dynamic_file", parsed.last_updated, now)
        log.info(
            "dynamic file reloaded",
            file=change.path,
            mappings=len(parsed),
            trigger=change.trigger,
            sha256=change.digest[:12],
        )

    def reject(self, error: ConfigError, change: Change) -> None:
        """Keep the last good table; report degraded with the reason."""
        report_rejected(
            self._metrics, self._backend, source=DYNAMIC_SOURCE, path=change.path, error=error
        )

    def missing(self, change: Change) -> None:
        """Not there yet: not ready. Deleted: clear the mappings (upstream) and say so."""
        backend = self._backend
        if backend.table is None:
            backend.mark_not_ready(f"{change.path}: file does not exist yet")
            log.warning("dynamic file does not exist yet", file=change.path)
            return
        backend.clear(f"{change.path}: file was deleted; its mappings are cleared")
        self._metrics.backend_cleared("DynamicFile")
        log.warning("dynamic file deleted; its mappings are cleared", file=change.path)

    def watch_failed(self, problem: str) -> None:
        """Upstream's `dynamicfile_failures_total`: the watch could not be set up."""
        self._metrics.dynamicfile_failure()
        log.error("dynamic file watch failed", error=problem)


def observe_e2e(metrics: Metrics, kind: str, last_updated: str, now: float) -> None:
    """Upstream's `dynamic_e2e_latency_seconds{type=kind}`: now minus `LastUpdatedDateTime`."""
    try:
        written = int(last_updated)
    except ValueError:
        log.error("LastUpdatedDateTime is not unix seconds", value=last_updated, type=kind)
        return
    if written > now:
        log.error("LastUpdatedDateTime is in the future", value=last_updated, type=kind)
        return
    metrics.dynamic_reload_latency(kind, int(now) - written)


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendModeVersion:
    """One version of the dynamic backend-mode file: the modes, canonical, in chain order."""

    modes: tuple[str, ...]
    version: str = ""
    last_updated: str = ""


def parse_backend_mode_file(data: bytes, *, path: str, dynamicfile_path: str) -> BackendModeVersion:
    """Parse `{"backendMode": "MountedFile DynamicFile", "Version", "LastUpdatedDateTime"}`.

    Keys ignore case (as Go's JSON decoding); modes are separated by spaces (or commas) and
    validated as `--backend-mode` is, including DynamicFile needing a DynamicFile path.

    Raises:
        ConfigError: not JSON, no valid modes, or DynamicFile named with no DynamicFile path.
    """
    warnings: list[str] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}", path=path) from exc
    root = read_tree(text, src=path, warnings=warnings)
    if root is None:
        raise ConfigError(f"{path}: empty file", path=path)
    sec = section(root, ("backendMode", "Version", "LastUpdatedDateTime"), [])
    raw = as_strs(sec.get("backendMode"), split=", \t\n")
    where = sec["backendMode"].where if "backendMode" in sec else root.where
    try:
        modes = parse_backend_modes(raw, warnings)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}", path=path, line=root.line, key="backendMode") from exc
    if "DynamicFile" in modes and not dynamicfile_path:
        raise ConfigError(
            f"{where}: dynamicfile is set in backend-mode but dynamicfilepath is not set",
            path=path,
            key="backendMode",
        )
    return BackendModeVersion(
        modes=modes,
        version=as_str(sec.get("Version")),
        last_updated=as_str(sec.get("LastUpdatedDateTime")),
    )


class BackendModeTarget:
    """Reload target for `server.dynamicBackendModePath`: hands each good version's modes on.

    `switch(modes, reason)` builds the chain (authd/server/backends.py); a deleted file reverts
    to `--backend-mode`; a bad version keeps the current chain, is logged and counted.
    """

    SOURCE = "dynamicBackendMode"

    def __init__(
        self,
        *,
        settings: ServerSettings,
        metrics: Metrics,
        switch: Callable[[tuple[str, ...], str], None],
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._switch = switch
        self._loads = 0
        self.problem: str | None = None

    def parse(self, data: bytes) -> BackendModeVersion:
        """Parse and validate (worker thread)."""
        return parse_backend_mode_file(
            data,
            path=self._settings.dynamic_backend_mode_path,
            dynamicfile_path=self._settings.dynamicfile_path,
        )

    def apply(self, parsed: BackendModeVersion, change: Change) -> None:
        """Switch the chain to the file's modes; upstream's latency after the first load."""
        self.problem = None
        self._loads += 1
        self._metrics.reload(self.SOURCE, ok=True)
        if self._loads > 1:
            observe_e2e(self._metrics, "dynamic_backend_mode", parsed.last_updated, time.time())
        log.info(
            "backend mode file loaded",
            file=change.path,
            modes=list(parsed.modes),
            trigger=change.trigger,
        )
        self._switch(parsed.modes, f"{change.path} (version {parsed.version or '?'})")

    def reject(self, error: ConfigError, change: Change) -> None:
        """Keep the current chain; report the file as refused."""
        log.error(
            "backend mode file refused; keeping the current backend mode",
            file=change.path,
            line=error.line,
            key=error.key,
            error=str(error),
        )
        self.problem = str(error)
        self._metrics.reload(self.SOURCE, ok=False)

    def missing(self, change: Change) -> None:
        """No file (not yet, or deleted): the chain is `--backend-mode`, as upstream."""
        self.problem = None
        log.info(
            "backend mode file absent; using --backend-mode",
            file=change.path,
            modes=list(self._settings.backend_mode),
        )
        self._switch(self._settings.backend_mode, "--backend-mode")

    def watch_failed(self, problem: str) -> None:
        """Upstream's `dynamicfile_failures_total` counts this watch too."""
        self._metrics.dynamicfile_failure()
        log.error("backend mode file watch failed", error=problem)


def _latency(change: Change) -> float | None:
    """Seconds since the first file event of this change, if an event led to it."""
    if change.event_at is None:
        return None
    return time.monotonic() - change.event_at
