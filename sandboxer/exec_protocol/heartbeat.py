"""How a client tells a worker that went silent from a command or a copy that is quiet.

A worker killed with ``kill -9``, or whose host vanished, sends no ``exit`` (exec) or
``done`` (files): without more, its client would wait on silence until its own timeout
(an hour for ``sandboxer exec`` and ``sandboxer cp``). But a running worker is never
silent for long: every :data:`INTERVAL` seconds (``SANDBOXER_EXEC_HEARTBEAT``) while it
runs a command or a copy it
sends an ``alive`` check to the request's inbox (:func:`beat`), and that check doubles as
its heartbeat. Its ``started`` message promises so in the header :data:`HEADER`, whose
value is the most seconds it stays silent. A client that then hears nothing at all (no
output, no ``alive``) for :data:`MISSES` such spells gives up, saying the worker stopped
answering (:func:`next_answer`).

A worker older than the header promises nothing, so its client waits as clients always
did: for the ``exit`` or ``done``, until its own timeout.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from sandboxer.bus.ask import next_message
from sandboxer.config.settings import DEFAULT_EXEC_HEARTBEAT
from sandboxer.errors import WorkerLost

__all__ = [
    "CHECK_TIMEOUT",
    "HEADER",
    "INTERVAL",
    "MISSES",
    "allowed_silence",
    "beat",
    "next_answer",
]

log = logging.getLogger(__name__)

HEADER = "Sandboxer-Exec-Heartbeat"
"""On ``started``: seconds between two ``alive`` checks. Exec's first, and copies' since
(they run through the same workers and backend exec): one header, one meaning."""
INTERVAL = DEFAULT_EXEC_HEARTBEAT
"""Seconds between a worker's ``alive`` checks on one request's inbox, unless its settings
say otherwise (:attr:`~sandboxer.config.settings.Settings.exec_heartbeat`)."""
CHECK_TIMEOUT = 1.0
"""Seconds an ``alive`` request waits: a timeout means the client is there (it never answers)."""
MISSES = 3
"""Heartbeats a client lets pass unheard before it takes the worker for gone: one lost to
a reconnect of either side is not enough."""


def allowed_silence(headers: Mapping[str, str] | None) -> float | None:
    """Seconds of silence after which a client stops waiting, from the ``started``
    message's ``headers``; None (wait as before) when the worker promised no heartbeat,
    or promised one this client cannot read."""
    try:
        every = float((headers or {})[HEADER])
    except (KeyError, ValueError):
        return None
    if not math.isfinite(every) or every <= 0:
        return None
    return every * MISSES


async def beat(
    nc: Client, reply: str, alive: Mapping[str, str], started: float, interval: float
) -> str:
    """Send ``alive`` checks (headers ``alive``) to ``reply`` every ``interval`` seconds from
    monotonic time ``started`` (when the ``started`` message promised them), whatever a
    check took; return (a reason) once nothing subscribes to ``reply`` any more."""
    due = started
    while True:
        due += interval
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        try:
            await nc.request(reply, b"", headers=dict(alive), timeout=CHECK_TIMEOUT)
        except NoRespondersError:
            return "the client stopped listening"
        except Exception as exc:
            # A timeout is the usual answer (clients ignore ``alive``): still there. The
            # bus being away for a moment proves nothing either: ask again later.
            log.debug("client check on %s: %r", reply, exc)


async def next_answer(
    sub: Subscription, silence: float | None, *, sandbox_id: str, doing: str, unknown: str
) -> Msg:
    """The next message on a request's inbox; :class:`WorkerLost` after ``silence`` seconds
    without one (the worker's heartbeats stopped). ``doing``: what the worker was doing;
    ``unknown``: what that leaves the caller not knowing (both for the error's message)."""
    try:
        return await (sub.next_msg(timeout=None) if silence is None else next_message(sub, silence))
    except NatsTimeout:
        raise WorkerLost(
            f"the worker {doing} in sandbox {sandbox_id} stopped answering (nothing from it "
            f"for {silence:g} s): it was killed, or lost its host or its connection. {unknown}",
            sandbox_id=sandbox_id,
        ) from None
