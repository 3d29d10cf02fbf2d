"""The live Kubernetes backends: aws-auth (EKSConfigMap) and IAMIdentityMapping (CRD).

Each owns an `Informer` on its collection, parses every new view of it off the trio thread
(bursts coalesce: only the newest view is parsed), and swaps the result into its `Backend` slot
in one step, so a review always sees one consistent table. Readiness (docs/kubernetes.md):

- the API server refusing or failing (401, 403, 5xx, unreachable) marks the backend not ready
  with the reason; its last good table keeps serving;
- aws-auth missing (at start, or deleted later) leaves the backend without mappings, as upstream,
  and not ready, saying so; a version whose YAML does not parse keeps the last good table and
  reports degraded; one bad entry is rejected alone (logged with its key path, counted);
- for the CRD, authd is the controller: objects whose `status.canonicalARN` is missing or stale
  get it written through the status subresource; a refused write degrades the backend;
- each applied version's `authd validate` findings are logged (`mapping finding`, same rule
  codes as the file backends), once per content: aws-auth when its `data` changed, an
  IAMIdentityMapping when its `spec` did. Findings never refuse a version.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import structlog
import trio

from authd.errors import ConfigError
from authd.mapping import MappingTable
from authd.mapping.chain import Backend
from authd.mapping.configmap import NAMESPACE, OBJECT, SOURCE, ConfigMapVersion, parse_configmap
from authd.mapping.crd import PATH as CRD_PATH
from authd.mapping.crd import CrdVersion, StatusWrite, parse_mappings
from authd.mapping.lint import Finding, lint_configmap_data, lint_identity_mapping
from authd.metrics import Metrics
from authd.server.kube import Conflict, KubeError, NotFound
from authd.server.kube.client import KubeClient
from authd.server.kube.informer import Backoff, Informer

log = structlog.get_logger("authd.backends")

CONFIGMAP_PATH = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
Objects = Mapping[str, Mapping[str, Any]]
V = TypeVar("V")
DEFAULT_BACKOFF = Backoff()


class KubeBackend(Generic[V]):
    """One backend fed by an informer: parse each view in a worker thread, publish, report.

    Subclasses say how to parse a view (`parse`), what to do with a parsed one (`accept`) and
    what an empty collection means (`empty`).
    """

    def __init__(
        self,
        *,
        backend: Backend,
        client: KubeClient,
        metrics: Metrics,
        path: str,
        params: Mapping[str, str] | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        self.backend = backend
        self.client = client
        self.metrics = metrics
        self.informer = Informer(
            client,
            path,
            params=params,
            on_change=self._changed,
            on_state=self._state,
            backoff=backoff,
        )
        metrics.watch_informer(backend.name, self.informer)
        self._latest: Objects | None = None
        self._changed_at: float | None = None
        self._wake = trio.Event()
        self._table: MappingTable | None = None
        self._connection_problem: str | None = None
        self._content_problem: str | None = None
        self._writer_problem: str | None = None
        self._applied = trio.Event()

    @property
    def name(self) -> str:
        """The backend's name (`EKSConfigMap`, `CRD`)."""
        return self.backend.name

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the collection until cancelled.

        `task_status.started()` comes after the first list attempt, and, when it succeeded,
        after its view is published: reviews served after start-up see it.
        """
        async with trio.open_nursery() as nursery:
            await nursery.start(self.informer.run)
            if self._latest is not None:
                await self._apply_latest()
            nursery.start_soon(self._apply_forever)
            await self._started(nursery)
            task_status.started()

    async def _started(self, nursery: trio.Nursery) -> None:
        """Hook for subclasses' extra tasks (the CRD's status writer)."""

    async def wait_applied(self) -> None:
        """Wait until the next view is published (tests and start-up)."""
        await self._applied.wait()

    # --- the informer's callbacks (on the trio thread) ---

    def _changed(self, objects: Objects) -> None:
        self._latest = objects
        if self._changed_at is None:
            self._changed_at = time.monotonic()
        self._wake.set()

    def _state(self, healthy: bool, reason: str) -> None:
        if healthy:
            if self._connection_problem is not None:
                log.info("kubernetes backend recovered", backend=self.name, detail=reason)
            self._connection_problem = None
        else:
            log.error("kubernetes backend failing", backend=self.name, problem=reason)
            self._connection_problem = reason
            self.metrics.backend_error(self.name)
            self.failed()
        self._show()

    def failed(self) -> None:
        """Hook: one failed list or watch (EKSConfigMap counts upstream's watch failures)."""

    # --- applying views ---

    async def _apply_forever(self) -> None:
        while True:
            await self._wake.wait()
            await self._apply_latest()

    async def _apply_latest(self) -> None:
        self._wake = trio.Event()
        objects, started = self._latest, self._changed_at
        self._changed_at = None
        if objects is None:
            return
        try:
            parsed = await trio.to_thread.run_sync(self.parse, objects)
        except ConfigError as exc:
            self._reject(exc)
        else:
            if objects:
                self.accept(parsed, started)
            else:
                self.empty()
        applied, self._applied = self._applied, trio.Event()
        applied.set()

    def parse(self, objects: Objects) -> V:
        """Turn one view into a parsed version (worker thread). Raises ConfigError."""
        raise NotImplementedError

    def accept(self, parsed: V, started: float | None) -> None:
        """Publish a parsed version."""
        raise NotImplementedError

    def empty(self) -> None:
        """The collection is empty."""
        raise NotImplementedError

    def publish(self, table: MappingTable, started: float | None) -> None:
        """Swap a new table in, clear the content problem, count it."""
        self._table = table
        self._content_problem = None
        self._show()
        latency = None if started is None else time.monotonic() - started
        self.metrics.reload(self.name, ok=True)
        self.metrics.backend_loaded(self.name, mappings=len(table), at=time.time(), latency=latency)

    def _reject(self, error: ConfigError) -> None:
        log.error(
            "mappings refused; keeping the last good mapping",
            backend=self.name,
            source=error.path,
            line=error.line,
            key=error.key,
            error=str(error),
        )
        self._content_problem = str(error)
        self.metrics.reload(self.name, ok=False)
        self.metrics.backend_reload_failed(self.name)
        self.metrics.backend_error(self.name)
        self._show()

    def clear(self, problem: str) -> None:
        """No mappings any more (the source is gone), and say why."""
        had = self._table is not None
        self._table = None
        self._content_problem = problem
        self._show()
        if had:
            self.metrics.backend_cleared(self.name)

    def set_writer_problem(self, problem: str | None) -> None:
        """Report (or clear, with None) a failure to write back to the API; the table stays."""
        if problem != self._writer_problem:
            self._writer_problem = problem
            self._show()

    def _show(self) -> None:
        """Publish the table and the first problem (the connection's, else the content's)."""
        problem = self._connection_problem or self._content_problem or self._writer_problem
        if self._table is None:
            self.backend.clear(problem or "not loaded yet")
            return
        self.backend.publish(self._table)
        if problem is not None:
            self.backend.mark_not_ready(problem)


class ConfigMapBackend(KubeBackend[ConfigMapVersion]):
    """EKSConfigMap: `kube-system/aws-auth`, list+watch selected by `metadata.name`."""

    def __init__(
        self,
        *,
        backend: Backend,
        client: KubeClient,
        metrics: Metrics,
        sso_role_match: bool = False,
        role_path_match: bool = False,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        super().__init__(
            backend=backend,
            client=client,
            metrics=metrics,
            path=CONFIGMAP_PATH,
            params={"fieldSelector": f"metadata.name={OBJECT}"},
            backoff=backoff,
        )
        self._sso = sso_role_match
        self._role_path = role_path_match
        self._linted: Mapping[str, object] | None = None  # the data whose findings were logged
        self._parsed_data: Mapping[str, object] = {}  # the data `parse` last saw

    def parse(self, objects: Objects) -> ConfigMapVersion:
        """Parse the aws-auth object's data, and lint it when it changed (worker thread)."""
        obj = objects.get(f"{NAMESPACE}/{OBJECT}")
        data = obj.get("data") if obj is not None else None
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError(f"{SOURCE}: data: expected a mapping", path=SOURCE, key="data")
        version = parse_configmap(data, sso_role_match=self._sso, role_path_match=self._role_path)
        data = self._parsed_data = data or {}
        if data == self._linted:
            return version
        found = lint_configmap_data(data, src=SOURCE, role_path_match=self._role_path)
        return dataclasses.replace(version, findings=tuple(found))

    def accept(self, parsed: ConfigMapVersion, started: float | None) -> None:
        """Publish the table; log each rejected entry, warning and new finding."""
        self._linted = self._parsed_data
        log_findings(parsed.findings)
        for error in parsed.rejected:
            log.error(
                "aws-auth entry rejected; the other entries apply",
                backend=self.name,
                line=error.line,
                key=error.key,
                error=str(error),
            )
        for warning in parsed.warnings:
            log.warning("aws-auth warning", backend=self.name, warning=warning)
        self.metrics.backend_rejected_entries(self.name, len(parsed.rejected))
        self.publish(parsed.table, started)
        log.info(
            "aws-auth applied",
            backend=self.name,
            mappings=len(parsed.table),
            rejected=len(parsed.rejected),
        )

    def empty(self) -> None:
        """aws-auth does not exist: no mappings (as upstream), not ready, saying so."""
        if self._table is None:
            problem = f"{SOURCE} does not exist"
            log.warning("aws-auth does not exist", backend=self.name)
        else:
            problem = f"{SOURCE} was deleted; its mappings are cleared"
            log.warning("aws-auth deleted; its mappings are cleared", backend=self.name)
        self._linted = None
        self.metrics.backend_rejected_entries(self.name, 0)
        self.clear(problem)

    def failed(self) -> None:
        """Upstream's `configmap_watch_failures_total`."""
        self.metrics.configmap_watch_failure()


class CrdBackend(KubeBackend[CrdVersion]):
    """CRD: every `IAMIdentityMapping`; authd writes their `status.canonicalARN`."""

    def __init__(
        self,
        *,
        backend: Backend,
        client: KubeClient,
        metrics: Metrics,
        role_path_match: bool = False,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        super().__init__(
            backend=backend, client=client, metrics=metrics, path=CRD_PATH, backoff=backoff
        )
        self._backoff = backoff
        self._role_path = role_path_match
        self._linted: dict[str, str] = {}  # object name -> the spec whose findings were logged
        self._parsed_specs: dict[str, str] = {}  # the specs `parse` last saw
        self._writes: dict[str, StatusWrite] = {}
        self._written: set[tuple[str, str]] = set()
        self._writes_due = trio.Event()

    def parse(self, objects: Objects) -> CrdVersion:
        """Index the objects by `status.canonicalARN`; lint each new or edited spec (worker
        thread)."""
        version = parse_mappings(objects, role_path_match=self._role_path)
        found: list[Finding] = []
        self._parsed_specs = _specs(objects)
        for name, spec in self._parsed_specs.items():
            if self._linted.get(name) != spec:
                source = f"iamidentitymapping/{name}"
                obj_spec = objects[name].get("spec")
                found += lint_identity_mapping(
                    obj_spec, src=source, role_path_match=self._role_path
                )
        return dataclasses.replace(version, findings=tuple(found))

    def accept(self, parsed: CrdVersion, started: float | None) -> None:
        """Publish the usable objects; queue status writes for the others; log new findings."""
        self._linted = self._parsed_specs
        log_findings(parsed.findings)
        for problem in parsed.rejected:
            log.error("IAMIdentityMapping refused", backend=self.name, error=problem)
        for warning in parsed.warnings:
            log.warning("IAMIdentityMapping warning", backend=self.name, warning=warning)
        self.metrics.backend_rejected_entries(self.name, len(parsed.rejected))
        self._queue(parsed.writes)
        self.publish(parsed.table, started)

    def empty(self) -> None:
        """No objects: an empty table (nothing is mapped, the backend is ready)."""
        self._parsed_specs = {}
        self.accept(parse_mappings({}), None)

    def _queue(self, writes: tuple[StatusWrite, ...]) -> None:
        self._writes = {w.name: w for w in writes}
        self._written = {done for done in self._written if done[0] in self._writes}
        if self._writes:
            self._writes_due.set()

    async def _started(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._write_statuses)

    async def _write_statuses(self) -> None:
        """Write every due `status.canonicalARN`; retry failures with backoff."""
        attempt = 0
        while True:
            await self._writes_due.wait()
            self._writes_due = trio.Event()
            failed = False
            for write in list(self._writes.values()):
                failed |= not await self._write(write)
            if not failed:
                self.set_writer_problem(None)
            if failed:
                self._writes_due.set()
                await trio.sleep(self._backoff.delay(attempt, rand=0.5))
                attempt += 1
            else:
                attempt = 0

    async def _write(self, write: StatusWrite) -> bool:
        """One status write; False when it should be retried."""
        done = (write.name, write.resource_version)
        if done in self._written:
            return True
        try:
            await self.client.patch_status(
                f"{CRD_PATH}/{write.name}", {"status": {"canonicalARN": write.canonical_arn}}
            )
        except (Conflict, NotFound) as exc:
            # Changed or gone since: the next event brings its new state.
            log.info("IAMIdentityMapping status not written", name=write.name, error=str(exc))
            return True
        except KubeError as exc:
            problem = f"cannot write status.canonicalARN of {write.name}: {exc}"
            log.error("IAMIdentityMapping status not written", backend=self.name, error=str(exc))
            self.metrics.crd_status_write(ok=False)
            self.set_writer_problem(problem)
            return False
        self._written.add(done)
        self.metrics.crd_status_write(ok=True)
        log.info(
            "IAMIdentityMapping status written",
            backend=self.name,
            name=write.name,
            canonicalARN=write.canonical_arn,
        )
        return True


def _specs(objects: Objects) -> dict[str, str]:
    """Each object's `spec`, as text that compares equal exactly when the spec is the same."""
    return {name: json.dumps(obj.get("spec"), sort_keys=True) for name, obj in objects.items()}


def log_findings(findings: tuple[Finding, ...]) -> None:
    """Log each finding as the file backends do; no `line` when the object has none (CRD)."""
    for finding in findings:
        log.warning(
            "mapping finding",
            file=finding.file,
            line=finding.line or None,
            key=finding.key,
            rule=finding.rule,
            severity=finding.severity,
            problem=finding.message,
        )
