"""Put STS behind a cache, single flight, a rate limit, bounded retries and cluster-ID rotation.

The layer between the authenticator and `authd.server.sts.client.StsClient`. For a token
that passed the local checks, `StsGuard.identify`:

1. refuses at once a token STS refused before, or a credential STS said does not exist
   (`authd.server.sts.denials`);
2. shares the call with any review of the same token already asking STS (single flight);
3. asks STS with the current cluster ID, then with each older one while STS answers 403
   `SignatureDoesNotMatch` (rotation: the token does not say which ID it was signed for);
4. takes a request from the allowance before every request it sends: an access key STS
   accepted within the hour draws from the reserved lane first, any other only from the open
   lane (`authd.server.sts.lanes`); an empty lane ends the review with `StsThrottledError`
   whose `retry_after` is the wait until a request is free;
5. retries connection errors, timeouts and 5xx answers with full-jitter exponential backoff,
   all inside one deadline (`--sts-timeout`), which no attempt or backoff may pass; a name that
   does not resolve or an error of authd's own client is not retried;
6. caches the identity with the cluster ID that worked, until the token expires, and marks
   its access key proven; or remembers a definitive denial, and drops the key from the proven.

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
from authd.server.sts.client import StsClient
from authd.server.sts.denials import (
    UNKNOWN_CREDENTIAL,
    DeniedCredentials,
    DeniedTokens,
    credential_key,
)
from authd.server.sts.identitycache import (
    DEFAULT_MAX_BYTES,
    CachedIdentity,
    IdentityCache,
    SingleFlight,
)
from authd.server.sts.lanes import ProvenKeys, StsAllowance
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
        reserved_share: the share of `qps` and `burst` only proven access keys may use.
        proven_keys: access key IDs remembered as proven, at most.
        proven_bytes: bytes those keys may take, at most.
        denied_tokens: tokens STS refused, remembered at most (until each expires).
        denied_credentials: credentials STS does not know, remembered at most (60 s each).
    """

    timeout: float = 10.0
    qps: float = 50.0
    burst: int = 100
    cache_size: int = 100_000
    cache_bytes: int = DEFAULT_MAX_BYTES
    attempts: int = 3
    backoff: float = 0.1
    backoff_cap: float = 1.0
    reserved_share: float = 0.5
    proven_keys: int = 10_000
    proven_bytes: int = 1 << 20
    denied_tokens: int = 50_000
    denied_credentials: int = 10_000

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> StsProtection:
        """The server's flags and config keys (`--sts-timeout`, `--sts-qps`, ...)."""
        return cls(
            timeout=settings.sts_timeout,
            qps=settings.sts_qps,
            burst=settings.sts_burst,
            cache_size=settings.identity_cache_size,
            cache_bytes=settings.identity_cache_bytes,
            reserved_share=settings.sts_reserved_share,
        )

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, not {self.timeout}")
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")


def is_retryable(exc: StsError) -> bool:
    """Connection errors, timeouts (no status) and 5xx may succeed on a second try.

    A 3xx, an unreadable 200 and every 4xx would come back the same, and retrying a
    throttled call only adds load to a service that asked for less; a name that does not
    resolve and an error of authd's own client (`exc.retryable` false) would fail again.
    """
    return (
        isinstance(exc, StsUnavailableError)
        and exc.retryable
        and (exc.status is None or exc.status >= 500)
    )


def is_rotatable(exc: StsRejectedError) -> bool:
    """Whether another cluster ID could cure this refusal: only a signature STS did not match.

    An unknown key, an expired session or a bad answer would be the same under every ID. A 403
    naming no code (a proxy's page, say) is tried again, as before codes were read.
    """
    return exc.status == 403 and exc.code in ("SignatureDoesNotMatch", "")


class StsGuard:
    """Verified identities for presigned requests, asking STS as rarely and gently as it can."""

    def __init__(
        self,
        *,
        sts: StsClient,
        cluster_ids: Sequence[str],
        metrics: Metrics,
        protection: StsProtection | None = None,
        allowance: StsAllowance | None = None,
        jitter: Callable[[float], float] | None = None,
    ) -> None:
        """Build the guard; it must be used inside one `trio.run` (its clock is trio's).

        Args:
            sts: the adapter that sends one GetCallerIdentity request.
            cluster_ids: current ID first, then IDs still accepted during a rotation.
            metrics: where calls, cache use and refusals are counted.
            protection: limits and sizes; defaults when None.
            allowance: the rate limit's two lanes in front of STS; from `protection` when None.
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
        self._allowance = allowance or StsAllowance(
            rate=protection.qps, burst=protection.burst, reserved_share=protection.reserved_share
        )
        self.proven = ProvenKeys(
            max_entries=protection.proven_keys, max_bytes=protection.proven_bytes
        )
        self.denied_tokens = DeniedTokens(max_entries=protection.denied_tokens)
        self.denied_credentials = DeniedCredentials(max_entries=protection.denied_credentials)
        self._jitter = jitter or (lambda ceiling: random.uniform(0.0, ceiling))  # noqa: S311
        self.cache = IdentityCache(
            max_entries=protection.cache_size,
            max_bytes=protection.cache_bytes,
            on_evict=metrics.identity_cache_eviction,
        )
        metrics.watch_identity_cache(self.cache.__len__, size_bytes=lambda: self.cache.size_bytes)
        metrics.watch_sts_flood_state(proven_keys=self.proven.__len__, denials=self._denials)
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
                refusal another ID cannot cure), now or earlier (remembered).
            StsUnavailableError: no usable answer before the deadline, after retries.
        """
        self._refuse_remembered(key, request, now)
        return await self._flights.run(key, lambda: self._ask(key, request, now))

    def _refuse_remembered(self, key: bytes, request: PresignedRequest, now: datetime) -> None:
        """Raise the denial STS gave this token, or this credential, if it is remembered."""
        code = self.denied_tokens.get(key, now=now)
        if code is not None:
            self._metrics.sts_denial_hit("token")
            raise StsRejectedError(
                f"STS refused this token before ({code}); remembered until it expires", code=code
            )
        credential = credential_key(request.access_key_id, request.session_token)
        if self.denied_credentials.denied(credential, now=trio.current_time()):
            self._metrics.sts_denial_hit("access_key")
            raise StsRejectedError(
                f"STS said less than {self.denied_credentials.ttl:g}s ago that access key"
                f" {request.access_key_id} does not exist ({UNKNOWN_CREDENTIAL})",
                code=UNKNOWN_CREDENTIAL,
            )

    def _remember_denial(
        self, key: bytes, request: PresignedRequest, exc: StsRejectedError
    ) -> None:
        """Keep a definitive denial, and stop treating its access key as proven."""
        self.denied_tokens.put(key, code=exc.code, expires_at=request.expires_at)
        if exc.code == UNKNOWN_CREDENTIAL:
            credential = credential_key(request.access_key_id, request.session_token)
            self.denied_credentials.put(credential, now=trio.current_time())
        if exc.status is not None and 400 <= exc.status < 500:
            self.proven.forget(request.access_key_id)

    def _denials(self, kind: str) -> int:
        """Entries of the denial cache of `kind` (`token` or `access_key`), for /metrics."""
        return len(self.denied_tokens if kind == "token" else self.denied_credentials)

    async def _ask(self, key: bytes, request: PresignedRequest, now: datetime) -> CachedIdentity:
        # A review that waited on a flight whose leader was cancelled leads a new one; another
        # flight may have stored the answer meanwhile, so look again before sending anything.
        entry = self.cache.get(key, now=now)
        if entry is not None:
            return entry
        started = trio.current_time()
        deadline = started + self.protection.timeout
        proven = self.proven.proven(request.access_key_id, now=started)
        last = len(self._cluster_ids) - 1
        for index, cluster_id in enumerate(self._cluster_ids):
            try:
                identity = await self._with_retries(request, cluster_id, deadline, proven=proven)
            except StsRejectedError as exc:
                # Only a refused signature can be cured by another cluster ID; a bad ARN
                # or UserId in a 200 answer, or an unknown key, would be the same under every ID.
                if not is_rotatable(exc) or index == last:
                    self._remember_denial(key, request, exc)
                    raise
                continue
            entry = CachedIdentity(
                identity=identity, cluster_id=cluster_id, expires_at=request.expires_at
            )
            self.cache.put(key, entry, now=now)
            self.proven.add(request.access_key_id, now=trio.current_time())
            return entry
        raise AssertionError("unreachable: cluster_ids is never empty")

    async def _with_retries(
        self, request: PresignedRequest, cluster_id: str, deadline: float, *, proven: bool
    ) -> Identity:
        """Send the request, retrying transient failures while the deadline allows."""
        attempts = self.protection.attempts
        for attempt in range(attempts):
            self._take_token(proven=proven)
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

    def _take_token(self, *, proven: bool) -> None:
        """Take a request from a lane the key may use, or refuse the review with the wait."""
        lane, wait = self._allowance.try_acquire(proven=proven)
        if wait > 0:
            self._metrics.sts_rate_limited()
            allowance = self._allowance
            share = (
                f"; {allowance.open_rate:g}/s open to unproven access keys"
                if allowance.reserved_share and not proven
                else ""
            )
            raise StsThrottledError(
                f"authd's STS rate limit ({allowance.rate:g}/s, burst {allowance.burst}{share})"
                f" is exhausted; a request is free in {wait:.3f}s",
                retry_after=max(1.0, math.ceil(wait)),
            )
        self._metrics.sts_lane_request(lane)
