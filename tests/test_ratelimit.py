"""The token bucket on trio's clock, driven by the autojump MockClock (no real waiting)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from authd.server.ratelimit import TokenBucket


async def test_burst_then_refuses_with_the_wait(autojump_clock: trio.testing.MockClock) -> None:
    """A full bucket gives `burst` tokens at once, then says how long until the next one."""
    bucket = TokenBucket(rate=4.0, burst=3)
    assert [bucket.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_acquire() == pytest.approx(0.25)
    await trio.sleep(0.1)
    assert bucket.try_acquire() == pytest.approx(0.15)


async def test_refills_at_rate_up_to_burst(autojump_clock: trio.testing.MockClock) -> None:
    """Tokens come back at `rate` per second and never beyond `burst`, however long it waits."""
    bucket = TokenBucket(rate=2.0, burst=2)
    bucket.try_acquire()
    bucket.try_acquire()
    await trio.sleep(0.5)
    assert bucket.available() == pytest.approx(1.0)
    await trio.sleep(3600)
    assert bucket.available() == pytest.approx(2.0)


async def test_acquire_waits_exactly_until_a_token_is_free(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """`acquire` on an empty bucket returns after 1/rate seconds of trio time, not sooner."""
    bucket = TokenBucket(rate=5.0, burst=1)
    await bucket.acquire()
    start = trio.current_time()
    for _ in range(10):
        await bucket.acquire()
    assert trio.current_time() - start == pytest.approx(2.0)


async def test_cancelled_acquire_takes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    """A waiter cut off by a deadline leaves the bucket's refill for the next caller."""
    bucket = TokenBucket(rate=1.0, burst=1)
    bucket.try_acquire()
    with trio.move_on_after(0.5):
        await bucket.acquire()
    await trio.sleep(0.5)
    assert bucket.try_acquire() == 0.0


def test_injected_clock_works_outside_trio() -> None:
    """With its own clock the bucket needs no trio run (the clock is the only input)."""
    now = [100.0]
    bucket = TokenBucket(rate=10.0, burst=1, clock=lambda: now[0])
    assert bucket.try_acquire() == 0.0
    assert bucket.try_acquire() == pytest.approx(0.1)
    now[0] += 0.1
    assert bucket.try_acquire() == 0.0


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_bad_parameters_are_refused(rate: float, burst: int) -> None:
    """A rate that is not positive or a burst below 1 is a ValueError."""
    with pytest.raises(ValueError, match="must be"):
        TokenBucket(rate=rate, burst=burst, clock=lambda: 0.0)
