"""The verified-identity cache (LRU, expiry at the token's end, hashed keys) and single flight."""

from __future__ import annotations

import traceback
import tracemalloc
from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio.testing

from authd.errors import StsUnavailableError
from authd.identity import Identity
from authd.server.sts.identitycache import (
    CachedIdentity,
    IdentityCache,
    SingleFlight,
    entry_bytes,
    token_key,
)

NOW = datetime(2024, 1, 15, 12, 0, tzinfo=UTC)
TOKEN = "k8s-aws-v1.aHR0cHM6Ly9zdHMuYW1hem9uYXdzLmNvbS8_QWN0aW9uPUdldENhbGxlcklkZW50aXR5"


def entry(name: str, *, expires: datetime = NOW + timedelta(minutes=10)) -> CachedIdentity:
    """A cache entry for an IAM user called `name`."""
    arn = f"arn:aws:iam::123456789012:user/{name}"
    identity = Identity(
        arn=arn,
        canonical_arn=arn,
        account_id="123456789012",
        user_id=f"AIDA{name.upper()}",
        session_name="",
        access_key_id="AKIAEXAMPLE",
        sts_endpoint="sts.amazonaws.com",
    )
    return CachedIdentity(identity=identity, cluster_id="c", expires_at=expires)


def test_key_is_a_digest_never_the_token() -> None:
    """Keys are 32-byte digests, stable per token, distinct per token, holding no token text."""
    key = token_key(TOKEN)
    assert len(key) == 32
    assert key == token_key(TOKEN)
    assert key != token_key(TOKEN + "A")
    assert TOKEN.encode() not in key and TOKEN[11:40].encode() not in key


def test_key_of_a_lone_surrogate_does_not_raise() -> None:
    """A JSON body can carry lone surrogates; hashing them must not crash the review."""
    assert token_key("k8s-aws-v1.\ud800") != token_key("k8s-aws-v1.")


def test_entry_lives_until_the_token_expires_inclusive() -> None:
    """An entry is served up to its expiry instant (as C16 allows) and dropped just after."""
    causes: list[str] = []
    cache = IdentityCache(max_entries=10, on_evict=causes.append)
    expires = NOW + timedelta(minutes=15)
    cache.put(b"k", entry("alice", expires=expires))
    assert cache.get(b"k", now=expires) is not None
    assert cache.get(b"k", now=expires + timedelta(microseconds=1)) is None
    assert causes == ["expired"]
    assert len(cache) == 0


def test_a_store_sweeps_expired_entries_from_the_old_end() -> None:
    """Under token churn no expired token is looked up again: each store drops the expired
    entries at the least recently used end, and stops at the first one still valid."""
    causes: list[str] = []
    cache = IdentityCache(max_entries=100, on_evict=causes.append)
    for index in range(3):
        cache.put(f"old{index}".encode(), entry(f"old{index}", expires=NOW + timedelta(minutes=1)))
    cache.put(b"valid", entry("valid", expires=NOW + timedelta(minutes=30)))
    cache.put(b"behind", entry("behind", expires=NOW + timedelta(minutes=1)))
    before = cache.size_bytes
    later = NOW + timedelta(minutes=5)
    cache.put(b"new", entry("new", expires=later + timedelta(minutes=15)), now=later)
    assert causes == ["expired"] * 3
    # "behind" expired too, but sits after a valid entry: it goes when looked up or pushed out.
    assert [k for k in (b"old0", b"old1", b"old2") if cache.get(k, now=NOW)] == []
    assert cache.get(b"behind", now=NOW) is not None
    assert len(cache) == 3
    assert cache.size_bytes == before - 3 * entry_bytes(entry("old0")) + entry_bytes(entry("new"))


def test_bytes_bound_evicts_least_recently_used() -> None:
    """With room for many entries but few bytes, the byte bound evicts, oldest first."""
    causes: list[str] = []
    size = entry_bytes(entry("user-000"))
    cache = IdentityCache(max_entries=1000, max_bytes=3 * size, on_evict=causes.append)
    for index in range(10):
        cache.put(f"k{index}".encode(), entry(f"user-{index:03d}"))
    assert len(cache) == 3 and cache.size_bytes == 3 * size
    assert [cache.get(f"k{i}".encode(), now=NOW) is not None for i in (6, 7, 8, 9)] == [
        False,
        True,
        True,
        True,
    ]
    assert causes == ["size"] * 7


def test_long_strings_take_more_of_the_byte_bound() -> None:
    """STS chooses string lengths: a long ARN counts in full, and one over the bound is skipped."""
    cache = IdentityCache(max_entries=1000, max_bytes=entry_bytes(entry("a" * 2000)))
    cache.put(b"small", entry("bob"))
    cache.put(b"big", entry("a" * 2000))
    assert len(cache) == 1 and cache.get(b"big", now=NOW) is not None
    cache.put(b"huge", entry("a" * 5000))
    assert cache.get(b"huge", now=NOW) is None and cache.get(b"big", now=NOW) is not None


def test_replacing_a_key_does_not_count_it_twice() -> None:
    """Putting the same key again replaces its bytes rather than adding to them."""
    cache = IdentityCache(max_entries=10)
    cache.put(b"k", entry("alice"))
    cache.put(b"k", entry("alice"))
    assert (len(cache), cache.size_bytes) == (1, entry_bytes(entry("alice")))


def test_entry_estimate_is_not_below_the_real_cost() -> None:
    """tracemalloc over 5,000 distinct entries: the estimate covers what they really allocate."""
    cache = IdentityCache(max_entries=10_000, max_bytes=10**9)
    entries = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(5000):
            made = entry(f"user-{index:08d}")
            entries.append(made)
            cache.put(token_key(f"token-{index}"), made)
        allocated = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    allocated -= 5000 * 8  # the test's own list of references
    assert allocated <= cache.size_bytes, (allocated, cache.size_bytes)


def test_least_recently_used_goes_first() -> None:
    """At the bound, the entry not used for longest is evicted (a get counts as a use)."""
    causes: list[str] = []
    cache = IdentityCache(max_entries=2, on_evict=causes.append)
    cache.put(b"a", entry("a"))
    cache.put(b"b", entry("b"))
    assert cache.get(b"a", now=NOW) is not None
    cache.put(b"c", entry("c"))
    assert cache.get(b"b", now=NOW) is None
    assert cache.get(b"a", now=NOW) is not None
    assert cache.get(b"c", now=NOW) is not None
    assert causes == ["size"]
    assert len(cache) == 2


def test_size_zero_disables_the_cache() -> None:
    """`--identity-cache-size 0` keeps nothing, so every review asks STS."""
    cache = IdentityCache(max_entries=0)
    cache.put(b"a", entry("a"))
    assert cache.get(b"a", now=NOW) is None
    with pytest.raises(ValueError, match="negative"):
        IdentityCache(max_entries=-1)


async def test_single_flight_shares_one_call(autojump_clock: trio.testing.MockClock) -> None:
    """Twenty concurrent callers of one key share one call and all get its value."""
    calls: list[int] = []
    joined: list[None] = []
    flights: SingleFlight[str, int] = SingleFlight(on_join=lambda: joined.append(None))
    results: list[int] = []

    async def call() -> int:
        calls.append(1)
        await trio.sleep(1)
        return 42

    async def caller() -> None:
        results.append(await flights.run("k", call))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(caller)
    assert results == [42] * 20
    assert len(calls) == 1
    assert len(joined) == 19
    assert not flights.in_flight("k")


async def test_single_flight_shares_the_error(autojump_clock: trio.testing.MockClock) -> None:
    """Waiters get the shared call's exception; a later call runs anew."""
    flights: SingleFlight[str, int] = SingleFlight()
    errors: list[str] = []

    async def failing() -> int:
        await trio.sleep(1)
        raise LookupError("no")

    async def caller() -> None:
        try:
            await flights.run("k", failing)
        except LookupError as exc:
            errors.append(str(exc))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(caller)

    async def ok() -> int:
        return 7

    assert errors == ["no"] * 3
    assert await flights.run("k", ok) == 7


async def test_waiter_leads_anew_when_the_leader_is_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A cancelled leader does not strand its waiters: the first of them runs the call again."""
    flights: SingleFlight[str, str] = SingleFlight()
    calls: list[str] = []

    async def call() -> str:
        calls.append("call")
        await trio.sleep(10)
        return "done"

    got: list[str] = []

    async def waiter() -> None:
        got.append(await flights.run("k", call))

    async with trio.open_nursery() as nursery:
        with trio.move_on_after(1):
            leader_scope = trio.CancelScope()
            nursery.start_soon(_run_in(leader_scope, flights, call))
            await trio.sleep(0.1)
            nursery.start_soon(waiter)
            await trio.sleep(0.1)
            leader_scope.cancel()
    assert got == ["done"]
    assert calls == ["call", "call"]


def _run_in(scope: trio.CancelScope, flights: SingleFlight[str, str], call: object) -> object:
    async def run() -> None:
        with scope:
            await flights.run("k", call)  # type: ignore[arg-type]

    return run


async def test_each_waiter_gets_its_own_copy_of_a_shared_failure() -> None:
    """Waiters of a failed call get copies (same class, text, attributes) caused by the
    leader's error, so 200 waiters do not grow one traceback by 400 frames."""
    flight: SingleFlight[bytes, int] = SingleFlight()
    errors: list[StsUnavailableError] = []

    async def failing() -> int:
        await trio.sleep(0.01)
        raise StsUnavailableError("down", status=503)

    async def wait_for_it() -> None:
        try:
            await flight.run(b"key", failing)
        except StsUnavailableError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(200):
            nursery.start_soon(wait_for_it)
    assert len(errors) == 200
    assert {(str(e), e.status) for e in errors} == {("sts getCallerIdentity failed: down", 503)}
    assert max(len(traceback.extract_tb(e.__traceback__)) for e in errors) < 10
