"""Taking messages from a durable pull consumer: one pull request at a time, each to its end.

**Why not nats-py's ``PullSubscription.fetch``.** A fetch of more than one message
can leave a pull request behind on the server, and the next message after it then
waits up to a whole poll (nats-io/nats.py#986, open for 2.15 and 2.16). The fetch's
own timer runs 0.1 ms longer than the request's ``expires``, so after any idle poll
the client usually gives up first; the request's ``408`` then arrives during the
next fetch, which takes it for its own answer and sends a second, lingering request
for the whole batch. The server now holds two requests of ours, and gives the next
message but one to the lingering one, which waits for the rest of its batch: the
fetch holding that message returns only when the request expires. Measured here
(2026-12-06, ``sandboxer up`` idle between rounds): a destroy 60 ms after its create
took 165 to 437 ms in 31 rounds of 40, against 9 to 13 ms with this module.

**What this does instead.** Each request asks for what waits, up to ``most``, and
may linger for ``wait`` seconds (``no_wait`` with ``expires``: the server holds it
until a message comes, sends what waits then, and ends it with ``404``; with none by
``expires`` it ends it with ``408``). The next request is sent only once this one
has ended: by its status, by its batch filled, or, if no word comes at all (the
connection was lost with it), after ``wait`` and :data:`GRACE`. So the server holds
at most one request of ours: none is left to take a message while no fetch waits.

A no-wait request the server refuses at once with ``408 Requests Pending`` (other
processes' requests wait for more than there is) is followed by one lingering request
for a single message, which ends with the first message or at ``wait``: never a loop of
refusals.

Every request has its own reply subject under one inbox, so a status can end only the
request it answers (a late one, of a request given up on, is dropped). A message
delivered to any of them is taken: it is the consumer's, and would otherwise wait
``ack_wait`` to come back.

**Withdrawing at a stop.** A pull request cannot be taken back, but the server gives
nothing to a request whose reply subject no one subscribes to any more: it drops the
request instead. So :meth:`PullRequests.withdraw` drains the inbox's subscription (its
unsubscribe, then a round trip to the server: whatever the server sent before it took the
unsubscribe comes first) and hands the waiting fetch what arrived. A stop then ends the
wait at once. Until 2026-12-07 a stop waited out the fetch, up to a whole poll.

The server takes a pull request in on a queue of its own, after it has read it. A request
it takes in after the unsubscribe is held all the same, and a message given to it reaches
no one: it comes back after ``ack_wait``, as from a killed worker. Measured with a real
nats-server (2026-12-07, 20 stops each racing a message's arrival, as
``tests/integration/test_pull_loop.py`` does): 3 of 4 such runs left a message so. So the
withdrawal makes a round trip to the server first (:data:`FLUSH_BEFORE_WITHDRAWING`), by
which time the server has nearly always taken the request in: no message left in 8 runs,
one in 1 of 6 runs of the test. It narrows the race; nothing a client can send closes it.

**A reconnect ends the request waiting.** A server that restarts forgets the requests it
held, and says nothing. Until 2026-12-07 the fetch waited the request out (``wait`` and
:data:`GRACE`: 2.5 s for the pull loops) before it asked again, so a worker took its next
message 2 to 3 s after its server was killed and started again, however soon the server was
back. Now a connection made by :func:`~sandboxer.bus.connect.connect` tells this module when
it is back (bus/reconnects.py), and a fetch whose request went out on the lost connection
returns what it has, so the next asks at once. (One sent while the connection was down waited
in nats-py's buffer and reached the server it came back to: that one is waited for.) The old
request, if a server kept it after all (the connection moved to another server of a
cluster), is one more held for a while, and the message it is given comes with no end of
the fetch's own request: so a fetch waits at most :data:`AFTER_FIRST` for more after its
first message, and never holds one until its own request ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
from collections.abc import AsyncIterator, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from sandboxer.bus import reconnects
from sandboxer.errors import FetchFailed

__all__ = ["FLUSH_BEFORE_WITHDRAWING", "GRACE", "PullRequests", "connection_of"]

log = logging.getLogger(__name__)

GRACE = 0.5
"""Seconds past a request's ``expires`` before it is taken for lost (no status came)."""

AFTER_FIRST = 0.05
"""Seconds a fetch waits for more after its first message (:func:`_hold_no_longer`)."""

FLUSH_BEFORE_WITHDRAWING = 1
"""Seconds the round trip before a withdrawal may take; past them the withdrawal goes on."""

_ENDED = frozenset({"404", "408"})
"""Statuses that end a request with nothing wrong: nothing (more) waits, or it expired."""

_HEARTBEAT = "100"
_NO_RESPONDERS = "503"
"""No consumer answers its subject: not led yet, or being made again (bus/guarded_durable.py)."""
_LEADERSHIP_CHANGE = "Leadership Change"
_STATUS = "Status"
_DESCRIPTION = "Description"
_PENDING = "Requests Pending"
"""A ``408`` sent at once: other requests (other processes' workers) wait for more than
the messages there are, which go to them."""


class _Word(enum.Enum):
    """What the queue of arrivals holds besides messages."""

    WITHDRAWN = "withdrawn"
    """:meth:`PullRequests.withdraw` drained the inbox: everything delivered is in."""
    RECONNECTED = "reconnected"
    """The connection is back after a loss: the request waiting may be lost with it."""


class PullRequests:
    """Pull requests for one durable, sent on ``nc``, one at a time."""

    def __init__(self, nc: Client, stream: str, durable: str) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.inbox = nc.new_inbox()
        """Under it, each request's reply subject: ``<inbox>.<n>``, n from 1."""
        self._arrived: asyncio.Queue[Msg | _Word] = asyncio.Queue()
        """What the inbox received, in order, and the words of a withdrawal and a reconnect."""
        self._sub: Subscription | None = None
        self._withdrawal: asyncio.Future[None] | None = None
        """The drain :meth:`withdraw` started; once set, no fetch sends a request."""
        self._forget_reconnects: Callable[[], None] = lambda: None
        self.requests_sent = 0

    async def open(self) -> None:
        async def arrived(msg: Msg) -> None:
            self._arrived.put_nowait(msg)

        self._sub = await self._nc.subscribe(f"{self.inbox}.*", cb=arrived)
        self._forget_reconnects = reconnects.when_reconnected(
            self._nc, lambda: self._arrived.put_nowait(_Word.RECONNECTED)
        )

    async def close(self) -> None:
        self._forget_reconnects()
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except NatsError as exc:
                log.debug("%s: unsubscribing: %r", self._next_subject, exc)

    async def withdraw(self) -> None:
        """Ask for nothing more: the request the server holds is dropped, and what it
        delivered before is handed to the fetch waiting (or to the next one). A fetch after
        this returns at once, with nothing new."""
        if self._withdrawal is None:  # set before any wait: no request is sent from now on
            self._withdrawal = asyncio.ensure_future(self._drain())
        # Shielded: a caller cancelled mid-way (a stop's watcher) leaves the drain to finish.
        await asyncio.shield(self._withdrawal)

    async def _drain(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                if self._nc.is_connected:
                    # A round trip first, so that the server has taken in the request it holds
                    # before the unsubscribe (see the module's docstring).
                    with contextlib.suppress(NatsError):
                        await self._nc.flush(timeout=FLUSH_BEFORE_WITHDRAWING)
                    await sub.drain()  # type: ignore[no-untyped-call]  # unannotated in nats-py
                else:  # nothing arrives meanwhile; a drain's round trip would wait for a server
                    await sub.unsubscribe()
            except NatsError as exc:  # closed or closing: the server dropped the request
                log.debug("%s: withdrawing: %r", self._next_subject, exc)
        self._arrived.put_nowait(_Word.WITHDRAWN)

    @contextlib.asynccontextmanager
    async def withdrawn_on(self, stop: asyncio.Event) -> AsyncIterator[None]:
        """Withdraw as soon as ``stop`` is set while the body runs, and in any case when it
        ends; a message delivered that no fetch took then goes back to the consumer at once
        (a nak), for the next worker."""

        async def when_stopped() -> None:
            await stop.wait()
            await self.withdraw()

        watcher = asyncio.create_task(when_stopped())
        try:
            yield
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await self.withdraw()
            for msg in self._left_behind():
                try:
                    await msg.nak()
                except NatsError as exc:  # it comes back after ack_wait instead
                    log.debug("%s: giving back %s: %r", self._next_subject, msg.subject, exc)

    async def fetch(self, most: int, wait: float) -> list[Msg]:
        """Up to ``most`` messages, as soon as there is one; none after ``wait`` seconds.

        Messages of an earlier request that came after it was given up on are handed over
        first, without a request. Raises :class:`FetchFailed` when the consumer refuses
        the request or does not answer it. Once withdrawn, what is left, without a wait."""
        left = self._left_behind()
        if left or self._withdrawal is not None:
            return left
        return await self._request(most, wait, {"batch": most, "no_wait": True})

    def _left_behind(self) -> list[Msg]:
        msgs = []
        while not self._arrived.empty():
            msg = self._arrived.get_nowait()
            if not isinstance(msg, _Word) and _status(msg) is None:
                msgs.append(msg)
        return msgs

    async def _request(self, most: int, wait: float, ask: dict[str, object]) -> list[Msg]:
        if self._withdrawal is not None:  # a request now would go to an inbox no one reads
            return []
        self.requests_sent += 1
        reply = f"{self.inbox}.{self.requests_sent}"
        request = {**ask, "expires": max(1_000_000, int(wait * 1e9))}
        # The connection it goes out on: a request sent while it is down waits in nats-py's
        # buffer and reaches the server it comes back to.
        sent_on = reconnects.connection_now(self._nc)
        try:
            await self._nc.publish(self._next_subject, json.dumps(request).encode(), reply)
        except NatsError as exc:
            raise FetchFailed(
                f"asking {self._next_subject} for messages: {exc!r}", passing=True
            ) from exc
        got: list[Msg] = []
        try:
            async with asyncio.timeout(wait + GRACE) as deadline:
                while len(got) < most:
                    msg = await self._arrived.get()
                    if msg is _Word.WITHDRAWN:  # everything delivered is in
                        return got + self._left_behind()
                    if msg is _Word.RECONNECTED:
                        if reconnects.lost_since(self._nc, sent_on):
                            return got  # sent on the lost connection: the next asks again
                        continue  # sent while it was down: the server it reached holds it
                    status = _status(msg)
                    if status is None:
                        if not got:
                            _hold_no_longer(deadline)
                        got.append(msg)
                    elif msg.subject == reply and status != _HEARTBEAT:
                        return await self._ended(msg, status, got, wait)
        except TimeoutError:
            if not got:
                raise FetchFailed(
                    f"{self._next_subject} did not answer a pull request within "
                    f"{wait + GRACE:g} s (no consumer leader, or the connection was lost)",
                    passing=True,
                ) from None
        return got

    async def _ended(self, msg: Msg, status: str, got: list[Msg], wait: float) -> list[Msg]:
        """``got`` when ``status`` ends the request well; a request for one message when
        other processes' requests take what waits; FetchFailed on an error."""
        description = (msg.headers or {}).get(_DESCRIPTION, "")
        if status in _ENDED and not (description == _PENDING and not got):
            return got
        if status in _ENDED:
            # Asked again for one, lingering: it ends with the first message that is not
            # another's, where a no-wait request would be refused again at once.
            return await self._request(1, wait, {"batch": 1})
        raise FetchFailed(
            f"{self._next_subject} refused a pull request: {status} {description}",
            passing=status == _NO_RESPONDERS or description == _LEADERSHIP_CHANGE,
        )


def _hold_no_longer(deadline: asyncio.Timeout) -> None:
    """After a request's first message, wait :data:`AFTER_FIRST` at most for the rest.

    What waits for a request comes with its first message, and its end (``404``) right
    after. A message one of our earlier requests was given comes with no end of this one,
    which the server may hold until it expires; so the fetch does not hold that message
    until then (up to ``wait``: it once waited out a 30 s poll, past ``ack_wait``).
    Anything of this request's that comes later is handed over by the next fetch."""
    loop = asyncio.get_running_loop()
    when = deadline.when()
    soon = loop.time() + AFTER_FIRST
    if when is None or soon < when:
        deadline.reschedule(soon)


def connection_of(js: JetStreamContext) -> Client:
    """The connection ``js`` was made on (nats-py keeps it, with no public name for it)."""
    nc: Client = js._nc
    return nc


def _status(msg: Msg) -> str | None:
    """The status of a status message (``404``, ``408``, ``409``, ``503``...), else None."""
    headers = msg.headers
    if headers is None or msg.data:
        return None
    return headers.get(_STATUS)
