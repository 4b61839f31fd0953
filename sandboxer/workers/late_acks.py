"""Acks sent a moment after the work they settle, off the path of whatever waits on that work.

A work-queue stream deletes a message as it takes its ack. The deletion costs nats-server
CPU at once, in the middle of whatever else it is serving: a create's command was acked as
soon as its events were stored, just as its job was on its way to the extension worker and
the worker's first append to the events stream. On the 2-core machine of 2026-12-07 that
ack took 0.5 to 1 ms of nats-server's CPU within a warm create's window of about 6 ms
(``make bench``'s "nats-server's CPU in its window" row), and the create took 0.4 ms longer
on average with it there than with every ack sent 20 ms later (nine rounds of 60 creates,
alternating: docs/performance.md#acks-after-the-chain-2026-12-07-evening).

So a handled message is acked :data:`ACK_AFTER` later, with whatever else was handled
meanwhile: one write to the server for them all. The price is small and already paid
elsewhere: a worker killed in between has the message redelivered, as one killed between its
last append and its ack always had, and every handler takes a redelivered message it
finished for a copy (a command's outcome stands; a job finds its work on record). The
consumers' ``max_ack_pending`` (256 at least) is far above what a worker handles in that
moment, so no delivery waits for these acks. A stopping pull loop sends its acks at once,
and waits for the server to have read them: the connection may be closed next.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

__all__ = ["ACK_AFTER", "LateAcks"]

log = logging.getLogger(__name__)

ACK_AFTER = 0.02
"""Seconds a handled message waits for its ack: past a create's chain (5 to 15 ms here)."""

FLUSH_TIMEOUT = 2
"""Seconds a stopping loop waits for the server to have read its last acks (nats-py takes
whole seconds); past it, they are redelivered after ``ack_wait`` and taken for copies."""


class LateAcks:
    """The acks of one pull loop's handled messages (on ``nc``), sent together
    :data:`ACK_AFTER` after the first of them."""

    def __init__(self, nc: Client, after: float | None = None) -> None:
        self._nc = nc
        self._after = ACK_AFTER if after is None else after
        self._due: list[Msg] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def ack(self, msg: Msg) -> None:
        """Ack ``msg`` soon (at most :data:`ACK_AFTER` from now)."""
        self._due.append(msg)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._after, self._send_due)

    def _send_due(self) -> None:
        self._timer = None
        due, self._due = self._due, []
        task = asyncio.get_running_loop().create_task(_send(due))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def flush(self) -> None:
        """Send every ack now, wait for those already being sent, and for the server to have
        read them all."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due, self._due = self._due, []
        await asyncio.gather(_send(due), *self._sending)
        if self._nc.is_connected:
            try:
                await self._nc.flush(timeout=FLUSH_TIMEOUT)
            except (NatsError, TimeoutError) as exc:
                log.warning("acks not confirmed sent (%r); they come back as copies", exc)


async def _send(msgs: list[Msg]) -> None:
    # Each ack is a publish that only joins nats-py's pending writes; they go out together.
    for msg in msgs:
        try:
            await msg.ack()
        except NatsError as exc:  # redelivered after ack_wait, and taken for a copy then
            log.warning("could not ack %s: %r; it will be redelivered", msg.subject, exc)
