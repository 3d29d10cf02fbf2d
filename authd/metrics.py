"""authd's Prometheus metrics: one object owning its registry, methods named for what happened.

Upstream's series keep their exact names, types, labels, buckets and help strings
(metrics in docs/upstream-compat.md) so existing dashboards and alerts keep working. authd's own
series use the `authd_` prefix, label `backend` where per backend and `reason` where per review
outcome (authd 4 and 6 in docs/upstream-compat.md). Series that a dashboard should see at zero from
the start (upstream's unlabeled counters and gauges, and authd's decision/reason pairs) are created
up front.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from authd.metrics_series import (
    NAMESPACE,
    CallbackCounter,
    InformerCounts,
    InformerSeries,
    ReviewSeries,
    WithoutCreated,
)
from authd.names import BACKEND_MODES

__all__ = [
    "BACKENDS",
    "Metrics",
]


E2E_BUCKETS = (1.0, 3.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0)
# A file change is applied in tens of milliseconds; seconds mean a large file or a slow disk.
RELOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

BACKENDS = BACKEND_MODES
STS_CALL_OUTCOMES = ("ok", "rejected", "throttled", "unavailable", "connection_error")
STS_LANES = ("reserved", "open")
DENIAL_KINDS = ("token", "access_key")
# The state-dir files whose permissions are checked at start (authd.server.tls.LOOSE_FILES).
STATE_FILES = ("key", "state_dir")


class Metrics:
    """Every metric authd exports, registered in a registry of its own.

    Attributes are the collectors themselves, for callers that need something no method
    offers; prefer the methods, which keep label values consistent.
    """

    def __init__(self, *, process_collector: bool = True) -> None:
        """Create the registry and every series.

        Args:
            process_collector: also export `process_*` (CPU, memory, fds) and `python_*` runtime
                metrics, authd's stand-in for upstream's Go collectors.
        """
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}
        reg = self.registry
        ns = NAMESPACE
        # --- upstream (metrics in docs/upstream-compat.md) ---
        # Every review touches these; they are plain numbers turned into samples at scrape time
        # (`ReviewSeries`): upstream's authenticate_latency_seconds{result}, and authd's
        # authd_reviews_total{decision,reason}, authd_review_latency_seconds{backend,decision}
        # and authd_identity_cache_hits_total.
        self.review_series = ReviewSeries()
        reg.register(self.review_series)
        self.sts_responses = Counter(
            "sts_responses_total",
            "Sts responses with error code label",
            ["ResponseCode", "StsRegion"],
            namespace=ns,
            registry=reg,
        )
        self.sts_connection_failures = Counter(
            "sts_connection_failures_total",
            "Sts call could not succeed or timedout",
            ["StsRegion"],
            namespace=ns,
            registry=reg,
        )
        self.sts_throttling = Counter(
            "sts_throttling_total",
            "Sts call got throttled",
            ["StsRegion"],
            namespace=ns,
            registry=reg,
        )
        self.ec2_describe_instances_calls = Counter(
            "ec2_describe_instances_calls_total",
            "Number of EC2 describe instances calls.",
            namespace=ns,
            registry=reg,
        )
        self.configmap_watch_failures = Counter(
            "configmap_watch_failures_total",
            "EKS Configmap watch failures",
            namespace=ns,
            registry=reg,
        )
        self.dynamicfile_failures = Counter(
            "dynamicfile_failures_total", "Dynamic file failures", namespace=ns, registry=reg
        )
        self.dynamic_e2e_latency = Histogram(
            "dynamic_e2e_latency_seconds",
            "End to end latency in seconds partitioned by type.",
            ["type"],
            namespace=ns,
            buckets=E2E_BUCKETS,
            registry=reg,
        )
        self.dynamic_file_enabled = Gauge(
            "dynamic_file_enabled",
            "Dynamic file in backend mode is enabled",
            namespace=ns,
            registry=reg,
        )
        self.dynamic_file_only = Gauge(
            "dynamic_file_only",
            "Only dynamic file in backend mode is enabled",
            namespace=ns,
            registry=reg,
        )
        # --- authd's own (authd 6 in docs/upstream-compat.md) ---
        self.backend_errors = Counter(
            "authd_backend_errors_total",
            "Errors of a mapping backend (lookup failures, unreadable sources).",
            ["backend"],
            registry=reg,
        )
        self.reloads = Counter(
            "authd_reloads_total",
            "Reloads of a watched source (config file, DynamicFile, backend mode), by result.",
            ["source", "result"],
            registry=reg,
        )
        self._init_protection(reg)
        self._init_flood(reg)
        self._init_runtime(reg)
        self.backend_reloads = Counter(
            "authd_backend_reloads_total",
            "New snapshots of a backend's mappings swapped in by a reload.",
            ["backend"],
            registry=reg,
        )
        self.backend_reload_errors = Counter(
            "authd_backend_reload_errors_total",
            "Versions of a backend's source rejected (unreadable, unparsable, invalid, deleted); "
            "the last good snapshot kept serving.",
            ["backend"],
            registry=reg,
        )
        self.backend_mappings = Gauge(
            "authd_backend_mappings",
            "Entries (roles, users, accounts) in a backend's current snapshot.",
            ["backend"],
            registry=reg,
        )
        self.backend_last_good_load = Gauge(
            "authd_backend_last_good_load_timestamp_seconds",
            "Unix time at which a backend's current snapshot was loaded.",
            ["backend"],
            registry=reg,
        )
        self.backend_reload_latency = Histogram(
            "authd_backend_reload_latency_seconds",
            "Seconds from the first file event (or Kubernetes watch event) of a change to its "
            "snapshot serving reviews.",
            ["backend"],
            buckets=RELOAD_BUCKETS,
            registry=reg,
        )
        self.backend_rejected = Gauge(
            "authd_backend_rejected_entries",
            "Entries (aws-auth entries, IAMIdentityMapping objects) left out of a backend's "
            "current snapshot because they are invalid; the other entries serve.",
            ["backend"],
            registry=reg,
        )
        self.crd_status_writes = Counter(
            "authd_crd_status_writes_total",
            "IAMIdentityMapping status.canonicalARN writes by authd's controller, by result.",
            ["result"],
            registry=reg,
        )
        self.informers = InformerSeries()
        reg.register(self.informers)
        for result in ("ok", "error"):
            self.crd_status_writes.labels(result=result)
        for backend in BACKENDS:
            self.backend_errors.labels(backend=backend)
            self.backend_reloads.labels(backend=backend)
            self.backend_reload_errors.labels(backend=backend)
        if process_collector:
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
            GCCollector(registry=reg)

    def _child(self, metric: MetricWrapperBase, *values: str) -> Any:
        """`metric.labels(*values)`, looked up once per label set.

        For the series each STS call updates: `labels` costs microseconds a call, and their
        label sets are few and bounded (docs/metrics.md), as the registry's own children are.
        """
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # --- reviews ---

    def observe_review(
        self,
        *,
        reason: str,
        seconds: float,
        backend: str | None = None,
        decision: str | None = None,
        result: str | None = None,
    ) -> None:
        """Count one answered TokenReview and its latency, in upstream's and authd's series.

        Args:
            reason: the outcome's reason code (`authd.outcomes.BY_REASON`), "ok" when allowed.
            seconds: time from request start to answer.
            backend: the mapping backend that decided, or None when mapping was not reached.
            decision: allow, deny or retry; derived from `reason` when None.
            result: upstream's `result` label; derived from `reason` when None.

        Raises:
            KeyError: an unknown reason with no explicit decision and result.
        """
        self.review_series.observe(
            reason=reason, seconds=seconds, backend=backend, decision=decision, result=result
        )

    # --- STS ---

    def sts_response(self, code: int, region: str) -> None:
        """STS answered GetCallerIdentity with HTTP status `code` (any status)."""
        self._child(self.sts_responses, str(code), region).inc()

    def sts_connection_failure(self, region: str) -> None:
        """An STS call got no answer: connection error or timeout."""
        self._child(self.sts_connection_failures, region).inc()

    def sts_throttled(self, region: str) -> None:
        """STS answered non-200 with `Throttling` in the body."""
        self.sts_throttling.labels(StsRegion=region).inc()

    # --- mapping backends and reloads ---

    def ec2_describe_instances_call(self) -> None:
        """One ec2:DescribeInstances call (single or batched) was made."""
        self.ec2_describe_instances_calls.inc()

    def dynamicfile_failure(self) -> None:
        """A dynamic file watcher could not be created, or reported an error."""
        self.dynamicfile_failures.inc()

    def dynamic_reload_latency(self, kind: str, seconds: float) -> None:
        """A dynamic file reload took effect `seconds` after its `LastUpdatedDateTime`.

        Args:
            kind: `dynamic_file` or `dynamic_backend_mode`.
            seconds: now minus the file's timestamp; the caller skips future timestamps.
        """
        self.dynamic_e2e_latency.labels(type=kind).observe(seconds)

    def backend_error(self, backend: str) -> None:
        """A mapping backend failed to answer or to load its source."""
        self.backend_errors.labels(backend=backend).inc()

    def reload(self, source: str, *, ok: bool) -> None:
        """A watched source was reloaded (`ok`) or its new version was rejected."""
        self.reloads.labels(source=source, result="ok" if ok else "error").inc()

    def backend_loaded(
        self, backend: str, *, mappings: int, at: float, latency: float | None = None
    ) -> None:
        """A new snapshot of `backend` was swapped in.

        Args:
            backend: the backend's name (`MountedFile`, `DynamicFile`, ...).
            mappings: entries in the new snapshot.
            at: Unix time of the load.
            latency: seconds from the file event to the swap; None when no event led to it
                (start-up, SIGHUP, periodic re-read).
        """
        self.backend_reloads.labels(backend=backend).inc()
        self.backend_mappings.labels(backend=backend).set(mappings)
        self.backend_last_good_load.labels(backend=backend).set(at)
        if latency is not None:
            self.backend_reload_latency.labels(backend=backend).observe(latency)

    def backend_reload_failed(self, backend: str) -> None:
        """A new version of `backend`'s source was rejected; the last good snapshot stays."""
        self.backend_reload_errors.labels(backend=backend).inc()

    def backend_cleared(self, backend: str) -> None:
        """`backend` dropped its snapshot (its DynamicFile or ConfigMap was deleted)."""
        self.backend_mappings.labels(backend=backend).set(0)

    def backend_rejected_entries(self, backend: str, count: int) -> None:
        """`count` invalid entries were left out of `backend`'s current snapshot."""
        self.backend_rejected.labels(backend=backend).set(count)

    # --- Kubernetes backends and the dynamic backend mode ---

    def configmap_watch_failure(self) -> None:
        """The EKSConfigMap backend failed to list or (re)establish its watch."""
        self.configmap_watch_failures.inc()

    def watch_informer(self, backend: str, informer: InformerCounts) -> None:
        """Export `informer`'s relists, watch restarts and events for `backend` at each scrape."""
        self.informers.informers[backend] = informer

    def crd_status_write(self, *, ok: bool) -> None:
        """authd's controller wrote (or failed to write) one `status.canonicalARN`."""
        self.crd_status_writes.labels(result="ok" if ok else "error").inc()

    def backend_mode_switched(self, modes: Sequence[str]) -> None:
        """The dynamic backend-mode file switched the chain to `modes`.

        Upstream's `dynamic_file_enabled` is set when the chain holds DynamicFile among other
        modes, `dynamic_file_only` when DynamicFile is alone; neither is ever reset.
        """
        if "DynamicFile" in modes:
            if len(modes) == 1:
                self.dynamic_file_only.set(1)
            else:
                self.dynamic_file_enabled.set(1)

    # --- STS and EC2 protection (docs/sts-protection.md) ---

    def _init_protection(self, reg: CollectorRegistry) -> None:
        """authd's series for the identity cache, the STS guard and EC2 lookups, at zero."""
        self.identity_cache_misses = Counter(
            "authd_identity_cache_misses_total",
            "Reviews whose token's identity was not cached (STS is asked).",
            registry=reg,
        )
        self.identity_cache_evictions = Counter(
            "authd_identity_cache_evictions_total",
            "Identities dropped from the cache: size (LRU bound) or expired (token expired).",
            ["cause"],
            registry=reg,
        )
        self.identity_cache_entries = Gauge(
            "authd_identity_cache_entries", "Identities in the cache now.", registry=reg
        )
        self.identity_cache_bytes = Gauge(
            "authd_identity_cache_bytes",
            "Estimated bytes the cached identities hold now (bounded by --identity-cache-bytes).",
            registry=reg,
        )
        self.sts_calls = Counter(
            "authd_sts_calls_total",
            "GetCallerIdentity requests sent, by outcome (ok, rejected, throttled, "
            "unavailable, connection_error).",
            ["outcome"],
            registry=reg,
        )
        self.sts_retries = Counter(
            "authd_sts_retries_total",
            "GetCallerIdentity requests repeated after a connection error, timeout or 5xx.",
            registry=reg,
        )
        self.sts_coalesced_waits = Counter(
            "authd_sts_coalesced_total",
            "Reviews that waited for another review's STS call for the same token.",
            registry=reg,
        )
        self.sts_rate_limited_reviews = Counter(
            "authd_sts_rate_limited_total",
            "Reviews answered 429 because authd's own STS rate limit was exhausted.",
            registry=reg,
        )
        self.ec2_batch_sizes = Histogram(
            "authd_ec2_describe_instances_batch_size",
            "Instance IDs asked for in one DescribeInstances call.",
            buckets=(1, 2, 5, 10, 20, 50, 100),
            registry=reg,
        )
        self.ec2_failures = Counter(
            "authd_ec2_describe_instances_failures_total",
            "DescribeInstances calls that failed (every instance of the batch is refused).",
            registry=reg,
        )
        self.ec2_cache_lookups = Counter(
            "authd_ec2_cache_lookups_total",
            "Private DNS name lookups, by result: hit (cached) or miss (asked EC2).",
            ["result"],
            registry=reg,
        )
        for outcome in STS_CALL_OUTCOMES:
            self.sts_calls.labels(outcome=outcome)
        for cause in ("size", "expired"):
            self.identity_cache_evictions.labels(cause=cause)
        for result in ("hit", "miss"):
            self.ec2_cache_lookups.labels(result=result)

    def identity_cache_hit(self) -> None:
        """A review's token was in the verified-identity cache."""
        self.review_series.cache_hits += 1

    def identity_cache_miss(self) -> None:
        """A review's token was not in the verified-identity cache."""
        self.identity_cache_misses.inc()

    def identity_cache_eviction(self, cause: str) -> None:
        """An identity left the cache: `size` (LRU bound) or `expired`."""
        self._child(self.identity_cache_evictions, cause).inc()

    def watch_identity_cache(
        self, size: Callable[[], int], *, size_bytes: Callable[[], int] | None = None
    ) -> None:
        """Read the cache's entry count from `size`, and its bytes from `size_bytes`, at scrape."""
        self.identity_cache_entries.set_function(size)
        if size_bytes is not None:
            self.identity_cache_bytes.set_function(size_bytes)

    def sts_call(self, outcome: str) -> None:
        """One GetCallerIdentity request ended with `outcome` (one of STS_CALL_OUTCOMES)."""
        self._child(self.sts_calls, outcome).inc()

    def sts_retry(self) -> None:
        """A GetCallerIdentity request is about to be repeated."""
        self.sts_retries.inc()

    def sts_coalesced(self) -> None:
        """A review joined another review's STS call for the same token."""
        self.sts_coalesced_waits.inc()

    def sts_rate_limited(self) -> None:
        """A review was refused by authd's own STS rate limit."""
        self.sts_rate_limited_reviews.inc()

    def ec2_batch(self, size: int) -> None:
        """One DescribeInstances batch asked for `size` instance IDs."""
        self.ec2_batch_sizes.observe(size)

    def ec2_failure(self) -> None:
        """A DescribeInstances call failed."""
        self.ec2_failures.inc()

    def ec2_cache_lookup(self, *, hit: bool) -> None:
        """A private DNS name was looked up: found in the cache or not."""
        self.ec2_cache_lookups.labels(result="hit" if hit else "miss").inc()

    # --- fake-token floods: STS lanes and remembered denials (docs/SECURITY.md) ---

    def _init_flood(self, reg: CollectorRegistry) -> None:
        """authd's series for the STS lanes and the denial caches, at zero."""
        self.sts_lane_requests = Counter(
            "authd_sts_lane_requests_total",
            "GetCallerIdentity requests by the share of the STS allowance they drew from: "
            "reserved (access keys STS accepted within the hour) or open (any key).",
            ["lane"],
            registry=reg,
        )
        self.sts_proven_keys = Gauge(
            "authd_sts_proven_access_keys",
            "Access key IDs STS accepted within the last hour (they may use the reserved lane).",
            registry=reg,
        )
        self.sts_denial_hits = Counter(
            "authd_sts_denial_cache_hits_total",
            "Reviews refused from a remembered STS denial, without an STS call: token (the "
            "same token was denied) or access_key (STS said the access key does not exist).",
            ["kind"],
            registry=reg,
        )
        self.sts_denial_entries = Gauge(
            "authd_sts_denial_cache_entries",
            "Remembered STS denials now: token or access_key.",
            ["kind"],
            registry=reg,
        )
        for lane in STS_LANES:
            self.sts_lane_requests.labels(lane=lane)
        for kind in DENIAL_KINDS:
            self.sts_denial_hits.labels(kind=kind)
            self.sts_denial_entries.labels(kind=kind)

    def sts_lane_request(self, lane: str) -> None:
        """A GetCallerIdentity request drew from `lane` (one of STS_LANES)."""
        self._child(self.sts_lane_requests, lane).inc()

    def sts_denial_hit(self, kind: str) -> None:
        """A review was refused from a remembered denial of `kind` (one of DENIAL_KINDS)."""
        self.sts_denial_hits.labels(kind=kind).inc()

    def watch_sts_flood_state(
        self, *, proven_keys: Callable[[], int], denials: Callable[[str], int]
    ) -> None:
        """Read the proven-key count and each denial cache's size at each scrape."""
        self.sts_proven_keys.set_function(proven_keys)
        for kind in DENIAL_KINDS:
            self.sts_denial_entries.labels(kind=kind).set_function(
                lambda kind=kind: denials(kind)  # type: ignore[misc]
            )

    # --- the process's own footing: state-dir permissions, dropped log lines ---

    def _init_runtime(self, reg: CollectorRegistry) -> None:
        """authd's series for loose state files and dropped log lines, at zero."""
        self.state_files_loose = Gauge(
            "authd_state_files_loose",
            "1 when a state-dir file (key, state_dir) can be read or changed by others "
            "(a warning at start says how to fix it).",
            ["file"],
            registry=reg,
        )
        for name in STATE_FILES:
            self.state_files_loose.labels(file=name).set(0)
        self.certificate_expiry = Gauge(
            "authd_serving_certificate_expiry_timestamp_seconds",
            "Unix time at which the webhook's serving certificate (the state dir's cert.pem, "
            "read at start) expires; 0 if its date could not be read.",
            registry=reg,
        )
        self.log_drops = CallbackCounter(
            "authd_log_lines_dropped",
            "Log lines dropped because the log writer could not keep up (stderr or journald "
            "stalled and its queue was full).",
        )
        reg.register(self.log_drops)

    def state_files(self, loose: Iterable[str]) -> None:
        """Mark the state-dir files in `loose` (names from STATE_FILES) as readable or
        changeable by others."""
        found = set(loose)
        for name in STATE_FILES:
            self.state_files_loose.labels(file=name).set(1 if name in found else 0)

    def serving_certificate(self, expires_at: float) -> None:
        """The serving certificate loaded at start expires at `expires_at` (Unix time)."""
        self.certificate_expiry.set(expires_at)

    def watch_log_drops(self, read: Callable[[], int]) -> None:
        """Read the count of dropped log lines from `read` at each scrape."""
        self.log_drops.read = read

    # --- exposition ---

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition (format 0.0.4) and its Content-Type.

        `*_created` samples are left out: upstream's Go client has none, and scrapers that
        do not expect them would store them as extra series.
        """
        return generate_latest(WithoutCreated(self.registry)), CONTENT_TYPE_PLAIN_0_0_4
