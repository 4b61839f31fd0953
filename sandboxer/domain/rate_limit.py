"""How fast an API key may go: a token bucket per key (docs/http-api.md#limits).

Pure: the time is a value given to :meth:`RateLimiter.take` (seconds of a monotonic clock),
never read here. Two places hold a key to its ``rate_per_second`` with it, each in its own
process: the HTTP gateway (each request, ``gateway/context.py``) and the control worker
(each command a key publishes on the bus, ``workers/key_rate.py``).

A key's bucket holds ``rate`` tokens and gains ``rate`` a second, so an empty one is full
again within :data:`REFILL_SECONDS`. A full bucket behaves as no bucket at all (a key's
first take finds one full), so a bucket untouched that long is forgotten: what is kept is a
bucket per key seen in the last second, however many keys come and go.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["REFILL_SECONDS", "RateLimiter"]

REFILL_SECONDS = 1.0
"""The longest an empty bucket takes to fill (it holds ``rate`` and gains ``rate`` a second)."""
_ROUNDING = 1e-9
"""A token short by no more than this is a token: one who comes back after exactly the wait
they were told is let through, whatever the floating point made of it."""


class RateLimiter:
    """A token bucket per key: ``rate`` tokens a second, holding at most ``rate``."""

    def __init__(self) -> None:
        # key id -> (tokens, when last taken from); the least recently used first, which is
        # also the oldest time first as long as the clock does not go back.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        """How many buckets are kept (none is kept full for long)."""
        return len(self._buckets)

    def take(self, key_id: str, rate: int, now: float) -> float | None:
        """Take one of ``key_id``'s tokens at ``now``: None when there was one, else the
        seconds until there is one (nothing is taken then)."""
        self._forget_full(now)
        tokens, then = self._buckets.pop(key_id, (float(rate), now))
        tokens = min(float(rate), tokens + max(0.0, now - then) * rate)
        wait = None if tokens >= 1 - _ROUNDING else (1 - tokens) / rate
        self._buckets[key_id] = (max(0.0, tokens - 1) if wait is None else tokens, now)
        return wait

    def _forget_full(self, now: float) -> None:
        """Drop the buckets left alone for :data:`REFILL_SECONDS`: each is full by now."""
        while self._buckets:
            key_id, (_tokens, then) = next(iter(self._buckets.items()))
            if now - then < REFILL_SECONDS:
                return
            del self._buckets[key_id]
