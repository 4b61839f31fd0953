"""An API key's rate on the bus, held by the control worker (docs/security.md#keys-on-the-bus).

A key identity may publish commands on its own subjects (``sandboxer.cmd.<verb>.<key id>``,
which nats-server lets only that key publish). Each of them takes a token from the key's
bucket in this control worker (:class:`sandboxer.domain.rate_limit.RateLimiter`, the one the
gateway holds a key's requests with): ``rate_per_second`` a second, bursts up to as many. A
command past it is rejected with ``rate_limited`` and ``retry_after``, the seconds until the
key has a token again, before anything of it is decided.

What counts, and why:

- every command the key's own identity published, whatever its verb (a touch too);
  told apart by its subject, the only proof of who published it. A message that is not a
  command is rejected for that at once, which costs what a rate rejection costs, and takes
  no token;
- not the commands the gateway forwards as the key's actor on the plain subjects: the
  gateway counted each one as a request already. Counting them again would halve a key's
  rate over HTTP; so a key that uses both ways at once may make its rate on each;
- a command's first delivery only: one delivered again (the worker gave it back while the
  view or the bus was away, or it crashed) was counted the first time, and may have been
  decided since, which must not turn into a rejection. For the same reason a command
  refused here that its aggregate handled already (sent again past the duplicate window, a
  first delivery) is not rejected: a create or restore is answered as the worker answers
  any refused one of those, its job sent again; any other is settled with nothing recorded
  (control.py, which reads that aggregate only on this refusal path). Only when the key may
  act on it: the key's identity is asked first (workers/bus_identity.py), and a command it
  may not send (another project's create sent with that project's command id, say) is
  rejected ``rate_limited`` as one never handled, so the answer tells the key nothing.

The buckets live in each control-worker process, as the gateway's do in each gateway: with
N control workers sharing the commands a key may make up to N times its rate on the bus.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sandboxer.bus.event_store import EventStore
from sandboxer.commands.parse import key_of
from sandboxer.domain.rate_limit import RateLimiter, said_wait
from sandboxer.errors import Rejected

__all__ = ["KeyRates"]


class KeyRates:
    """Each key's commands on the bus within its rate, in this control worker."""

    def __init__(self, store: EventStore, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._clock = clock
        self._buckets = RateLimiter()

    async def hold(self, subject: str, delivered: int) -> None:
        """Take a token for the command that came on ``subject`` (its ``delivered``-th
        delivery); Rejected (``rate_limited``, with ``retry_after``) when there is none.
        Nothing for a command no key identity published, nor for a key that is not active
        (its command is refused as ``key_revoked`` next, bus_identity.py)."""
        key_id = key_of(subject)
        if key_id is None or delivered > 1:
            return
        key = (await self._store.load_key(key_id)).state
        if key.status != "active":
            return
        rate = key.rate_per_second
        wait = self._buckets.take(key_id, rate, self._clock())
        if wait is not None:
            raise Rejected(
                "rate_limited",
                f"key {key_id} may send {rate} commands a second on the bus (to each control "
                f"worker); wait {wait:.3f}s and send it again as a new command (a new "
                "command_id), or ask an administrator for a key with a higher --rate",
                retry_after=said_wait(wait),
            )
