"""Remember who STS said signed a token until the token expires, and share in-flight STS calls.

- `token_key` names a token by a keyed BLAKE2b digest: the cache never holds a token, and the
  key is random per process, so a digest seen in a memory dump matches no token elsewhere.
- `IdentityCache` is an LRU of verified identities bounded in entries and in bytes (each entry's
  size is estimated from its strings, since STS chooses their lengths). An entry lives until the
  token's own validity ends (`min(X-Amz-Date, now)` + 15 minutes, when STS would refuse it too),
  so a cached answer is never one STS could no longer give. Identities are cached, not users:
  the mapping runs on every review, so a mapping change applies at once.
- `SingleFlight` lets concurrent reviews of the same token share one STS call.
"""

from __future__ import annotations

import hashlib
import secrets
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

import trio

from authd.identity import Identity

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_PROCESS_KEY = secrets.token_bytes(32)
EVICTED_FOR_SIZE = "size"
EVICTED_EXPIRED = "expired"
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
"""The default byte bound: about 16,000 entries; docs/BENCHMARKS.md has the daemon's RSS."""
# What an entry costs besides its strings, measured with tracemalloc (test_identitycache.py keeps
# the estimate above the real cost): the 32-byte key, the OrderedDict slot and link, the two
# slotted objects and the expiry datetime.
_ENTRY_OVERHEAD = 420


def token_key(token: str) -> bytes:
    """The cache key of `token`: a 32-byte BLAKE2b digest keyed with a per-process secret."""
    # surrogatepass: a JSON body may carry lone surrogates; they must hash, not raise.
    data = token.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=32, key=_PROCESS_KEY).digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class CachedIdentity:
    """A verified identity, the cluster ID STS accepted the token under, and when it expires."""

    identity: Identity
    cluster_id: str
    expires_at: datetime


def entry_bytes(entry: CachedIdentity) -> int:
    """An upper estimate of the memory one cache entry holds, its strings counted in full."""
    identity = entry.identity
    strings = (
        identity.arn,
        identity.canonical_arn,
        identity.account_id,
        identity.user_id,
        identity.session_name,
        identity.access_key_id,
        identity.sts_endpoint,
        entry.cluster_id,
    )
    return _ENTRY_OVERHEAD + sum(map(sys.getsizeof, strings))


class IdentityCache:
    """A least-recently-used map of token keys to verified identities, bounded in entries and bytes.

    `on_evict(cause)` is called for each entry dropped: `"size"` when a bound pushed it out,
    `"expired"` when a lookup, or a store sweeping the least recently used end, found it past its
    token's validity.
    """

    __slots__ = ("_bytes", "_entries", "_on_evict", "max_bytes", "max_entries")

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int = DEFAULT_MAX_BYTES,
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        """An empty cache holding at most `max_entries` entries of at most `max_bytes` in all
        (`entry_bytes`); 0 for either disables caching.

        Raises:
            ValueError: a negative bound.
        """
        if max_entries < 0:
            raise ValueError(f"max_entries must not be negative, not {max_entries}")
        if max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative, not {max_bytes}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, tuple[CachedIdentity, int]] = OrderedDict()
        self._bytes = 0
        self._on_evict = on_evict

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """The estimated bytes the entries hold now (`entry_bytes` summed)."""
        return self._bytes

    def get(self, key: bytes, *, now: datetime) -> CachedIdentity | None:
        """The entry for `key` if it is still valid at `now`, marking it recently used.

        A token is valid up to and including `expires_at` (C16 in docs/upstream-compat.md), so is
        its entry.
        """
        found = self._entries.get(key)
        if found is None:
            return None
        entry, size = found
        if now > entry.expires_at:
            self._drop(key, size, EVICTED_EXPIRED)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: bytes, entry: CachedIdentity, *, now: datetime | None = None) -> None:
        """Store `entry`, pushing out the least recently used entries beyond either bound.

        With `now`, expired entries at the least recently used end go first: under token churn
        no expired token is looked up again, and without this sweep the cache would fill to its
        byte bound with them (docs/RELIABILITY.md, "Soak"). The sweep stops at the first entry
        still valid, so a store costs one comparison when nothing has expired.
        """
        if now is not None:
            self._drop_expired(now)
        size = entry_bytes(entry)
        if self.max_entries == 0 or size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        self._entries[key] = (entry, size)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped
            self._evicted(EVICTED_FOR_SIZE)

    def _drop_expired(self, now: datetime) -> None:
        """Drop expired entries from the least recently used end, up to the first valid one."""
        while self._entries:
            key, (oldest, size) = next(iter(self._entries.items()))
            if now <= oldest.expires_at:
                return
            self._drop(key, size, EVICTED_EXPIRED)

    def _drop(self, key: bytes, size: int, cause: str) -> None:
        """Remove the entry for `key`, which holds `size` bytes, and report why."""
        del self._entries[key]
        self._bytes -= size
        self._evicted(cause)

    def _evicted(self, cause: str) -> None:
        if self._on_evict is not None:
            self._on_evict(cause)


class _Flight(Generic[V]):
    """One call in progress: its waiters block on `done`, then read the outcome.

    `done` is made by the first waiter: most calls have none, and an Event costs a review
    microseconds it need not spend.
    """

    __slots__ = ("done", "error", "finished", "value")

    def __init__(self) -> None:
        self.done: trio.Event | None = None
        self.finished = False
        self.value: V | None = None
        self.error: Exception | None = None


class SingleFlight(Generic[K, V]):
    """At most one call per key at a time; callers arriving meanwhile get its outcome.

    If the task running the call is cancelled (its client went away), the waiters do not
    inherit the cancellation: the first of them to wake runs the call again.
    """

    __slots__ = ("_flights", "_on_join")

    def __init__(self, *, on_join: Callable[[], None] | None = None) -> None:
        """`on_join` is called each time a caller waits on another caller's call."""
        self._flights: dict[K, _Flight[V]] = {}
        self._on_join = on_join

    def in_flight(self, key: K) -> bool:
        """Whether a call for `key` is running now."""
        return key in self._flights

    async def run(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        """Return `call()`'s value, or raise its exception, sharing a running call for `key`.

        Raises:
            Exception: whatever the shared call raised: the leader gets the exception itself,
                each waiter its own copy (same class, message and attributes) caused by it.
        """
        while (flight := self._flights.get(key)) is not None:
            if self._on_join is not None:
                self._on_join()
            if flight.done is None:
                flight.done = trio.Event()
            await flight.done.wait()
            if flight.finished:
                if flight.error is not None:
                    raise _own_copy(flight.error) from flight.error
                return flight.value  # type: ignore[return-value]  # set when finished w/o error
        return await self._lead(key, call)

    async def _lead(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        flight: _Flight[V] = _Flight()
        self._flights[key] = flight
        try:
            value = await call()
        except Exception as exc:
            flight.error, flight.finished = exc, True
            raise
        else:
            flight.value, flight.finished = value, True
            return value
        finally:
            # Also on cancellation (finished stays False): the waiters wake and one leads anew.
            del self._flights[key]
            if flight.done is not None:
                flight.done.set()


def _own_copy(error: Exception) -> Exception:
    """A copy of `error` for one waiter: same class, args and attributes, a traceback of its own.

    Raising the one shared object in every waiter would append each waiter's frames to its
    traceback: 2,000 waiters of one failed call left a 4,000-frame traceback, rendered again by
    every log line that shows it. The constructor is not called (subclasses format their args).
    """
    fresh = type(error).__new__(type(error))
    fresh.args = error.args
    fresh.__dict__.update(error.__dict__)
    return fresh
