"""Reading the event log: in order through an ordered push consumer (the fast path for
replay), and where it ends (``last_sequence``, ``last_event``).

``read_events`` yields ``(seq, subject, data, pending)`` from ``start_seq``,
``pending`` being how many matching events are known to follow this one: those
the server still holds, and those already received behind it. With
``follow=False`` it stops once it has caught up with the stream (or reached
``stop_seq``), at once when nothing matches the filter (one question to the
server, not an ``idle_timeout`` of silence); with ``follow=True`` it waits for
new events forever.

``settle`` (follow only) lets a flow of events that starts after a quiet spell
run on until it pauses for that long (at most ``SETTLE_LIMIT``) before any of it
is yielded. A reader in the same process as the workers uses it to stay behind
a command's chain of appends: those are made one after another, each awaited,
and folding one while the next is on its way held the next up.

Messages are collected by a subscription callback and drained in bursts
(``arrivals``): awaiting ``next_msg`` per message (a timer each) costs more
than everything else in a replay. Nothing bounds what is held: the callback
never waits (so the server's flow control is answered at once), and a caller
that stops taking, such as an export waiting for its endpoint, holds every
matching event the server sends meanwhile, up to all the log holds (500 of 500
in ``test_meter_export``). Such a caller asks for one event at a time instead
(``workers/meter_export.usage_after``).

A server that restarts drops the reader's consumer without a word. nats-py makes it again,
from the event after the last one received, once two heartbeats are missed
(``FOLLOW_HEARTBEAT``). A connection made by :func:`~sandboxer.bus.connect.connect` also
says when it is back (bus/reconnects.py), and the reader then makes it again at once: a
following reader used to read on 2 s after its server was back, and a reader that does not
follow (it has no heartbeats) took the silence for the end of what matched.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from sandboxer import subjects
from sandboxer.bus import reconnects
from sandboxer.bus.arrivals import Arrivals
from sandboxer.bus.pull_requests import connection_of
from sandboxer.errors import StreamUnavailable

__all__ = ["LastEvent", "last_event", "last_sequence", "read_events"]

PENDING_LIMIT = 1_000_000
"""nats-py's queue between the socket and the callback, in messages (and KiB). Past it
nats-py drops a message, after the ordered consumer's sequence check has counted it: a gap no
one would notice. The callback only appends to ``arrivals``, so the queue holds at most what
one read of the socket (32 KiB) brought: the limit is never reached."""
FOLLOW_HEARTBEAT = 1.0
"""Seconds between the server's heartbeats to a following reader while nothing is new. Two
missed, nats-py makes the reader's consumer again from where it was: after the server
restarted (which drops the consumer), a follower reads on within 2 s of it, where nats-py's
5 s default took up to 10 (about 5 measured: docs/reliability.md, the embedded server)."""
SETTLE_LIMIT = 0.01
"""Longest a settling reader holds back events while more keep coming (a steady flow)."""


async def last_sequence(js: JetStreamContext) -> int:
    """The events stream's last sequence (0 when empty); :class:`StreamUnavailable` when the
    stream does not answer."""
    try:
        info = await js.stream_info(subjects.EVENTS_STREAM)
    except (NatsError, TimeoutError) as exc:
        raise StreamUnavailable(f"the events stream did not say where it ends: {exc!r}") from exc
    return int(info.state.last_seq)


class LastEvent(msgspec.Struct, frozen=True):
    """The last event stored on a subject (:func:`last_event`)."""

    seq: int
    event_id: str | None
    """Its ``Nats-Msg-Id`` header: the event's id."""


class _Stored(msgspec.Struct):
    seq: int
    hdrs: str = ""


class _MsgGet(msgspec.Struct):
    message: _Stored | None = None
    error: dict[str, object] | None = None


_MSG_GET = msgspec.json.Decoder(_MsgGet)


async def last_event(nc: Client, subject: str, *, timeout: float = 1.0) -> LastEvent | None:
    """The last event stored on ``subject`` (a filter), asked of the events stream's leader:
    a direct get may be answered by a replica that lags. None when none is stored there;
    :class:`StreamUnavailable` when the stream does not answer.

    Not nats-py's ``get_last_msg``: it parses the headers with the standard library's e-mail
    parser, which took a client 110 µs more CPU for each command it saw finish (of 290 µs
    in all, measured 2026-12-07)."""
    request = msgspec.json.encode({"last_by_subj": subject})
    try:
        reply = await nc.request(
            f"$JS.API.STREAM.MSG.GET.{subjects.EVENTS_STREAM}", request, timeout=timeout
        )
        answer = _MSG_GET.decode(reply.data)
    except (NatsError, TimeoutError, msgspec.DecodeError) as exc:
        raise StreamUnavailable(f"the events stream did not answer for {subject}: {exc!r}") from exc
    if answer.message is None:
        if answer.error is not None and answer.error.get("code") == 404:
            return None
        raise StreamUnavailable(f"the events stream refused to read {subject}: {answer.error}")
    return LastEvent(answer.message.seq, _msg_id(base64.b64decode(answer.message.hdrs)))


def _msg_id(headers: bytes) -> str | None:
    """``Nats-Msg-Id`` of a stored message's header block (``NATS/1.0`` and one line each)."""
    for line in headers.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"nats-msg-id":
            return value.strip().decode(errors="replace")
    return None


async def read_events(
    js: JetStreamContext,
    *,
    start_seq: int = 1,
    filter_subject: str = subjects.EVENTS,
    stop_seq: int | None = None,
    follow: bool = False,
    idle_timeout: float = 1.0,
    settle: float = 0.0,
) -> AsyncIterator[tuple[int, str, bytes, int]]:
    if not follow:
        end = await last_sequence(js) if stop_seq is None else stop_seq
        if end < start_seq:
            return
        stop_seq = end
    arrivals = Arrivals()
    sub = await js.subscribe(
        filter_subject,
        stream=subjects.EVENTS_STREAM,
        cb=arrivals.collect,
        ordered_consumer=True,
        idle_heartbeat=FOLLOW_HEARTBEAT if follow else None,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        config=ConsumerConfig(opt_start_seq=max(start_seq, 1)),
        pending_msgs_limit=PENDING_LIMIT,
        pending_bytes_limit=PENDING_LIMIT * 1024,
    )
    forget_reconnects = reconnects.when_reconnected(
        connection_of(js), lambda: _read_on_from_where_it_was(sub)
    )
    try:
        if not follow and not arrivals.pending and not await _any_to_deliver(sub):
            return  # nothing from start_seq matches the filter (an unknown sandbox's events)
        while True:
            if not arrivals.pending:
                try:
                    await arrivals.wait(idle_timeout)
                except TimeoutError:
                    if follow:
                        continue
                    return  # nothing more matches the filter
                if follow and settle:
                    await _until_paused(arrivals.pending, settle)
            burst = arrivals.take()
            behind = len(burst)
            for msg in burst:
                meta = msg.metadata
                seq = meta.sequence.stream
                if stop_seq is not None and seq > stop_seq:
                    return
                behind -= 1
                # the server's count includes those behind it that were stored before it was sent
                yield seq, msg.subject, msg.data, max(meta.num_pending, behind)
                if not follow and (seq == stop_seq or meta.num_pending == 0):
                    return
    finally:
        forget_reconnects()
        await sub.unsubscribe()


_RESETS: set[asyncio.Task[bool]] = set()
"""Consumers being made again after a reconnect (held until done: a task is weakly kept)."""


def _read_on_from_where_it_was(sub: JetStreamContext.PushSubscription) -> None:
    """Make the ordered consumer behind ``sub`` again, from the event after the last one it
    received: what nats-py does itself after two missed heartbeats, through the same method
    (not public in nats-py 2.x; a reader without it falls back on the heartbeats)."""
    state = getattr(getattr(sub, "_sub", None), "_jsi", None)  # the subscription it wraps
    if state is None or not hasattr(state, "reset_ordered_consumer"):
        return
    task = asyncio.ensure_future(state.reset_ordered_consumer(state._sseq + 1))
    _RESETS.add(task)
    task.add_done_callback(_RESETS.discard)


async def _any_to_deliver(sub: JetStreamContext.PushSubscription) -> bool:
    """Whether the new consumer behind ``sub`` has delivered, or holds, an event; True too
    when the server cannot say (the reader then waits for one, as without asking), and in a
    cluster, where the consumer may sit on a replica that has not stored the stream's last
    events yet (its count would then say none where some are)."""
    try:
        info = await sub.consumer_info()
    except (NatsError, TimeoutError):
        return True
    if info.cluster is not None:
        return True
    return bool(info.num_pending or (info.delivered and info.delivered.consumer_seq))


async def _until_paused(arrived: list[Msg], settle: float) -> None:
    """Return once ``arrived`` has not grown for ``settle`` seconds, or once ``SETTLE_LIMIT``
    has passed (after one wait, if ``settle`` is the longer)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + SETTLE_LIMIT
    while True:
        seen = len(arrived)
        await asyncio.sleep(settle)
        if len(arrived) == seen or loop.time() >= give_up:
            return
