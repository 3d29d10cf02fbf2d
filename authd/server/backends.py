"""The configured mapping backends: build them, load the file-based ones, report readiness.

MountedFile comes from the `--config` file, DynamicFile from `--dynamicfile-path`. A load that
fails keeps the last good table and marks the backend not ready (authd.md section 2).
"""

from __future__ import annotations

from pathlib import Path

import structlog

from authd.config import FileConfig, MappingConfig, ServerSettings
from authd.errors import AuthdError
from authd.mapping.chain import Backend, MapperChain
from authd.mapping.dynamicfile import DynamicFileTable
from authd.mapping.file import MountedFileTable
from authd.metrics import Metrics

log = structlog.get_logger("authd.backends")

IMPLEMENTED = ("MountedFile", "DynamicFile")


class Backends:
    """The configured backends, and how to (re)load the file-based ones."""

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
        self.chain = MapperChain(
            list(self.by_name.values()), scrubbed_accounts=settings.scrubbed_accounts
        )

    def load_all(self, *, mapping: MappingConfig | None = None) -> None:
        """Load MountedFile from `mapping` (default: the config read at start) and DynamicFile."""
        mounted = self.by_name.get("MountedFile")
        if mounted is not None:
            config = mapping or self._settings.mapping
            sso = self._settings.feature_gates.sso_role_match
            mounted.publish(MountedFileTable.from_config(config, sso_role_match=sso))
            mounted.set_reserved_prefixes(config.reserved_prefixes_for("MountedFile"))
            self._metrics.reload("MountedFile", ok=True)
        if "DynamicFile" in self.by_name:
            self.load_dynamicfile()

    def load_dynamicfile(self) -> None:
        """Read the DynamicFile; a missing or broken file keeps the last good table."""
        backend = self.by_name["DynamicFile"]
        path = self._settings.dynamicfile_path
        try:
            data = Path(path).read_bytes()
            table = DynamicFileTable.from_bytes(
                data, path=path, userid_strict=self._settings.dynamicfile_userid_strict
            )
        except FileNotFoundError:
            backend.mark_not_ready(f"{path}: file does not exist yet")
            return
        except (OSError, AuthdError) as exc:
            self._failed(backend, str(exc))
            return
        backend.publish(table)
        self._metrics.reload("DynamicFile", ok=True)

    def reload_config(self) -> None:
        """Re-read `--config` for SIGHUP; keep the last good mapping when it does not parse."""
        path = self._settings.config_path
        if not path:
            return
        try:
            mapping = MappingConfig.from_file_config(FileConfig.from_file(path))
        except AuthdError as exc:
            backend = self.by_name.get("MountedFile")
            if backend is not None:
                self._failed(backend, str(exc))
            return
        if "MountedFile" in self.by_name:
            self.load_all(mapping=mapping)
        elif "DynamicFile" in self.by_name:
            self.load_dynamicfile()
        log.info("configuration reloaded", path=path)

    def readiness(self) -> tuple[bool, str]:
        """(every backend has a good table, one line per backend)."""
        lines = [f"{b.name}: {b.problem or 'ok'}" for b in self.by_name.values()]
        return all(b.ready for b in self.by_name.values()), "\n".join(lines) + "\n"

    def _failed(self, backend: Backend, problem: str) -> None:
        log.error(
            "reload failed; keeping the last good mapping", backend=backend.name, error=problem
        )
        backend.mark_not_ready(problem)
        self._metrics.reload(backend.name, ok=False)
        self._metrics.backend_error(backend.name)
