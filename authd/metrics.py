"""authd's Prometheus metrics: one object owning its registry, methods named for what happened.

Upstream's series keep their exact names, types, labels, buckets and help strings
(metrics in docs/upstream-compat.md) so existing dashboards and alerts keep working. authd's own
series use the `authd_` prefix, label `backend` where per backend and `reason` where per review
outcome (authd 4 and 6 in docs/upstream-compat.md). Series that a dashboard should see at zero from
the start (upstream's unlabeled counters and gauges, and authd's decision/reason pairs) are created
up front.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

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
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from authd.names import BACKEND_MODES
from authd.outcomes import BY_REASON

__all__ = [
    "BACKENDS",
    "Metrics",
]

NAMESPACE = "aws_iam_authenticator"

# Go client's prometheus.DefBuckets (Python's defaults differ: they add .075, .75 and 7.5).
GO_DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
E2E_BUCKETS = (1.0, 3.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0)
# Reviews are answered from cache in microseconds and by STS in tens of milliseconds.
REVIEW_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# A file change is applied in tens of milliseconds; seconds mean a large file or a slow disk.
RELOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

BACKENDS = BACKEND_MODES
KUBE_BACKENDS = ("EKSConfigMap", "CRD")
STS_CALL_OUTCOMES = ("ok", "rejected", "throttled", "unavailable", "connection_error")
NO_BACKEND = "none"
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
        reg = self.registry
        ns = NAMESPACE
        # --- upstream (metrics in docs/upstream-compat.md) ---
        # Every review touches these; they are plain numbers turned into samples at scrape time
        # (`_ReviewSeries`): upstream's authenticate_latency_seconds{result}, and authd's
        # authd_reviews_total{decision,reason}, authd_review_latency_seconds{backend,decision}
        # and authd_identity_cache_hits_total.
        self.review_series = _ReviewSeries()
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
        self.informers = _InformerSeries()
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
        self.sts_responses.labels(ResponseCode=str(code), StsRegion=region).inc()

    def sts_connection_failure(self, region: str) -> None:
        """An STS call got no answer: connection error or timeout."""
        self.sts_connection_failures.labels(StsRegion=region).inc()

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
        self.identity_cache_evictions.labels(cause=cause).inc()

    def watch_identity_cache(
        self, size: Callable[[], int], *, size_bytes: Callable[[], int] | None = None
    ) -> None:
        """Read the cache's entry count from `size`, and its bytes from `size_bytes`, at scrape."""
        self.identity_cache_entries.set_function(size)
        if size_bytes is not None:
            self.identity_cache_bytes.set_function(size_bytes)

    def sts_call(self, outcome: str) -> None:
        """One GetCallerIdentity request ended with `outcome` (one of STS_CALL_OUTCOMES)."""
        self.sts_calls.labels(outcome=outcome).inc()

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
        self.sts_lane_requests.labels(lane=lane).inc()

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
        self.log_drops = _CallbackCounter(
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

    def watch_log_drops(self, read: Callable[[], int]) -> None:
        """Read the count of dropped log lines from `read` at each scrape."""
        self.log_drops.read = read

    # --- exposition ---

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition (format 0.0.4) and its Content-Type.

        `*_created` samples are left out: upstream's Go client has none, and scrapers that
        do not expect them would store them as extra series.
        """
        return generate_latest(_WithoutCreated(self.registry)), CONTENT_TYPE_PLAIN_0_0_4


class InformerCounts(Protocol):
    """What `watch_informer` reads from an informer at each scrape."""

    relists: int
    watch_restarts: int
    events: int


class _InformerSeries(Collector):
    """authd_kube_relists_total, authd_kube_watch_restarts_total and authd_kube_events_total
    per Kubernetes backend, read from the informers' own counters when scraped."""

    FAMILIES = (
        ("authd_kube_relists", "relists", "Lists of a Kubernetes backend's collection after the "
         "first (after 410 Gone, or to recover from a failed list)."),
        ("authd_kube_watch_restarts", "watch_restarts", "Watches of a Kubernetes backend's "
         "collection opened after the first (server timeouts, dropped or stalled streams)."),
        ("authd_kube_events", "events", "ADDED, MODIFIED and DELETED watch events applied by a "
         "Kubernetes backend."),
    )  # fmt: skip

    def __init__(self) -> None:
        self.informers: dict[str, InformerCounts] = {}

    @classmethod
    def reference(cls) -> list[tuple[str, str, tuple[str, ...], str]]:
        """(name, type, labels, help) of each family, for docs/metrics.md."""
        return [(f"{name}_total", "counter", ("backend",), text) for name, _, text in cls.FAMILIES]

    def describe(self) -> Iterator[Metric]:
        """The families, without samples."""
        for name, _, text in self.FAMILIES:
            yield CounterMetricFamily(name, text, labels=["backend"])

    def collect(self) -> Iterator[Metric]:
        """One sample per backend and family (zero for a kube backend not running)."""
        for name, attr, text in self.FAMILIES:
            family = CounterMetricFamily(name, text, labels=["backend"])
            for backend in KUBE_BACKENDS:
                informer = self.informers.get(backend)
                family.add_metric([backend], getattr(informer, attr) if informer else 0)
            yield family


class _Observed:
    """One label set's reviews: how many, their total seconds, and per-bucket counts for the
    upstream (Go default) and authd (REVIEW_BUCKETS) bounds; the last bucket is +Inf."""

    __slots__ = ("count", "go_buckets", "labels", "review_buckets", "total")

    def __init__(self, labels: tuple[str, str, str, str]) -> None:
        self.labels = labels  # result, decision, reason, backend
        self.count = 0
        self.total = 0.0
        self.go_buckets = [0] * (len(GO_DEFAULT_BUCKETS) + 1)
        self.review_buckets = [0] * (len(REVIEW_BUCKETS) + 1)


_Families = tuple[
    HistogramMetricFamily, CounterMetricFamily, HistogramMetricFamily, CounterMetricFamily
]


class _ReviewSeries(Collector):
    """The series every review updates, kept as plain numbers and turned into samples when
    scraped: upstream's authenticate_latency_seconds{result}, authd_reviews_total{decision,
    reason} (every pair of authd 4 in docs/upstream-compat.md at zero from the start),
    authd_review_latency_seconds{backend,decision} and authd_identity_cache_hits_total.

    prometheus_client's metrics take a lock and check their state on each observation: four of
    them per review cost about 25 us of the daemon's CPU per review under load (an A/B run:
    258 vs 233 us; docs/sts-protection.md).
    Reviews are counted on the daemon's one trio thread, so plain numbers need no lock.
    /metrics is rendered in a worker thread: `collect` copies the label sets in one step
    (atomic under the GIL) and reads each one's numbers, which at worst miss a review that
    is being counted at that instant; the next scrape has it.
    """

    FAMILIES = (
        (
            f"{NAMESPACE}_authenticate_latency_seconds",
            "histogram",
            ("result",),
            "Authenticate call latency",
        ),
        (
            "authd_reviews_total",
            "counter",
            ("decision", "reason"),
            "TokenReviews answered, by decision (allow, deny, retry) and reason code.",
        ),
        (
            "authd_review_latency_seconds",
            "histogram",
            ("backend", "decision"),
            "Seconds from request to answer of a TokenReview, by mapping backend and decision.",
        ),
        (
            "authd_identity_cache_hits_total",
            "counter",
            (),
            "Reviews whose token's identity was in the verified-identity cache.",
        ),
    )

    def __init__(self) -> None:
        self.cache_hits = 0
        self._observed: dict[tuple[str, str | None, str | None, str | None], _Observed] = {}

    def observe(
        self,
        *,
        reason: str,
        seconds: float,
        backend: str | None,
        decision: str | None,
        result: str | None,
    ) -> None:
        """Count one review (see `Metrics.observe_review`).

        Raises:
            KeyError: an unknown reason with no explicit decision and result.
        """
        key = (reason, backend, decision, result)
        observed = self._observed.get(key)
        if observed is None:
            labels = (
                result or BY_REASON[reason].result,
                decision or BY_REASON[reason].decision,
                reason,
                backend or NO_BACKEND,
            )
            observed = self._observed[key] = _Observed(labels)
        observed.count += 1
        observed.total += seconds
        observed.go_buckets[bisect.bisect_left(GO_DEFAULT_BUCKETS, seconds)] += 1
        observed.review_buckets[bisect.bisect_left(REVIEW_BUCKETS, seconds)] += 1

    def describe(self) -> Iterator[Metric]:
        """The families, without samples (for the registry's duplicate-name check)."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        """The families with a sample set per label set seen (and the zeros
        authd 6 in docs/upstream-compat.md asks for).
        """
        upstream, reviews, latency, hits = self._families()
        by_result: dict[str, list[_Observed]] = {}
        by_backend: dict[tuple[str, str], list[_Observed]] = {}
        counts = {(o.decision, reason): 0 for reason, o in BY_REASON.items()}
        for observed in list(self._observed.values()):
            result, decision, reason, backend = observed.labels
            by_result.setdefault(result, []).append(observed)
            by_backend.setdefault((backend, decision), []).append(observed)
            counts[decision, reason] = counts.get((decision, reason), 0) + observed.count
        for result, group in by_result.items():
            _add_histogram(upstream, [result], group, GO_DEFAULT_BUCKETS, "go_buckets")
        for (decision, reason), count in counts.items():
            reviews.add_metric([decision, reason], count)
        for (backend, decision), group in by_backend.items():
            _add_histogram(latency, [backend, decision], group, REVIEW_BUCKETS, "review_buckets")
        hits.add_metric([], self.cache_hits)
        yield from (upstream, reviews, latency, hits)

    def _families(self) -> _Families:
        """Fresh, empty families, in FAMILIES order."""
        (upstream, reviews, latency, hits) = self.FAMILIES
        return (
            HistogramMetricFamily(upstream[0], upstream[3], labels=upstream[2]),
            CounterMetricFamily(reviews[0], reviews[3], labels=reviews[2]),
            HistogramMetricFamily(latency[0], latency[3], labels=latency[2]),
            CounterMetricFamily(hits[0], hits[3], labels=hits[2]),
        )


def _add_histogram(
    family: HistogramMetricFamily,
    labels: list[str],
    group: list[_Observed],
    bounds: Sequence[float],
    field: str,
) -> None:
    """Add one label set's histogram, summing `group`'s per-bucket counts into cumulative ones."""
    per_bucket = [0] * (len(bounds) + 1)
    for observed in group:
        for index, count in enumerate(getattr(observed, field)):
            per_bucket[index] += count
    cumulative, buckets = 0, []
    for bound, count in zip([*map(floatToGoString, bounds), "+Inf"], per_bucket, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    family.add_metric(labels, buckets, sum(observed.total for observed in group))


class _WithoutCreated(Collector):
    """A registry view whose families carry no `_created` samples."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        """The registry's families, each filtered (they are fresh copies, safe to change)."""
        for family in self._registry.collect():
            family.samples = _drop_created(family.samples)
            yield family


class _CallbackCounter(Collector):
    """One unlabeled counter whose value is read from a callable at scrape time."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.read: Callable[[], int] = lambda: 0
        # (name, type, labels, help), as `_ReviewSeries.FAMILIES`, for the reference page.
        self.FAMILIES = ((f"{name}_total", "counter", (), documentation),)

    def describe(self) -> Iterator[Metric]:
        """The family, for the registry's duplicate check."""
        yield CounterMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[Metric]:
        """The counter's current value."""
        yield CounterMetricFamily(self.name, self.documentation, value=self.read())


def _drop_created(samples: Iterable[Sample]) -> list[Sample]:
    """`samples` without those named `*_created`."""
    return [s for s in samples if not s.name.endswith("_created")]
