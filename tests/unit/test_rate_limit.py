"""A key's token bucket (domain/rate_limit.py), the one the gateway and the control worker
share: the rate, a burst up to it, when to come back, and no bucket kept once it is full."""

from __future__ import annotations

import pytest

from sandboxer.domain.rate_limit import REFILL_SECONDS, RateLimiter


def test_the_token_bucket_allows_the_rate_and_says_when_to_come_back() -> None:
    limiter = RateLimiter()
    assert [limiter.take("k", 3, 100.0) for _ in range(3)] == [None, None, None]
    wait = limiter.take("k", 3, 100.0)
    assert wait is not None
    assert wait == pytest.approx(1 / 3)
    assert limiter.take("other", 3, 100.0) is None  # buckets are per key
    assert limiter.take("k", 3, 100.0 + wait) is None  # as long as it said, not longer
    assert limiter.take("k", 3, 100.0 + wait) is not None
    # Left alone for long, a bucket holds its rate again, never more.
    assert [limiter.take("k", 3, 110.0) for _ in range(4)] == [None, None, None, wait]


def test_a_refused_take_takes_nothing() -> None:
    limiter = RateLimiter()
    assert limiter.take("k", 2, 0.0) is None
    assert limiter.take("k", 2, 0.0) is None
    assert limiter.take("k", 2, 0.0) == pytest.approx(0.5)
    assert limiter.take("k", 2, 0.25) == pytest.approx(0.25)  # refusals did not dig deeper
    assert limiter.take("k", 2, 0.5) is None


def test_full_buckets_are_forgotten_so_many_keys_do_not_grow_it() -> None:
    limiter = RateLimiter()
    for n in range(10_000):
        limiter.take(f"k{n}", 5, n / 100_000)  # ten thousand keys within a tenth of a second
    assert len(limiter) == 10_000
    # A bucket untouched for a second is full, as a new one: only the keys seen since stay.
    later = 0.1 + REFILL_SECONDS
    limiter.take("busy", 5, later)
    assert len(limiter) == 1
    # Forgetting changed nothing a key could tell: an emptied key's bucket is full again.
    for _ in range(5):
        assert limiter.take("k0", 5, later) is None
    assert limiter.take("k0", 5, later) is not None
    assert len(limiter) == 2


def test_an_emptied_bucket_is_kept_until_it_is_full() -> None:
    limiter = RateLimiter()
    for _ in range(4):
        limiter.take("k", 4, 0.0)
    limiter.take("other", 4, REFILL_SECONDS - 0.01)  # looks at the old ones
    assert len(limiter) == 2
    assert limiter.take("k", 4, REFILL_SECONDS - 0.01) is None  # refilled, not forgotten
