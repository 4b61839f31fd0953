"""One JetStream publish and its ack, through an inbox the connection keeps for its acks.

**Why not nats-py's ``JetStreamContext.publish``.** It waits through the connection's
request machinery (a NUID and random bytes for each reply subject, ``asyncio.wait_for``,
a done-callback per future), then reads the ack with the standard library's JSON decoder
and builds its ``PubAck`` by introspecting the dataclass's fields. Every append, job and
command pays that on the critical path of a create. Measured here (2026-12-07, a real
nats-server, ``bench/publish_ack.py``: the two ways taking turns) it costs 30 µs more CPU a
publish back to back, and 50 to 80 µs after 50 ms idle, than this module's way
(docs/performance.md, "The warm path").

**What this does instead.** Each connection gets one subscription, ``<inbox>.*``, made at
its first publish; each publish gets the next number under it as its reply subject, and a
future the subscription's callback resolves. Errors keep the types nats-py raises, so
:mod:`sandboxer.bus.publish` tells them apart as before: the server's "no responders"
status is :class:`NoStreamResponseError`, no ack within the timeout nats-py's
``TimeoutError``, and an ack carrying an error the :class:`APIError` for its code.

Several publishes may go out at once, in order, before any ack is awaited
(:func:`publish_all_for_ack`): what a stream does with each depends on the ones before it
only through the expectations their headers state.

An ack that comes after its publish gave up finds no future and is dropped, as nats-py
drops it. A reconnect re-sends the subscription (nats-py does that for every one). A publish
sent before the connection was lost may never be answered: the server that had it may have
died with it, or its ack with the old connection. Once the connection says it is back
(bus/reconnects.py) such a publish is answered as unanswered (nats-py's ``TimeoutError``)
at once, and its caller sends it again under the same message id (a duplicate, if it had
landed), where it used to wait out its whole timeout (5 s: the slowest command of the fault
suite's ``embedded-kill``). A publish made while the connection was down is sent when it is
back, and waits for its ack as any other.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections.abc import Sequence

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError

from sandboxer.bus import reconnects

__all__ = ["Outgoing", "publish_all_for_ack", "publish_for_ack"]

_NO_RESPONDERS = "503"

Outgoing = tuple[str, bytes, dict[str, str]]
"""A publish to send: its subject, its data and its headers."""


class _Ack(msgspec.Struct):
    """What the stream answers a publish (its fields we read; the rest are ignored)."""

    stream: str = ""
    seq: int = 0
    duplicate: bool | None = None
    domain: str | None = None
    error: dict[str, object] | None = None


class _AckInbox:
    """The acks of one connection's publishes, by reply subject."""

    def __init__(self, nc: Client) -> None:
        # Nothing here refers to the connection (nor to its subscription, which does): it is
        # this object's key in a weak mapping, and goes with its last user.
        self._prefix = nc.new_inbox() + "."
        self._numbers = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._sent_on: dict[str, int | None] = {}
        """The connection each publish waiting went out on, by reply subject
        (:func:`~sandboxer.bus.reconnects.connection_now`)."""
        self._subscribed = False
        self._opening = asyncio.Lock()

    async def _opened(self, nc: Client) -> None:
        async with self._opening:  # two first publishes at once make one subscription
            if not self._subscribed:
                await nc.subscribe(self._prefix + "*", cb=self._arrived)
                self._subscribed = True

    def connection_back(self, nc: Client | None) -> None:
        """``nc`` is back after a loss: what was sent before it is answered as unanswered."""
        if nc is None:
            return
        for reply, sent_on in list(self._sent_on.items()):
            future = self._waiting.get(reply)
            if reconnects.lost_since(nc, sent_on) and future is not None and not future.done():
                future.set_exception(NatsTimeout())

    async def _arrived(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject, None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def publish_all(
        self, nc: Client, messages: Sequence[Outgoing], timeout: float
    ) -> list[PubAck | Exception]:
        """Send ``messages`` in order, then await each one's ack (one publish is a list of
        one: the same path)."""
        if not self._subscribed:
            await self._opened(nc)
        loop = asyncio.get_running_loop()
        expected: list[tuple[str, asyncio.Future[Msg]]] = []
        for _ in messages:
            reply = f"{self._prefix}{next(self._numbers)}"
            expected.append((reply, loop.create_future()))
            self._waiting[reply] = expected[-1][1]
        results: list[PubAck | Exception] = []
        try:
            for (subject, data, headers), (reply, _future) in zip(messages, expected, strict=True):
                self._sent_on[reply] = reconnects.connection_now(nc)
                await nc.publish(subject, data, reply=reply, headers=headers)
            deadline = loop.time() + timeout
            for _reply, future in expected:
                try:
                    async with asyncio.timeout_at(deadline):
                        results.append(_read_ack(await future))
                except TimeoutError:  # nats-py's too: unanswered when the connection came back
                    results.append(NatsTimeout())
                except (APIError, NoStreamResponseError) as refused:
                    results.append(refused)
        finally:
            for reply, future in expected:
                self._waiting.pop(reply, None)
                self._sent_on.pop(reply, None)
                if future.done() and not future.cancelled():
                    future.exception()  # read: one failed by a reconnect as a send raised
        return results


def _read_ack(msg: Msg) -> PubAck:
    if not msg.data and msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
        raise NoStreamResponseError
    ack = msgspec.json.decode(msg.data, type=_Ack)
    if ack.error is not None:
        APIError.from_error(ack.error)  # raises the error's own class (by its code)
    return PubAck(stream=ack.stream, seq=ack.seq, domain=ack.domain, duplicate=ack.duplicate)


_INBOXES: weakref.WeakKeyDictionary[Client, _AckInbox] = weakref.WeakKeyDictionary()


def _inbox(nc: Client) -> _AckInbox:
    inbox = _INBOXES.get(nc)
    if inbox is None:
        inbox = _INBOXES[nc] = _AckInbox(nc)
        connection = weakref.ref(nc)  # held by what nc is the key of: not nc itself
        reconnects.when_reconnected(nc, lambda: inbox.connection_back(connection()))
    return inbox


async def publish_for_ack(
    nc: Client, subject: str, data: bytes, *, headers: dict[str, str], timeout: float
) -> PubAck:
    """Publish ``data`` to a stream's ``subject`` on ``nc``; the stream's ack, or the error
    nats-py's own JetStream publish would raise."""
    (answer,) = await _inbox(nc).publish_all(nc, [(subject, data, headers)], timeout)
    if isinstance(answer, Exception):
        raise answer
    return answer


async def publish_all_for_ack(
    nc: Client, messages: Sequence[Outgoing], *, timeout: float
) -> list[PubAck | Exception]:
    """Send ``messages`` on ``nc`` in order, all before any ack is awaited (one round trip for
    all, where one after another pays one each); for each, its ack or the error
    :func:`publish_for_ack` would raise for it (nats-py's ``TimeoutError`` for an ack not in
    within ``timeout`` seconds of the sending). A failure to send raises."""
    return await _inbox(nc).publish_all(nc, messages, timeout)
