"""One review's work, without HTTP: verify the token, ask STS who signed it, map the identity.

STS is asked through `authd.server.sts.guard.StsGuard`, so a token already verified is answered from
its cache, and the mapping always runs (a mapping change applies to the next review).

The identity STS reports goes into the caller's log fields as soon as it is known, so the one
log line per review names who was refused and why, even when mapping fails.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from authd import token as tokens
from authd.identity import Identity, User
from authd.mapping.chain import MapperChain, PrivateDnsResolver
from authd.metrics import Metrics
from authd.server.sts.client import StsClient
from authd.server.sts.guard import StsGuard, StsProtection
from authd.server.sts.identitycache import token_key
from authd.token import EndpointPolicy


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """An authenticated review: the Kubernetes user, who STS said signed, and the backend."""

    user: User
    identity: Identity
    backend: str


def utc_now() -> datetime:
    """The real clock; tests inject their own."""
    return datetime.now(UTC)


class Authenticator:
    """Turns a bearer token into a `Verdict`, or raises the `AuthdError` that says why not.

    STS is reached only through `StsGuard` (cache, single flight, rate limit, retries,
    cluster-ID rotation; docs/sts-protection.md). A token seen before is answered from the
    cache without re-running the local checks: they are a pure function of the token and the
    time, and the cache entry expires exactly when the token does (C16).
    """

    def __init__(
        self,
        *,
        policy: EndpointPolicy,
        sts: StsClient,
        chain: MapperChain,
        cluster_ids: Sequence[str],
        metrics: Metrics,
        clock: Callable[[], datetime] = utc_now,
        protection: StsProtection | None = None,
        resolve_private_dns: PrivateDnsResolver | None = None,
    ) -> None:
        """Wire the review steps.

        Args:
            protection: STS cache, rate limit, retries and deadline; the defaults of
                authd 1 in docs/upstream-compat.md when None.
            resolve_private_dns: instance ID -> private DNS name for `{{EC2PrivateDNSName}}`
                (`authd.server.ec2`); such templates are refused when None.

        Raises:
            ValueError: no cluster ID.
        """
        if not cluster_ids:
            raise ValueError("cluster ID cannot be empty")
        self._policy = policy
        self._chain = chain
        self._clock = clock
        self._resolve_private_dns = resolve_private_dns
        self._guard = StsGuard(
            sts=sts, cluster_ids=cluster_ids, metrics=metrics, protection=protection
        )

    async def authenticate(
        self, token: str, *, log_fields: dict[str, object] | None = None
    ) -> Verdict:
        """Verify `token` and map its signer.

        `log_fields`, when given, receives who STS said signed (arn, accesskeyid, accountid,
        userid, session) as soon as it is known, so the review's log line names the caller
        even when mapping then refuses it.

        Raises:
            TokenFormatError: a local check failed; no network request was made.
            StsError: STS refused, throttled, or could not be reached.
            MappingError: the identity is verified but no backend gives it a user.
        """
        now = self._clock()
        key = token_key(token)
        entry = self._guard.cached(key, now=now)
        if entry is None:
            request = tokens.verify(token, now=now, policy=self._policy)
            entry = await self._guard.identify(key, request, now=now)
        identity = entry.identity
        if log_fields is not None:
            log_fields["arn"] = identity.canonical_arn
            log_fields["accesskeyid"] = identity.access_key_id
            log_fields["accountid"] = identity.account_id
            log_fields["userid"] = identity.user_id
            log_fields["session"] = identity.session_name
        result = await self._chain.map(identity, resolve_private_dns=self._resolve_private_dns)
        return Verdict(user=result.user, identity=identity, backend=result.backend)
