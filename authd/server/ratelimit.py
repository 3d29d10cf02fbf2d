"""A token bucket on trio's clock: `rate` tokens a second, at most `burst` saved up.

Used in front of STS (a review that finds the bucket empty is answered 429 with the wait as
Retry-After) and in front of EC2 DescribeInstances (a batch waits for its token). The clock is
`trio.current_time` by default, so tests drive it with trio's autojump MockClock.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

_EPSILON = 1e-9


class TokenBucket:
    """A token bucket refilled continuously; it starts full.

    Not thread-safe: every caller runs in the same trio run (which is single-threaded).
    """

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate")

    def __init__(
        self, *, rate: float, burst: int, clock: Callable[[], float] | None = None
    ) -> None:
        """A bucket giving `rate` tokens a second, holding at most `burst`.

        Args:
            rate: tokens added per second; must be positive.
            burst: capacity, and the tokens available at start; at least 1.
            clock: seconds on a monotonic clock; `trio.current_time` when None (so the bucket
                must then be used inside `trio.run`).

        Raises:
            ValueError: a rate that is not positive or a burst below 1.
        """
        if not rate > 0:
            raise ValueError(f"rate must be positive, not {rate}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst}")
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock or trio.current_time
        self._tokens = float(burst)
        self._last: float | None = None

    def _refill(self) -> float:
        """Add what accrued since the last look; return the current time."""
        now = self._clock()
        if self._last is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now
        return now

    def available(self) -> float:
        """Tokens in the bucket now (fractional)."""
        self._refill()
        return self._tokens

    def try_acquire(self) -> float:
        """Take one token if there is one.

        Returns:
            0.0 when a token was taken; otherwise the seconds until one will be free (> 0),
            and nothing was taken.
        """
        self._refill()
        # The epsilon absorbs float rounding: a sleep of exactly the wait must find the token,
        # or a waiter would spin on waits too small to move the clock.
        if self._tokens >= 1.0 - _EPSILON:
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return (1.0 - self._tokens) / self.rate

    async def acquire(self) -> None:
        """Wait until a token is free and take it. Waiters are not queued fairly.

        Cancellation (a deadline) leaves the bucket as it was.
        """
        # Sleeping exactly until the next token is due is the point; no event could say so.
        while (wait := self.try_acquire()) > 0:  # noqa: ASYNC110
            await trio.sleep(wait)
