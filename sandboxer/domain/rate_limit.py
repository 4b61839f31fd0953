"""How fast an API key may go: a token bucket per key (docs/http-api.md#limits).

Pure: the time is a value given to :meth:`RateLimiter.take` (seconds of a monotonic clock),
never read here. Three places hold a key to its ``rate_per_second`` with it, each in its own
process: the HTTP gateway (each request, ``gateway/context.py``), the control worker (each
command a key publishes on the bus, ``workers/key_rate.py``) and the services that answer a
key's requests on the bus (queries, execs, file copies, tokens: ``bus/key_request_rate.py``).

A key's bucket holds ``rate`` tokens and gains ``rate`` a second, so an empty one is full
again within :data:`REFILL_SECONDS`. A full bucket behaves as no bucket at all (a key's
first take finds one full), so a bucket untouched that long is forgotten: what is kept is a
bucket per key seen in the last second, however many keys come and go.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_STATED_WAIT", "REFILL_SECONDS", "RateLimiter", "said_wait", "stated_wait"]

REFILL_SECONDS = 1.0
"""The longest an empty bucket takes to fill (it holds ``rate`` and gains ``rate`` a second)."""
_ROUNDING = 1e-9
"""A token short by no more than this is a token: one who comes back after exactly the wait
they were told is let through, whatever the floating point made of it."""
MAX_STATED_WAIT = 3600.0
"""The longest wait a refusal read back is believed to say (seconds)."""


def said_wait(wait: float) -> float:
    """``wait`` as a refusal says it: up to the next millisecond, so one who waits as long
    as it says finds a token."""
    return math.ceil(wait * 1000) / 1000


def stated_wait(answer: Mapping[str, Any]) -> float | None:
    """The seconds a refusal (a rejected event, a query's or an exec's error answer) itself
    says to wait, its ``retry_after``; None when it says none, or nothing sensible: what a
    service sent is read as untrusted."""
    said = answer.get("retry_after")
    if isinstance(said, bool) or not isinstance(said, int | float):
        return None
    return float(said) if 0 < said <= MAX_STATED_WAIT else None


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
        tokens = self._tokens(key_id, rate, now)
        wait = _wait(tokens, rate)
        self._buckets.pop(key_id, None)
        self._buckets[key_id] = (max(0.0, tokens - 1) if wait is None else tokens, now)
        return wait

    def wait(self, key_id: str, rate: int, now: float) -> float | None:
        """What :meth:`take` would answer at ``now``, taking nothing: for a service that
        must learn whether a request is its own to answer before it may count it."""
        return _wait(self._tokens(key_id, rate, now), rate)

    def _tokens(self, key_id: str, rate: int, now: float) -> float:
        """The tokens ``key_id`` has at ``now`` (a key without a bucket: a full one)."""
        self._forget_full(now)
        tokens, then = self._buckets.get(key_id, (float(rate), now))
        return min(float(rate), tokens + max(0.0, now - then) * rate)

    def _forget_full(self, now: float) -> None:
        """Drop the buckets left alone for :data:`REFILL_SECONDS`: each is full by now."""
        while self._buckets:
            key_id, (_tokens, then) = next(iter(self._buckets.items()))
            if now - then < REFILL_SECONDS:
                return
            del self._buckets[key_id]


def _wait(tokens: float, rate: int) -> float | None:
    """None when ``tokens`` hold one, else the seconds until they do."""
    return None if tokens >= 1 - _ROUNDING else (1 - tokens) / rate
