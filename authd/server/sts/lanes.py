"""Split the STS allowance in two lanes, so a flood of unknown access keys cannot starve known ones.

- `ProvenKeys` is the bounded set (by count and bytes) of access key IDs STS accepted within
  the last hour; a key STS then refuses a token of is dropped from it, so a forger who knows a
  real key ID (they are not secret) gets at most one reserved request per proof of the owner.
- `StsAllowance` holds two token buckets: the reserved lane (a share of `--sts-qps` and
  `--sts-burst`) that only proven keys may draw from, and the open lane, the rest, that any
  key draws from. A proven key tries its lane first, then the open one; an unknown key can only
  use the open lane, so a flood of them is limited to the open share (docs/SECURITY.md).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

from authd.server.ratelimit import TokenBucket

PROVEN_FOR = 3600.0
"""Seconds a key stays proven after STS last accepted one of its tokens."""
ENTRY_OVERHEAD = 100
"""Bytes one proven key costs beside its characters (dict slot, str header, float)."""

RESERVED = "reserved"
OPEN = "open"


class ProvenKeys:
    """Access key IDs STS accepted recently, least recently proven dropped first.

    Bounded by `max_entries` and by `max_bytes` (each key counts its length plus
    ENTRY_OVERHEAD). Times are seconds on a monotonic clock, passed in by the caller.
    """

    __slots__ = ("_bytes", "_keys", "max_bytes", "max_entries", "ttl")

    def __init__(self, *, max_entries: int, max_bytes: int, ttl: float = PROVEN_FOR) -> None:
        """An empty set holding at most `max_entries` keys and `max_bytes` bytes of them."""
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("bounds must not be negative")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._keys: OrderedDict[str, float] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def size_bytes(self) -> int:
        """What the keys held now count against `max_bytes`."""
        return self._bytes

    def proven(self, key: str, *, now: float) -> bool:
        """Whether STS accepted a token of `key` within the last `ttl` seconds before `now`."""
        seen = self._keys.get(key)
        if seen is None:
            return False
        if now - seen > self.ttl:
            self.forget(key)
            return False
        return True

    def add(self, key: str, *, now: float) -> None:
        """Record that STS accepted a token of `key` at `now`."""
        if key in self._keys:
            self._keys[key] = now
            self._keys.move_to_end(key)
            return
        cost = len(key) + ENTRY_OVERHEAD
        if cost > self.max_bytes or self.max_entries == 0:
            return
        self._keys[key] = now
        self._bytes += cost
        while len(self._keys) > self.max_entries or self._bytes > self.max_bytes:
            oldest, _ = self._keys.popitem(last=False)
            self._bytes -= len(oldest) + ENTRY_OVERHEAD

    def forget(self, key: str) -> None:
        """Drop `key` (STS refused one of its tokens): it draws from the open lane again."""
        if self._keys.pop(key, None) is not None:
            self._bytes -= len(key) + ENTRY_OVERHEAD


class StsAllowance:
    """The STS rate limit in two lanes: reserved for proven keys, open to any key.

    The two buckets' rates and bursts add up to the whole `rate` and `burst`, so STS never sees
    more than before; with `reserved_share` 0 there is one lane, as without this class.
    """

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        reserved_share: float,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """Split `rate` requests/s and `burst` at once by `reserved_share` (0 <= share < 1).

        A burst below 2 cannot be split without the lanes adding up to more than it: one lane.

        Raises:
            ValueError: a share outside [0, 1), or a rate or burst the buckets refuse.
        """
        if not 0.0 <= reserved_share < 1.0:
            raise ValueError(f"reserved share must be at least 0 and below 1, not {reserved_share}")
        self.rate = float(rate)
        self.burst = int(burst)
        self.reserved_share = reserved_share
        self._reserved: TokenBucket | None = None
        open_rate, open_burst = self.rate, self.burst
        if reserved_share > 0 and burst >= 2:
            reserved_burst = min(max(1, math.floor(burst * reserved_share)), max(1, burst - 1))
            self._reserved = TokenBucket(
                rate=rate * reserved_share, burst=reserved_burst, clock=clock
            )
            open_rate = rate * (1.0 - reserved_share)
            open_burst = max(1, burst - reserved_burst)
        self._open = TokenBucket(rate=open_rate, burst=open_burst, clock=clock)

    @property
    def open_rate(self) -> float:
        """Requests a second that unknown keys may use between them."""
        return self._open.rate

    @property
    def open_burst(self) -> int:
        """Requests unknown keys may send at once."""
        return self._open.burst

    def try_acquire(self, *, proven: bool) -> tuple[str, float]:
        """Take one request from a lane this caller may use.

        Returns:
            (lane, 0.0) when a request was taken from `lane`; otherwise ("", seconds until
            one of the caller's lanes has a request free).
        """
        waits: list[float] = []
        if proven and self._reserved is not None:
            wait = self._reserved.try_acquire()
            if wait == 0.0:
                return RESERVED, 0.0
            waits.append(wait)
        wait = self._open.try_acquire()
        if wait == 0.0:
            return OPEN, 0.0
        waits.append(wait)
        return "", min(waits)
