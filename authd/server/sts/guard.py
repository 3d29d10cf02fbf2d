"""Put STS behind a cache, single flight, a rate limit, bounded retries and cluster-ID rotation.

The layer between the authenticator and `authd.server.sts.client.StsClient`. For a token
that passed the local checks, `StsGuard.identify`:

1. shares the call with any review of the same token already asking STS (single flight);
2. asks STS with the current cluster ID, then with each older one while STS answers 403
   (rotation: the token does not say which ID it was signed for);
3. takes a token from the bucket before every request it sends; an empty bucket ends the
   review with `StsThrottledError` whose `retry_after` is the wait until a token is free;
4. retries connection errors, timeouts and 5xx answers with full-jitter exponential backoff,
   all inside one deadline (`--sts-timeout`), which no attempt or backoff may pass;
5. caches the identity with the cluster ID that worked, until the token expires.

`cached` answers a repeat of a known token without any of this. Every request sent and every
outcome is counted (upstream's `sts_*` series and authd's own).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import trio

from authd.config import ServerSettings
from authd.errors import StsError, StsRejectedError, StsThrottledError, StsUnavailableError
from authd.identity import Identity
from authd.metrics import Metrics
from authd.server.ratelimit import TokenBucket
from authd.server.sts.client import StsClient
from authd.server.sts.identitycache import (
    DEFAULT_MAX_BYTES,
    CachedIdentity,
    IdentityCache,
    SingleFlight,
)
from authd.token import PresignedRequest


@dataclass(frozen=True, slots=True, kw_only=True)
class StsProtection:
    """How STS is protected; defaults are those of authd 1 in docs/upstream-compat.md.

    Attributes:
        timeout: seconds for one review's STS work, retries and rotation included.
        qps: STS requests a second the bucket allows on average.
        burst: STS requests the bucket allows at once.
        cache_size: verified identities kept (LRU); 0 disables the cache.
        cache_bytes: estimated bytes those identities may hold (LRU); 0 disables the cache.
        attempts: requests per cluster ID at most (the first plus retries).
        backoff: the first retry's backoff ceiling, seconds; it doubles per retry.
        backoff_cap: the largest backoff ceiling, seconds.
    """

    timeout: float = 10.0
    qps: float = 50.0
    burst: int = 100
    cache_size: int = 100_000
    cache_bytes: int = DEFAULT_MAX_BYTES
    attempts: int = 3
    backoff: float = 0.1
    backoff_cap: float = 1.0

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> StsProtection:
        """The server's flags and config keys (`--sts-timeout`, `--sts-qps`, ...)."""
        return cls(
            timeout=settings.sts_timeout,
            qps=settings.sts_qps,
            burst=settings.sts_burst,
            cache_size=settings.identity_cache_size,
            cache_bytes=settings.identity_cache_bytes,
        )

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, not {self.timeout}")
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")


def is_retryable(exc: StsError) -> bool:
    """Connection errors, timeouts (no status) and 5xx may succeed on a second try.

    A 3xx, an unreadable 200 and every 4xx would come back the same, and retrying a
    throttled call only adds load to a service that asked for less.
    """
    return isinstance(exc, StsUnavailableError) and (exc.status is None or exc.status >= 500)


class StsGuard:
    """Verified identities for presigned requests, asking STS as rarely and gently as it can."""

    def __init__(
        self,
        *,
        sts: StsClient,
        cluster_ids: Sequence[str],
        metrics: Metrics,
        protection: StsProtection | None = None,
        limiter: TokenBucket | None = None,
        jitter: Callable[[float], float] | None = None,
    ) -> None:
        """Build the guard; it must be used inside one `trio.run` (its clock is trio's).

        Args:
            sts: the adapter that sends one GetCallerIdentity request.
            cluster_ids: current ID first, then IDs still accepted during a rotation.
            metrics: where calls, cache use and refusals are counted.
            protection: limits and sizes; defaults when None.
            limiter: the bucket in front of STS; one from `protection` when None.
            jitter: ceiling -> backoff seconds; uniform in [0, ceiling] when None.

        Raises:
            ValueError: no cluster ID.
        """
        if not cluster_ids:
            raise ValueError("cluster ID cannot be empty")
        self._sts = sts
        self._cluster_ids = tuple(cluster_ids)
        self._metrics = metrics
        self.protection = protection = protection or StsProtection()
        self._limiter = limiter or TokenBucket(rate=protection.qps, burst=protection.burst)
        self._jitter = jitter or (lambda ceiling: random.uniform(0.0, ceiling))  # noqa: S311
        self.cache = IdentityCache(
            max_entries=protection.cache_size,
            max_bytes=protection.cache_bytes,
            on_evict=metrics.identity_cache_eviction,
        )
        metrics.watch_identity_cache(self.cache.__len__, size_bytes=lambda: self.cache.size_bytes)
        self._flights: SingleFlight[bytes, CachedIdentity] = SingleFlight(
            on_join=metrics.sts_coalesced
        )

    @property
    def cluster_ids(self) -> tuple[str, ...]:
        """The cluster IDs STS is asked with, in order."""
        return self._cluster_ids

    def cached(self, key: bytes, *, now: datetime) -> CachedIdentity | None:
        """The cached identity of the token named `key`, if still valid at `now`; counted."""
        entry = self.cache.get(key, now=now)
        if entry is None:
            self._metrics.identity_cache_miss()
        else:
            self._metrics.identity_cache_hit()
        return entry

    async def identify(
        self, key: bytes, request: PresignedRequest, *, now: datetime
    ) -> CachedIdentity:
        """Ask STS who signed `request` (the token named `key`, checked at `now`); cache it.

        Raises:
            StsThrottledError: the bucket is empty (`retry_after` says how long to wait), or
                STS answered Throttling.
            StsRejectedError: STS refused the token under every cluster ID (or once, for a
                4xx other than 403).
            StsUnavailableError: no usable answer before the deadline, after retries.
        """
        return await self._flights.run(key, lambda: self._ask(key, request, now))

    async def _ask(self, key: bytes, request: PresignedRequest, now: datetime) -> CachedIdentity:
        # A review that waited on a flight whose leader was cancelled leads a new one; another
        # flight may have stored the answer meanwhile, so look again before sending anything.
        entry = self.cache.get(key, now=now)
        if entry is not None:
            return entry
        deadline = trio.current_time() + self.protection.timeout
        last = len(self._cluster_ids) - 1
        for index, cluster_id in enumerate(self._cluster_ids):
            try:
                identity = await self._with_retries(request, cluster_id, deadline)
            except StsRejectedError as exc:
                # Only a refused signature can be cured by another cluster ID; a bad ARN
                # or UserId in a 200 answer would be the same under every ID.
                if exc.status != 403 or index == last:
                    raise
                continue
            entry = CachedIdentity(
                identity=identity, cluster_id=cluster_id, expires_at=request.expires_at
            )
            self.cache.put(key, entry)
            return entry
        raise AssertionError("unreachable: cluster_ids is never empty")

    async def _with_retries(
        self, request: PresignedRequest, cluster_id: str, deadline: float
    ) -> Identity:
        """Send the request, retrying transient failures while the deadline allows."""
        attempts = self.protection.attempts
        for attempt in range(attempts):
            self._take_token()
            # Split what is left among the attempts still allowed, so a hung first attempt
            # cannot use up the whole deadline.
            budget = (deadline - trio.current_time()) / (attempts - attempt)
            try:
                return await self._attempt(request, cluster_id, budget)
            except StsUnavailableError as exc:
                if not is_retryable(exc) or attempt == attempts - 1:
                    raise
                ceiling = min(self.protection.backoff_cap, self.protection.backoff * 2**attempt)
                pause = self._jitter(ceiling)
                if trio.current_time() + pause >= deadline:
                    raise
                self._metrics.sts_retry()
                await trio.sleep(pause)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _attempt(self, request: PresignedRequest, cluster_id: str, budget: float) -> Identity:
        """One request, given at most `budget` seconds; counted in every STS series."""
        region = request.region_label
        with trio.move_on_after(max(budget, 0.0)) as scope:
            try:
                identity = await self._sts.get_caller_identity(request, cluster_id=cluster_id)
            except StsError as exc:
                self._count_failure(exc, region)
                raise
            self._metrics.sts_response(200, region)
            self._metrics.sts_call("ok")
            return identity
        del scope  # only reached when the budget ran out
        self._metrics.sts_connection_failure(region)
        self._metrics.sts_call("connection_error")
        raise StsUnavailableError(
            f"error during GET: no answer within {budget:.3g}s on {region} endpoint"
        )

    def _count_failure(self, exc: StsError, region: str) -> None:
        if exc.status is None:
            self._metrics.sts_connection_failure(region)
            self._metrics.sts_call("connection_error")
            return
        self._metrics.sts_response(exc.status, region)
        if isinstance(exc, StsThrottledError):
            self._metrics.sts_throttled(region)
            self._metrics.sts_call("throttled")
        elif isinstance(exc, StsRejectedError):
            self._metrics.sts_call("rejected")
        else:
            self._metrics.sts_call("unavailable")

    def _take_token(self) -> None:
        """Take a token from the bucket, or refuse the review with how long to wait."""
        wait = self._limiter.try_acquire()
        if wait > 0:
            self._metrics.sts_rate_limited()
            raise StsThrottledError(
                f"authd's STS rate limit ({self._limiter.rate:g}/s, burst {self._limiter.burst})"
                f" is exhausted; a request is free in {wait:.3f}s",
                retry_after=max(1.0, math.ceil(wait)),
            )
