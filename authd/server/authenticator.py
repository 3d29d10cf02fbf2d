"""One review's work, without HTTP: verify the token, ask STS who signed it, map the identity.

The identity STS reports is bound to structlog's context variables as soon as it is known, so
the one log line per review names who was refused and why, even when mapping fails.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from authd import token as tokens
from authd.errors import StsError, StsRejectedError
from authd.identity import Identity, User
from authd.mapping.chain import MapperChain
from authd.metrics import Metrics
from authd.sts import StsClient
from authd.token import EndpointPolicy, PresignedRequest


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
    """Turns a bearer token into a `Verdict`, or raises the `AuthdError` that says why not."""

    def __init__(
        self,
        *,
        policy: EndpointPolicy,
        sts: StsClient,
        chain: MapperChain,
        cluster_ids: Sequence[str],
        metrics: Metrics,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if not cluster_ids:
            raise ValueError("cluster ID cannot be empty")
        self._policy = policy
        self._sts = sts
        self._chain = chain
        self._cluster_ids = tuple(cluster_ids)
        self._metrics = metrics
        self._clock = clock

    @property
    def chain(self) -> MapperChain:
        """The mapper chain (the daemon swaps its backends' tables on reload)."""
        return self._chain

    async def authenticate(self, token: str) -> Verdict:
        """Verify `token` and map its signer.

        Raises:
            TokenFormatError: a local check failed; no network request was made.
            StsError: STS refused, throttled, or could not be reached.
            MappingError: the identity is verified but no backend gives it a user.
        """
        request = tokens.verify(token, now=self._clock(), policy=self._policy)
        identity = await self._identify(request)
        structlog.contextvars.bind_contextvars(
            arn=identity.canonical_arn,
            accesskeyid=identity.access_key_id,
            accountid=identity.account_id,
            userid=identity.user_id,
            session=identity.session_name,
        )
        result = await self._chain.map(identity)
        return Verdict(user=result.user, identity=identity, backend=result.backend)

    async def _identify(self, request: PresignedRequest) -> Identity:
        """Ask STS with the current cluster ID, then each older one while STS refuses."""
        for index, cluster_id in enumerate(self._cluster_ids):
            try:
                identity = await self._call_sts(request, cluster_id)
            except StsRejectedError as exc:
                # Only a refused signature can be cured by another cluster ID; a bad ARN
                # or UserId in a 200 answer would be the same under every ID.
                if exc.status != 403 or index == len(self._cluster_ids) - 1:
                    raise
                continue
            return identity
        raise AssertionError("unreachable: cluster_ids is never empty")

    async def _call_sts(self, request: PresignedRequest, cluster_id: str) -> Identity:
        region = request.region_label
        try:
            identity = await self._sts.get_caller_identity(request, cluster_id=cluster_id)
        except StsError as exc:
            if exc.status is None:
                self._metrics.sts_connection_failure(region)
            else:
                self._metrics.sts_response(exc.status, region)
            if exc.reason == "throttled":
                self._metrics.sts_throttled(region)
            raise
        self._metrics.sts_response(200, region)
        return identity
