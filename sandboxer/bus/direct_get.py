"""Reading every message on one subject filter in a round trip: JetStream's batched direct get.

Used to load an aggregate (a handful of events) and by clients to catch up
on a sandbox's history. Requires ``allow_direct`` on the stream and
nats-server 2.11+ (``batch`` with ``next_by_subj``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from nats.aio.client import Client

from sandboxer import subjects
from sandboxer.bus.arrivals import Arrivals
from sandboxer.errors import BusError, StreamUnavailable

__all__ = ["read_subject"]

BATCH = 512


async def read_subject(
    nc: Client,
    filter_subject: str,
    *,
    timeout: float = 5.0,
    stream: str = subjects.EVENTS_STREAM,
    start: int = 1,
) -> AsyncIterator[tuple[int, bytes]]:
    """Yield ``(sequence, data)`` of every message on ``filter_subject`` from sequence
    ``start`` on, in order (the answers are taken in bursts: ``arrivals``)."""
    arrivals = Arrivals()
    sub = await nc.subscribe(nc.new_inbox(), cb=arrivals.collect)
    try:
        while True:
            request = {"seq": start, "next_by_subj": filter_subject, "batch": BATCH}
            await nc.publish(
                f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=sub.subject
            )
            received = 0
            batch_over = False
            while not batch_over:
                try:
                    await arrivals.wait(timeout)
                except TimeoutError:
                    # No replica answered: mid-election or a server down. Callers wait it out.
                    raise StreamUnavailable(
                        f"reading {filter_subject} timed out; is the {stream} stream healthy?"
                    ) from None
                for msg in arrivals.take():
                    headers = msg.headers or {}
                    status = headers.get("Status")
                    if status == "404":
                        return
                    if status == "204":  # end of this batch (the server sends it last)
                        batch_over = True
                        break
                    if status == "503":
                        raise StreamUnavailable(
                            f"reading {filter_subject}: no server of the {stream} stream "
                            "answered (503)"
                        )
                    if status is not None:
                        raise BusError(f"reading {filter_subject} failed: {status} {headers}")
                    seq = int(headers["Nats-Sequence"])
                    received += 1
                    start = seq + 1
                    yield seq, msg.data
            if received < BATCH:
                return
    finally:
        await sub.unsubscribe()
