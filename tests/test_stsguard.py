"""The STS guard: cache, single flight, rate limit, retries inside the deadline, rotation.

Mechanics run on trio's autojump clock with STS behind an async httpx.MockTransport (so a slow
STS costs no real time); the fault tests talk over real sockets to tests/fakes/sts_standin.py,
which resets connections, fails, throttles or stalls on demand.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import trio
import trio.testing

from authd import token as tokens
from authd.config import FileConfig, MappingConfig
from authd.errors import StsRejectedError, StsThrottledError, StsUnavailableError
from authd.mapping.chain import Backend, MapperChain
from authd.mapping.file import MountedFileTable
from authd.metrics import Metrics
from authd.server.authenticator import Authenticator
from authd.server.sts.client import StsClient
from authd.server.sts.guard import StsGuard, StsProtection
from authd.server.sts.identitycache import token_key
from authd.token import EndpointPolicy, encode
from tests.fakes.sts_standin import RESET, THROTTLE, UNAVAILABLE, Fault, StsStandIn

NOW = datetime(2024, 1, 15, 12, 0, tzinfo=UTC)
STS = "http://127.0.0.1:9"
ALICE = {
    "GetCallerIdentityResponse": {
        "GetCallerIdentityResult": {
            "Arn": "arn:aws:iam::123456789012:user/Alice",
            "Account": "123456789012",
            "UserId": "AIDAALICE",
        }
    }
}
Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def make_token(
    n: int = 0, *, host: str = STS, signed: datetime = NOW - timedelta(minutes=1)
) -> str:
    """Token number `n` (a distinct signature) for `host`, signed at `signed`."""
    stamp = signed.strftime("%Y%m%dT%H%M%SZ")
    url = (
        f"{host}/?Action=GetCallerIdentity&Version=2011-06-15&X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential=AKIAALICE%2F{stamp[:8]}%2Fus-east-1%2Fsts%2Faws4_request"
        f"&X-Amz-Date={stamp}&X-Amz-Expires=60&X-Amz-SignedHeaders=host%3Bx-k8s-aws-id"
        f"&X-Amz-Signature={n:064x}"
    )
    return encode(url)


class Sts:
    """An async STS handler that answers from a script and records each call's cluster ID."""

    def __init__(self, *answers: httpx.Response | float | Exception) -> None:
        self.script = list(answers)
        self.cluster_ids: list[str] = []
        self.accept: set[str] | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.cluster_ids.append(request.headers["x-k8s-aws-id"])
        if self.accept is not None and request.headers["x-k8s-aws-id"] not in self.accept:
            return httpx.Response(403, content=b"<Code>SignatureDoesNotMatch</Code>")
        answer = self.script.pop(0) if self.script else httpx.Response(200, json=ALICE)
        if isinstance(answer, float):  # a stall of that many seconds, then OK
            await trio.sleep(answer)
            return httpx.Response(200, json=ALICE)
        if isinstance(answer, Exception):
            raise answer
        return answer

    @property
    def calls(self) -> int:
        """Requests received so far."""
        return len(self.cluster_ids)


def build_guard(
    sts: Handler,
    *,
    cluster_ids: tuple[str, ...] = ("current",),
    metrics: Metrics | None = None,
    jitter: Callable[[float], float] | None = None,
    **protection: float,
) -> tuple[StsGuard, Metrics]:
    """A guard over the real StsClient with `sts` as the transport."""
    metrics = metrics or Metrics(process_collector=False)
    client = httpx.MockTransport(sts)  # type: ignore[arg-type]
    guard = StsGuard(
        sts=StsClient(client),
        cluster_ids=cluster_ids,
        metrics=metrics,
        protection=StsProtection(**protection),  # type: ignore[arg-type]
        jitter=jitter,
    )
    return guard, metrics


POLICY = EndpointPolicy.create(partition="aws", extra_origins=[STS])
REGION = tokens.verify(make_token(), now=NOW, policy=POLICY).region_label


async def identify(guard: StsGuard, token: str, *, now: datetime = NOW) -> str:
    """The ARN the guard finds for `token` (cache first, as the authenticator does)."""
    key = token_key(token)
    entry = guard.cached(key, now=now)
    if entry is None:
        request = tokens.verify(token, now=now, policy=POLICY)
        entry = await guard.identify(key, request, now=now)
    return entry.identity.arn


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """A sample's value (0 when the series does not exist)."""
    return metrics.registry.get_sample_value(name, labels) or 0.0


# --- cache and single flight ------------------------------------------------------------------


async def test_one_sts_call_per_token_until_it_expires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Seven reviews of one token over its 14 minutes cost one STS call; the 16th minute none."""
    sts = Sts()
    guard, metrics = build_guard(sts)
    signed = NOW
    token = make_token(signed=signed)
    for minute in range(0, 14, 2):
        await identify(guard, token, now=signed + timedelta(minutes=minute))
    assert sts.calls == 1
    assert sample(metrics, "authd_identity_cache_hits_total") == 6
    assert sample(metrics, "authd_identity_cache_misses_total") == 1
    assert sample(metrics, "authd_sts_calls_total", outcome="ok") == 1
    with pytest.raises(tokens.TokenFormatError, match="expired"):
        await identify(guard, token, now=signed + timedelta(minutes=15, seconds=1))
    assert sample(metrics, "authd_identity_cache_evictions_total", cause="expired") == 1
    assert sts.calls == 1


async def test_distinct_tokens_each_ask_once(autojump_clock: trio.testing.MockClock) -> None:
    """The cache is per token: three tokens of the same user are three STS calls."""
    sts = Sts()
    guard, metrics = build_guard(sts)
    for n in range(3):
        await identify(guard, make_token(n))
        await identify(guard, make_token(n))
    assert sts.calls == 3
    assert metrics.registry.get_sample_value("authd_identity_cache_entries") == 3
    cache_bytes = metrics.registry.get_sample_value("authd_identity_cache_bytes")
    assert cache_bytes == guard.cache.size_bytes > 0


async def test_concurrent_reviews_share_one_call(autojump_clock: trio.testing.MockClock) -> None:
    """Fifty reviews of one token while STS takes 2 s cost one call; all get the identity."""
    sts = Sts(2.0)
    guard, metrics = build_guard(sts)
    token = make_token()
    arns: list[str] = []

    async def review() -> None:
        arns.append(await identify(guard, token))

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(review)
    assert sts.calls == 1
    assert arns == ["arn:aws:iam::123456789012:user/Alice"] * 50
    assert sample(metrics, "authd_sts_coalesced_total") == 49


async def test_mapping_change_applies_to_a_cached_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Identities are cached, users are not: a new mapping applies at the next review."""
    sts = Sts()
    client = httpx.MockTransport(sts)  # type: ignore[arg-type]

    def table(username: str) -> MountedFileTable:
        text = (
            "clusterID: current\nserver:\n  mapUsers:\n"
            f"  - userarn: arn:aws:iam::123456789012:user/Alice\n    username: {username}\n"
        )
        config = MappingConfig.from_file_config(FileConfig.from_text(text, path="c.yaml"))
        return MountedFileTable.from_config(config)

    backend = Backend("MountedFile", table("alice"))
    authenticator = Authenticator(
        policy=POLICY,
        sts=StsClient(client),
        chain=MapperChain([backend]),
        cluster_ids=("current",),
        metrics=Metrics(process_collector=False),
        clock=lambda: NOW,
    )
    token = make_token()
    assert (await authenticator.authenticate(token)).user.username == "alice"
    backend.publish(table("alice-renamed"))
    assert (await authenticator.authenticate(token)).user.username == "alice-renamed"
    assert sts.calls == 1


# --- rate limit -------------------------------------------------------------------------------


async def test_rate_limit_refuses_with_time_until_a_token_is_free(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Beyond the burst, a new token is refused (429) with Retry-After >= 1; later it passes."""
    sts = Sts()
    guard, metrics = build_guard(sts, qps=0.5, burst=2, reserved_share=0)
    await identify(guard, make_token(1))
    await identify(guard, make_token(2))
    with pytest.raises(StsThrottledError, match="rate limit") as caught:
        await identify(guard, make_token(3))
    assert caught.value.retry_after == 2.0
    assert sample(metrics, "authd_sts_rate_limited_total") == 1
    # Cached tokens are not limited: they cost STS nothing.
    assert await identify(guard, make_token(1))
    await trio.sleep(2)
    await identify(guard, make_token(3))
    assert sts.calls == 3


# --- retries and deadline ---------------------------------------------------------------------


async def test_5xx_and_connection_errors_are_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A 503 then a refused connection, then an answer: the review succeeds on the third try."""
    sts = Sts(httpx.Response(503, content=b"busy"), httpx.ConnectError("refused"))
    guard, metrics = build_guard(sts)
    assert await identify(guard, make_token()) == "arn:aws:iam::123456789012:user/Alice"
    assert sts.calls == 3
    assert sample(metrics, "authd_sts_retries_total") == 2
    assert sample(metrics, "authd_sts_calls_total", outcome="unavailable") == 1
    assert sample(metrics, "authd_sts_calls_total", outcome="connection_error") == 1
    assert (
        sample(
            metrics,
            "aws_iam_authenticator_sts_responses_total",
            ResponseCode="503",
            StsRegion=REGION,
        )
        == 1
    )


@pytest.mark.parametrize(
    ("answer", "error", "outcome"),
    [
        (httpx.Response(403, content=b"<Code>AccessDenied</Code>"), StsRejectedError, "rejected"),
        (httpx.Response(400, content=b"<Code>Throttling</Code>"), StsThrottledError, "throttled"),
        (
            httpx.Response(302, headers={"location": "http://x/"}),
            StsUnavailableError,
            "unavailable",
        ),
        (httpx.Response(200, content=b"garbage"), StsUnavailableError, "unavailable"),
    ],
)
async def test_definitive_and_throttled_answers_are_not_retried(
    autojump_clock: trio.testing.MockClock,
    answer: httpx.Response,
    error: type[Exception],
    outcome: str,
) -> None:
    """4xx, Throttling, 3xx and unreadable 200s would come back the same: one call only."""
    sts = Sts(answer)
    guard, metrics = build_guard(sts)
    with pytest.raises(error):
        await identify(guard, make_token())
    assert sts.calls == 1
    assert sample(metrics, "authd_sts_calls_total", outcome=outcome) == 1


async def test_sts_throttling_is_counted_and_surfaced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """STS's Throttling answer raises StsThrottledError and counts in upstream's series."""
    guard, metrics = build_guard(Sts(httpx.Response(400, content=b"<Code>Throttling</Code>")))
    with pytest.raises(StsThrottledError) as caught:
        await identify(guard, make_token())
    assert caught.value.retry_after >= 1
    assert sample(metrics, "aws_iam_authenticator_sts_throttling_total", StsRegion=REGION) == 1


async def test_a_hung_sts_never_outlasts_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """STS that never answers: every attempt is cut off and the review ends at the deadline."""
    sts = Sts(3600.0, 3600.0, 3600.0, 3600.0)
    guard, metrics = build_guard(sts, timeout=6.0)
    start = trio.current_time()
    with pytest.raises(StsUnavailableError, match="no answer within"):
        await identify(guard, make_token())
    assert trio.current_time() - start <= 6.0
    assert 2 <= sts.calls <= 3
    assert (
        sample(metrics, "aws_iam_authenticator_sts_connection_failures_total", StsRegion=REGION)
        == sts.calls
    )


async def test_retries_stop_when_the_backoff_would_pass_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With the first attempt using most of the deadline, no retry is squeezed in after it."""
    sts = Sts(httpx.Response(503), httpx.Response(503))
    guard, metrics = build_guard(
        sts, timeout=1.0, backoff=5.0, backoff_cap=5.0, jitter=lambda ceiling: ceiling / 2
    )
    with pytest.raises(StsUnavailableError, match="503"):
        await identify(guard, make_token())
    assert sts.calls == 1
    assert sample(metrics, "authd_sts_retries_total") == 0


# --- rotation ---------------------------------------------------------------------------------


async def test_rotation_asks_current_id_first_and_caches_the_older_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A token for the old ID costs two calls once (current, then old), then none."""
    sts = Sts()
    sts.accept = {"old"}
    guard, _ = build_guard(sts, cluster_ids=("current", "old"))
    token = make_token()
    await identify(guard, token)
    assert sts.cluster_ids == ["current", "old"]
    entry = guard.cached(token_key(token), now=NOW)
    assert entry is not None and entry.cluster_id == "old"
    await identify(guard, token)
    assert sts.calls == 2


async def test_rotation_current_id_costs_one_call(autojump_clock: trio.testing.MockClock) -> None:
    """A token for the current ID is answered by the first call: the one-call target holds."""
    sts = Sts()
    sts.accept = {"current"}
    guard, _ = build_guard(sts, cluster_ids=("current", "old"))
    await identify(guard, make_token())
    assert sts.cluster_ids == ["current"]


async def test_rotation_refused_under_every_id(autojump_clock: trio.testing.MockClock) -> None:
    """A token for neither ID is rejected after one call per ID, and nothing is cached."""
    sts = Sts()
    sts.accept = {"elsewhere"}
    guard, _ = build_guard(sts, cluster_ids=("current", "old"))
    with pytest.raises(StsRejectedError, match="SignatureDoesNotMatch"):
        await identify(guard, make_token())
    assert sts.cluster_ids == ["current", "old"]
    assert len(guard.cache) == 0


# --- over real sockets, against the stand-in --------------------------------------------------


@pytest.fixture
def standin() -> Iterator[StsStandIn]:
    """A fresh STS stand-in on a loopback port."""
    server = StsStandIn().start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def real_guard(
    standin: StsStandIn, **protection: float
) -> AsyncIterator[tuple[StsGuard, Metrics, EndpointPolicy]]:
    """A guard with httpx's own transport to the stand-in, closed on the way out."""
    metrics = Metrics(process_collector=False)
    client = httpx.AsyncHTTPTransport()
    guard = StsGuard(
        sts=StsClient(client),
        cluster_ids=("current",),
        metrics=metrics,
        protection=StsProtection(**protection),  # type: ignore[arg-type]
        jitter=lambda ceiling: 0.0,
    )
    async with client:
        yield guard, metrics, EndpointPolicy.create(partition="aws", extra_origins=[standin.url])


async def real_identify(guard: StsGuard, policy: EndpointPolicy, token: str) -> str:
    """Identify `token` now, through the guard."""
    now = datetime.now(UTC)
    request = tokens.verify(token, now=now, policy=policy)
    return (await guard.identify(token_key(token), request, now=now)).identity.arn


async def test_reset_and_503_from_a_real_socket_are_retried(standin: StsStandIn) -> None:
    """A connection reset, then a 503, then an answer: the review gets the identity."""
    standin.script(RESET, UNAVAILABLE)
    async with real_guard(standin) as (guard, metrics, policy):
        arn = await real_identify(guard, policy, standin.token())
        assert arn.endswith(":user/Alice")
        assert [seen.fault for seen in standin.requests] == ["reset", "status", "ok"]
        assert sample(metrics, "authd_sts_retries_total") == 2


async def test_real_throttling_answer_is_not_retried(standin: StsStandIn) -> None:
    """STS's 400 Throttling over the wire is surfaced after one request."""
    standin.script(THROTTLE)
    async with real_guard(standin) as (guard, metrics, policy):
        with pytest.raises(StsThrottledError, match="Throttling"):
            await real_identify(guard, policy, standin.token())
        assert standin.calls() == 1
        assert sample(metrics, "authd_sts_calls_total", outcome="throttled") == 1


async def test_slow_real_sts_is_cut_at_the_deadline(standin: StsStandIn) -> None:
    """A stand-in that holds every answer: the review fails at --sts-timeout, not later."""
    standin.script(Fault.hold(), Fault.hold(), Fault.hold())
    async with real_guard(standin, timeout=0.6) as (guard, _, policy):
        start = trio.current_time()
        with pytest.raises(StsUnavailableError, match="no answer within"):
            await real_identify(guard, policy, standin.token())
        assert trio.current_time() - start < 0.6 + 0.2
        standin.release()


async def test_real_failure_that_persists_ends_as_unavailable(standin: StsStandIn) -> None:
    """Three 500s in a row: three requests, then 503-class failure naming the status."""
    standin.script(*[Fault.with_status(500)] * 3)
    async with real_guard(standin) as (guard, _, policy):
        with pytest.raises(StsUnavailableError, match="got 500"):
            await real_identify(guard, policy, standin.token())
        assert standin.calls() == 3
        assert json.dumps([s.fault for s in standin.requests]) == '["status", "status", "status"]'
