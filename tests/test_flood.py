"""Fake tokens cannot starve real users: lanes, remembered denials, and no retries that cannot help.

The guard runs on trio's autojump clock over the real StsClient, with STS behind an async
httpx.MockTransport that decides by access key: a known key is answered with Alice, any other
with the refusal the test names. One test sends real requests through Http1Transport.
"""

from __future__ import annotations

import socket
from datetime import datetime, timedelta

import httpx
import pytest
import trio
import trio.testing

from authd import token as tokens
from authd.errors import StsRejectedError, StsThrottledError, StsUnavailableError
from authd.metrics import Metrics
from authd.server.sts.client import StsClient, can_retry, error_code
from authd.server.sts.denials import DeniedCredentials, DeniedTokens
from authd.server.sts.guard import StsGuard, StsProtection
from authd.server.sts.identitycache import token_key
from authd.server.sts.lanes import ProvenKeys, StsAllowance
from authd.server.sts.transport import Http1Transport
from authd.token import EndpointPolicy, encode
from tests.test_stsguard import ALICE, NOW, POLICY, STS, sample
from tests.wire import sent_url

KNOWN = "AKIAKNOWNKEY00000000"


def make_token(
    n: int, *, key: str = KNOWN, signed: datetime = NOW - timedelta(minutes=1), session: str = ""
) -> str:
    """Token `n` (a distinct signature) signed with access key `key` (and a session token)."""
    stamp = signed.strftime("%Y%m%dT%H%M%SZ")
    security = f"&X-Amz-Security-Token={session}" if session else ""
    url = (
        f"{STS}/?Action=GetCallerIdentity&Version=2011-06-15&X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential={key}%2F{stamp[:8]}%2Fus-east-1%2Fsts%2Faws4_request"
        f"&X-Amz-Date={stamp}&X-Amz-Expires=60{security}"
        f"&X-Amz-SignedHeaders=host%3Bx-k8s-aws-id&X-Amz-Signature={n:064x}"
    )
    return encode(url)


def refusal(code: str) -> httpx.Response:
    """STS' JSON error answer naming `code`, as it answers when asked for JSON."""
    body = {"Error": {"Code": code, "Message": "no", "Type": "Sender"}, "RequestId": "r"}
    return httpx.Response(403, json=body)


class KeyedSts:
    """Alice for KNOWN (its signatures all good), `refuse` for every other key; counts calls."""

    def __init__(self, refuse: str = "SignatureDoesNotMatch") -> None:
        self.refuse = refuse
        self.keys: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        credential = sent_url(request).params["X-Amz-Credential"]
        key = credential.split("/")[0]
        self.keys.append(key)
        if key == KNOWN and sent_url(request).params["X-Amz-Signature"] != "f" * 64:
            return httpx.Response(200, json=ALICE)
        return refusal(self.refuse)

    def calls(self, key: str | None = None) -> int:
        """Requests seen, for `key` or in all."""
        return len(self.keys) if key is None else self.keys.count(key)


def guard_over(
    sts: KeyedSts | httpx.MockTransport,
    *,
    cluster_ids: tuple[str, ...] = ("current",),
    **protection: float,
) -> tuple[StsGuard, Metrics]:
    """A guard over the real StsClient with `sts` as STS."""
    metrics = Metrics(process_collector=False)
    transport = sts if isinstance(sts, httpx.MockTransport) else httpx.MockTransport(sts)  # type: ignore[arg-type]
    guard = StsGuard(
        sts=StsClient(transport),
        cluster_ids=cluster_ids,
        metrics=metrics,
        protection=StsProtection(**protection),  # type: ignore[arg-type]
        jitter=lambda ceiling: 0.0,
    )
    return guard, metrics


async def review(
    guard: StsGuard, token: str, *, now: datetime = NOW, policy: EndpointPolicy = POLICY
) -> str:
    """The ARN the guard finds for `token`, cache first, as the authenticator asks."""
    key = token_key(token)
    entry = guard.cached(key, now=now)
    if entry is None:
        request = tokens.verify(token, now=now, policy=policy)
        entry = await guard.identify(key, request, now=now)
    return entry.identity.arn


# --- the reserved lane --------------------------------------------------------------------------


async def test_a_flood_of_unknown_keys_cannot_use_the_reserved_lane(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Unknown keys drain only the open half; a key STS accepted before still gets through."""
    sts = KeyedSts()
    guard, metrics = guard_over(sts, qps=10, burst=10)
    await review(guard, make_token(0))  # proves KNOWN, from the open lane
    refused = 0
    for n in range(100):
        try:
            await review(guard, make_token(n, key=f"AKIAFLOOD{n:011d}"))
        except StsThrottledError:
            refused += 1
        except StsRejectedError:
            pass
    flood = sts.calls() - sts.calls(KNOWN)
    assert flood == 4  # the open lane's burst of 5, less the one KNOWN used to prove itself
    assert refused == 96
    for n in range(1, 6):  # the reserved burst of 5 is still whole
        await review(guard, make_token(n))
    assert sts.calls(KNOWN) == 6
    assert sample(metrics, "authd_sts_lane_requests_total", lane="reserved") == 5
    assert sample(metrics, "authd_sts_lane_requests_total", lane="open") == 5
    assert sample(metrics, "authd_sts_proven_access_keys") == 1


async def test_over_time_the_flood_gets_only_the_open_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Over 10 s of a flood at 100/s, unknown keys get the open share (5/s + burst) and a proven
    key asking once a second is never refused."""
    sts = KeyedSts()
    guard, _ = guard_over(sts, qps=10, burst=10)
    await review(guard, make_token(0))
    start = trio.current_time()
    for second in range(10):
        await review(guard, make_token(1000 + second))  # never throttled
        for n in range(100):
            with pytest.raises((StsThrottledError, StsRejectedError)):
                await review(guard, make_token(second * 100 + n, key=f"AKIAFLOOD{n:011d}"))
            await trio.sleep(0.01)
    elapsed = trio.current_time() - start
    flood = sts.calls() - sts.calls(KNOWN)
    assert flood <= 5 + 5 * elapsed
    assert sts.calls(KNOWN) == 11


async def test_a_refusal_drops_the_key_from_the_proven(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A forger using a proven key ID gets one reserved request; then the key is unproven."""
    sts = KeyedSts()
    guard, _ = guard_over(sts, qps=10, burst=10)
    await review(guard, make_token(0))
    assert guard.proven.proven(KNOWN, now=trio.current_time())
    forged = make_token(int("f" * 64, 16))  # STS refuses this signature
    with pytest.raises(StsRejectedError):
        await review(guard, forged)
    assert not guard.proven.proven(KNOWN, now=trio.current_time())


async def test_proven_keys_expire_after_an_hour(autojump_clock: trio.testing.MockClock) -> None:
    """A key proven more than an hour ago draws from the open lane again."""
    guard, _ = guard_over(KeyedSts())
    await review(guard, make_token(0))
    await trio.sleep(3601)
    assert not guard.proven.proven(KNOWN, now=trio.current_time())


def test_proven_keys_are_bounded_by_count_and_bytes() -> None:
    """The set never passes either bound; the least recently proven key leaves first."""
    by_count = ProvenKeys(max_entries=3, max_bytes=10_000)
    for n in range(5):
        by_count.add(f"AKIA{n}", now=float(n))
    assert len(by_count) == 3
    assert not by_count.proven("AKIA0", now=5.0) and by_count.proven("AKIA4", now=5.0)
    by_bytes = ProvenKeys(max_entries=1000, max_bytes=3 * (100 + 20))
    for n in range(10):
        by_bytes.add(f"AKIA{n:016d}", now=0.0)
    assert len(by_bytes) == 3 and by_bytes.size_bytes <= by_bytes.max_bytes
    by_bytes.add("A" * 10_000, now=0.0)  # too big to hold at all
    assert len(by_bytes) == 3


def test_the_lanes_add_up_to_the_whole_allowance() -> None:
    """Reserved plus open rate and burst are the configured ones; share 0 is a single lane."""
    clock = [0.0]
    allowance = StsAllowance(rate=50, burst=100, reserved_share=0.5, clock=lambda: clock[0])
    taken = [allowance.try_acquire(proven=True)[0] for _ in range(101)]
    assert taken.count("reserved") == 50 and taken.count("open") == 50 and taken[-1] == ""
    single = StsAllowance(rate=50, burst=100, reserved_share=0, clock=lambda: clock[0])
    assert [single.try_acquire(proven=False)[0] for _ in range(100)] == ["open"] * 100
    with pytest.raises(ValueError, match="below 1"):
        StsAllowance(rate=50, burst=100, reserved_share=1.0)


def test_a_burst_of_one_is_not_split_into_two_lanes() -> None:
    """With --sts-burst 1 the lanes would add up to 2 at once: one lane keeps the limit."""
    clock = [0.0]
    allowance = StsAllowance(rate=50, burst=1, reserved_share=0.5, clock=lambda: clock[0])
    taken = [allowance.try_acquire(proven=True)[0] for _ in range(3)]
    assert taken == ["open", "", ""]


# --- remembered denials -----------------------------------------------------------------------


@pytest.mark.parametrize("code", ["SignatureDoesNotMatch", "ExpiredToken"])
async def test_a_denied_token_replayed_costs_no_sts_call(
    autojump_clock: trio.testing.MockClock, code: str
) -> None:
    """A token STS refused definitively is refused again from memory until it expires."""
    sts = KeyedSts(refuse=code)
    guard, metrics = guard_over(sts)
    token = make_token(1, key="AKIAFAKE0000000000000")
    for _ in range(5):
        with pytest.raises(StsRejectedError, match=code):
            await review(guard, token)
    assert sts.calls() == 1
    assert sample(metrics, "authd_sts_denial_cache_hits_total", kind="token") == 4
    assert sample(metrics, "authd_sts_denial_cache_entries", kind="token") == 1
    later = NOW + timedelta(minutes=15)  # past the token's validity: the local check refuses it
    with pytest.raises(Exception, match="expired"):
        await review(guard, token, now=later)


async def test_a_refusal_that_may_change_is_not_remembered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """AccessDenied names no property of the token: the next review asks STS again."""
    sts = KeyedSts(refuse="AccessDenied")
    guard, _ = guard_over(sts)
    token = make_token(1, key="AKIAFAKE0000000000000")
    for _ in range(2):
        with pytest.raises(StsRejectedError):
            await review(guard, token)
    assert sts.calls() == 2


async def test_an_unknown_access_key_is_refused_for_60_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After InvalidClientTokenId, new tokens of that key cost nothing for 60 s, then ask."""
    sts = KeyedSts(refuse="InvalidClientTokenId")
    guard, metrics = guard_over(sts)
    with pytest.raises(StsRejectedError):
        await review(guard, make_token(1, key="AKIANOSUCHKEY0000000"))
    for n in range(2, 12):
        with pytest.raises(StsRejectedError, match="does not exist"):
            await review(guard, make_token(n, key="AKIANOSUCHKEY0000000"))
    assert sts.calls() == 1
    assert sample(metrics, "authd_sts_denial_cache_hits_total", kind="access_key") == 10
    await trio.sleep(60)
    with pytest.raises(StsRejectedError, match="InvalidClientTokenId"):
        await review(guard, make_token(99, key="AKIANOSUCHKEY0000000"))
    assert sts.calls() == 2


async def test_a_key_sts_did_not_know_yet_is_asked_about_again_after_60_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """IAM is eventually consistent: a new key's token refused with InvalidClientTokenId is
    refused from memory for 60 s only, then asked about again and allowed once STS knows it."""
    answers = [refusal("InvalidClientTokenId")]

    async def learning_sts(request: httpx.Request) -> httpx.Response:
        return answers.pop() if answers else httpx.Response(200, json=ALICE)

    guard, _ = guard_over(httpx.MockTransport(learning_sts))
    token = make_token(1, key=KNOWN)
    with pytest.raises(StsRejectedError, match="InvalidClientTokenId"):
        await review(guard, token)
    with pytest.raises(StsRejectedError, match="does not exist"):
        await review(guard, token)
    await trio.sleep(60)
    assert await review(guard, token) == "arn:aws:iam::123456789012:user/Alice"


async def test_a_forged_session_token_does_not_lock_out_the_key(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """InvalidClientTokenId for a temporary key with a forged session token blocks only that
    pair: the owner's tokens, with the real session token, still reach STS."""
    refused: set[str] = {"forged"}

    async def sts(request: httpx.Request) -> httpx.Response:
        if sent_url(request).params.get("X-Amz-Security-Token") in refused:
            return refusal("InvalidClientTokenId")
        return httpx.Response(200, json=ALICE)

    guard, _ = guard_over(httpx.MockTransport(sts))  # type: ignore[arg-type]
    key = "ASIATEMPORARY0000000"
    with pytest.raises(StsRejectedError):
        await review(guard, make_token(1, key=key, session="forged"))
    assert (await review(guard, make_token(2, key=key, session="real"))).endswith("user/Alice")


def test_denial_caches_are_bounded() -> None:
    """Both denial caches hold at most their bound, dropping the oldest entry first."""
    tokens_ = DeniedTokens(max_entries=2)
    for n in range(4):
        tokens_.put(bytes([n]), code="SignatureDoesNotMatch", expires_at=NOW)
    assert len(tokens_) == 2 and tokens_.get(b"\x00", now=NOW) is None
    tokens_.put(b"x", code="NotAKnownCode", expires_at=NOW)
    assert tokens_.get(b"x", now=NOW) is None
    credentials = DeniedCredentials(max_entries=2)
    for n in range(4):
        credentials.put(bytes([n]), now=0.0)
    assert len(credentials) == 2 and not credentials.denied(b"\x00", now=1.0)


async def test_rotation_stops_at_a_refusal_no_cluster_id_can_cure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An unknown key costs one call, not one per cluster ID."""
    sts = KeyedSts(refuse="InvalidClientTokenId")
    guard, _ = guard_over(sts, cluster_ids=("current", "old", "older"))
    with pytest.raises(StsRejectedError):
        await review(guard, make_token(1, key="AKIANOSUCHKEY0000000"))
    assert sts.calls() == 1


# --- no retries that cannot help ----------------------------------------------------------------


def unresolvable() -> httpx.ConnectError:
    """What the transports raise for a name that does not resolve (its cause kept)."""
    try:
        try:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        except socket.gaierror as cause:
            raise httpx.ConnectError("Name or service not known") from cause
    except httpx.ConnectError as exc:
        return exc


@pytest.mark.parametrize(
    "failure",
    [unresolvable(), httpx.PoolTimeout("no connection free"), httpx.LocalProtocolError("bad")],
    ids=["dns", "pool", "local-protocol"],
)
async def test_failures_another_try_cannot_cure_are_not_retried(
    autojump_clock: trio.testing.MockClock, failure: httpx.HTTPError
) -> None:
    """A name that does not resolve or authd's own client error costs one request, not three."""
    calls: list[int] = []

    async def sts(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise failure

    guard, metrics = guard_over(httpx.MockTransport(sts))  # type: ignore[arg-type]
    with pytest.raises(StsUnavailableError):
        await review(guard, make_token(1))
    assert len(calls) == 1
    assert sample(metrics, "authd_sts_retries_total") == 0


async def test_a_real_unresolvable_host_is_not_retried() -> None:
    """Through Http1Transport, a `.invalid` name (never resolvable) fails once, not retryable."""
    client = httpx.AsyncClient(transport=Http1Transport(), timeout=5)
    async with client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.get("http://sts.authd-test.invalid/")
    assert not can_retry(caught.value)
    assert can_retry(httpx.ConnectError("Connection refused"))


def test_error_codes_are_read_from_json_and_xml() -> None:
    """STS' code is found in either answer format; a body without one gives ""."""
    assert error_code(b'{"Error":{"Code":"ExpiredToken","Message":"x"}}') == "ExpiredToken"
    assert error_code(b"<Error><Code>InvalidClientTokenId</Code></Error>") == (
        "InvalidClientTokenId"
    )
    assert error_code(b"<html>Forbidden</html>") == ""


# --- settings -----------------------------------------------------------------------------------


def test_flood_settings_from_flags_and_config() -> None:
    """`--sts-reserved-share` and `server.reportDenialReason` resolve, and a share of 1 is refused
    (unproven keys, new users among them, must keep some of the allowance)."""
    from authd.config import FileConfig, ServerSettings
    from authd.errors import ConfigError

    text = "clusterID: c\nserver:\n  reportDenialReason: true\n  stsReservedShare: 0.25\n"
    file = FileConfig.from_text(text, path="config.yaml")
    settings = ServerSettings.resolve(flags={}, env={}, file=file)
    assert (settings.report_denial_reason, settings.sts_reserved_share) == (True, 0.25)
    assert StsProtection.from_settings(settings).reserved_share == 0.25
    defaults = ServerSettings.resolve(flags={"cluster_ids": "c"}, env={}, file=None)
    assert (defaults.report_denial_reason, defaults.sts_reserved_share) == (False, 0.5)
    with pytest.raises(ConfigError, match="below 1"):
        ServerSettings.resolve(
            flags={"cluster_ids": "c", "sts_reserved_share": "1"}, env={}, file=None
        )
