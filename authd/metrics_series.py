"""Series that authd builds at scrape time instead of updating per event.

The review path is single-threaded and hot: the four series every review updates are plain
numbers here, turned into samples only when /metrics is read (`ReviewSeries`); the Kubernetes
informers' counters and the log writer's drops are read the same way. `WithoutCreated` drops
the `*_created` samples upstream's Go client never exposes. `authd.metrics.Metrics` owns them.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from authd.names import KUBE_BACKENDS
from authd.outcomes import BY_REASON

NAMESPACE = "aws_iam_authenticator"
# Go client's prometheus.DefBuckets (Python's defaults differ: they add .075, .75 and 7.5).
GO_DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Reviews are answered from cache in microseconds and by STS in tens of milliseconds.
REVIEW_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
NO_BACKEND = "none"


class InformerCounts(Protocol):
    """What `watch_informer` reads from an informer at each scrape."""

    relists: int
    watch_restarts: int
    events: int


class InformerSeries(Collector):
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


class ReviewSeries(Collector):
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


class WithoutCreated(Collector):
    """A registry view whose families carry no `_created` samples."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        """The registry's families, each filtered (they are fresh copies, safe to change)."""
        for family in self._registry.collect():
            family.samples = _drop_created(family.samples)
            yield family


class CallbackCounter(Collector):
    """One unlabeled counter whose value is read from a callable at scrape time."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.read: Callable[[], int] = lambda: 0
        # (name, type, labels, help), as `ReviewSeries.FAMILIES`, for the reference page.
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
