"""Reading every message on one subject filter in a round trip: JetStream's batched direct get.

Used to load an aggregate (a handful of events) and by clients to catch up
on a sandbox's history. Requires ``allow_direct`` on the stream and
nats-server 2.11+ (``batch`` with ``next_by_subj``).

Any replica of a clustered stream may answer a direct get (a queue group of
them), and one may not: frozen or starved of CPU, it holds the request while
its route still looks alive, and mid-election a replica that is not current
answers nothing (no responders, 503). Either way asking again soon reaches a
replica that answers, so a batch is asked again every :data:`ATTEMPT` seconds
until the reader's ``timeout``: with the stream leader frozen, 1 read in about
360 waited out the whole 5 s before (``test_cluster.py``), the silence an exec
client takes for "no worker runs the sandbox".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from sandboxer import subjects
from sandboxer.bus.arrivals import Arrivals
from sandboxer.bus.replay_reader import replay_batches
from sandboxer.errors import BusError, ReplayUnsupported, StreamUnavailable

__all__ = ["read_subject"]

log = logging.getLogger(__name__)

BATCH = 512
ATTEMPT = 0.5
"""Seconds one replica may take to answer a batch before it is asked of another."""
RETRY_PAUSE = 0.05
"""Seconds between a batch unanswered and the next ask (an election takes a few)."""
LAST = 2**63 - 1
"""A sequence past any stored: a bulk read ends with the last message on its subjects."""


async def read_subject(
    nc: Client,
    filter_subject: str,
    *,
    timeout: float = 5.0,
    stream: str = subjects.EVENTS_STREAM,
    start: int = 1,
    bulk: JetStreamContext | None = None,
) -> AsyncIterator[tuple[int, bytes]]:
    """Yield ``(sequence, data)`` of every message on ``filter_subject`` from sequence
    ``start`` on, in order. ``timeout``: seconds a batch may go unanswered (asked again
    meanwhile) before :class:`StreamUnavailable`.

    With ``bulk`` (an identity that may make consumers: the service's), what follows a
    first full batch is read by the replay's bulk reader, six to eight times as fast as
    batches of direct gets (a long history: an account's, a sandbox touched for a week);
    where that reader cannot run here (TLS, other credentials) or stops, direct gets go on
    from where it left off."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        batch = await _batch(nc, stream, filter_subject, start, deadline)
        if batch is None:  # unanswered: ask again shortly, from the same place
            await asyncio.sleep(RETRY_PAUSE)
            continue
        messages, more = batch
        for seq, data in messages:
            start = seq + 1
            yield seq, data
        if not more:
            return
        if bulk is not None:
            try:
                chunks = replay_batches(
                    nc,
                    bulk,
                    start_seq=start,
                    stop_seq=LAST,
                    filter_subject=filter_subject,
                    stream=stream,
                )
                async with contextlib.aclosing(chunks):  # its consumer goes as the read ends
                    async for chunk in chunks:
                        for seq, data in chunk:
                            start = seq + 1
                            yield seq, data
                return
            except ReplayUnsupported:
                pass
            except (BusError, NatsError, OSError) as stopped:
                # Its consumer refused or lost, the connection dropped, delivery stalled:
                # what was read stands.
                log.warning(
                    "reading %s in bulk stopped, read on by direct gets: %s",
                    filter_subject,
                    stopped,
                )
            bulk = None
        deadline = loop.time() + timeout  # each batch has the whole timeout


async def _batch(
    nc: Client, stream: str, filter_subject: str, start: int, deadline: float
) -> tuple[list[tuple[int, bytes]], bool] | None:
    """One batch from ``start`` and whether more may follow; None when no replica answered it
    whole within :data:`ATTEMPT` seconds (what came is read again). Past ``deadline``,
    :class:`StreamUnavailable`."""
    loop = asyncio.get_running_loop()
    if loop.time() >= deadline:
        raise StreamUnavailable(
            f"reading {filter_subject}: no server of the {stream} stream answered; is it healthy?"
        )
    arrivals = Arrivals()
    # An inbox per attempt: a late answer to an earlier one cannot mix into this one's.
    sub = await nc.subscribe(nc.new_inbox(), cb=arrivals.collect)
    try:
        request = {"seq": start, "next_by_subj": filter_subject, "batch": BATCH}
        await nc.publish(
            f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=sub.subject
        )
        messages: list[tuple[int, bytes]] = []
        while True:
            try:
                await arrivals.wait(max(0.0, min(ATTEMPT, deadline - loop.time())))
            except TimeoutError:
                return None
            for msg in arrivals.take():
                headers = msg.headers or {}
                status = headers.get("Status")
                if status == "404":  # nothing (more) on the subject
                    return messages, False
                if status == "204":  # end of this batch (the server sends it last)
                    return messages, len(messages) >= BATCH
                if status == "503":  # no replica current (mid-election): ask again
                    return None
                if status is not None:
                    raise BusError(f"reading {filter_subject} failed: {status} {headers}")
                messages.append((int(headers["Nats-Sequence"]), msg.data))
    finally:
        await sub.unsubscribe()
