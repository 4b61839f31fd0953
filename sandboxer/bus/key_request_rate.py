"""An API key's requests on the bus, held to its rate in each serving process
(docs/security.md#keys-on-the-bus).

A key identity asks on subjects ending in its key id, which nats-server lets only that key
publish: queries (the projector; ``route.explain``, the control worker), execs, file copies
and token requests (the sandbox's extension worker). Each such request takes a token from
the key's bucket (:class:`sandboxer.domain.rate_limit.RateLimiter`, the one the gateway and
the control worker hold a key with): ``rate_per_second`` a second, bursts up to as many. One
:class:`KeyRequestRates` serves every such service of a process (``sandboxer up`` runs them
all in one, ``service.run_roles``), so a key's queries, execs, copies and token requests
together make its rate there. One past it is refused with
:class:`~sandboxer.errors.RateLimited` and its ``retry_after`` (the seconds until the key has
a token again), which each service answers in its own error shape (:func:`refusal_fields`),
before it reads anything for the request: the key's rate is read once and kept, since a key's
rate never changes once it is made (``key_created`` alone sets it). A revoked key's requests
are still counted, then refused as revoked by the service.

Not counted here, and why:

- the service's and the client identity's requests (the plain subjects): telling them apart
  is the subject test the caller makes already, nothing more;
- a key's commands: the control worker holds them with a bucket of its own
  (``workers/key_rate.py``), so a client polling for its command's outcome (a key may not
  read the events stream, so it asks ``sandbox.events``) never has the command refused;
- what the gateway asks for a key: it counted each as an HTTP request.

With N processes answering a key's requests (projectors in a queue group, extension
workers), a key may make up to N times its rate, as with N gateways.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from sandboxer.bus.event_store import EventStore
from sandboxer.domain.key_state import KeyState, is_valid_key_id
from sandboxer.domain.rate_limit import RateLimiter, said_wait
from sandboxer.errors import RateLimited
from sandboxer.recent import Recent

__all__ = ["KeyLoader", "KeyRequestRates", "logged_keys", "refusal_fields"]

KeyLoader = Callable[[str], Awaitable[KeyState | None]]
"""A key's state by its id, as the serving process reads it (its view, or the log)."""
MAX_KEYS = 100_000
"""Keys whose rate one process keeps (the first seen go first; a key forgotten is read once
more)."""


def logged_keys(store: EventStore) -> KeyLoader:
    """The keys as the log holds them: what a worker reads (the projector reads its view)."""

    async def load(key_id: str) -> KeyState:
        return (await store.load_key(key_id)).state

    return load


class KeyRequestRates:
    """Every key identity's requests on the bus within its rate, in this process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets = RateLimiter()
        self._keys: Recent[str, KeyState] = Recent(MAX_KEYS)

    def now(self) -> float:
        """The time the buckets are measured by (seconds of a monotonic clock)."""
        return self._clock()

    async def hold(self, key_id: str, load: KeyLoader) -> None:
        """Take a token for a request of ``key_id``; :class:`RateLimited` when there is none
        (nothing is taken then). Nothing for a key that is not active (or not a key id):
        the service refuses it next as it does."""
        rate = await self._rate(key_id, load)
        if rate is None:
            return
        wait = self._buckets.take(key_id, rate, self._clock())
        if wait is not None:
            raise _refusal(key_id, rate, wait)

    async def refusal(self, key_id: str, load: KeyLoader) -> RateLimited | None:
        """What :meth:`hold` would raise now, taking nothing: for a worker that must first
        learn whether the sandbox asked about is its own to answer for (workers/key_reach.py)."""
        rate = await self._rate(key_id, load)
        if rate is None:
            return None
        wait = self._buckets.wait(key_id, rate, self._clock())
        return None if wait is None else _refusal(key_id, rate, wait)

    def actor(self, key_id: str) -> dict[str, Any] | None:
        """The actor of a key seen here while it was active (read by :meth:`hold` or
        :meth:`refusal`, never here); None for any other. Kept, not read again: a refusal
        must not tell a key anything about what it may not reach (workers/key_reach.py)."""
        known = self._keys.get(key_id)
        actor = None if known is None else known.actor
        return None if actor is None else msgspec.to_builtins(actor)

    async def _rate(self, key_id: str, load: KeyLoader) -> int | None:
        """The key's rate, read on its first request here and kept (a revoked key's state is
        kept too, revoking being for ever); None for a key that is not active."""
        known = self._keys.get(key_id)
        if known is None and is_valid_key_id(key_id):
            known = await load(key_id)
            if known is None or known.status == "none":
                return None  # not made yet, as far as this reader knows: read it again
            self._keys.put(key_id, known)
        return known.rate_per_second if known is not None and known.status == "active" else None


def _refusal(key_id: str, rate: int, wait: float) -> RateLimited:
    return RateLimited(
        f"key {key_id} may make {rate} requests a second on the bus (queries, execs, file "
        f"copies and token requests together, to each process that answers them); wait "
        f"{wait:.3f}s and ask again, or ask an administrator for a key with a higher --rate",
        retry_after=said_wait(wait),
    )


def refusal_fields(limited: RateLimited) -> dict[str, Any]:
    """What an answer refusing a request past its key's rate carries, beside ``ok`` or the
    kind of message it is (docs/protocol.md): the reason in words, the code, the wait."""
    return {"error": limited.message, "code": limited.code, "retry_after": limited.retry_after}
