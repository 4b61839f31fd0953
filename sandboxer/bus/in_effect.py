"""Waiting until nats-server has taken in what a connection sent: a subscription made is then
in effect, and a request from any connection reaches it.

``Client.flush()`` does not promise that. nats-py writes the flush's PING straight to the
socket, ahead of the commands still queued for its flusher task, a SUB just made among
them: the PONG can come back before the server has read the SUB, and a request sent in
between by another connection is answered "no responders" (a test did, under load:
tests/integration/test_responder.py). A message to the connection's own inbox is queued
behind the SUB, and the server handles one connection's commands in order: once it comes
back, everything sent before it has been taken in.
"""

from __future__ import annotations

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout

from sandboxer.errors import BusError

__all__ = ["in_effect"]

TIMEOUT = 10.0
"""Seconds the server may take to echo the probe (nats-py's own flush timeout)."""


async def in_effect(nc: Client, *, timeout: float = TIMEOUT) -> None:
    """Return once the server has processed everything ``nc`` sent before this call.

    The connection must be allowed to publish to and subscribe on its own inbox (the
    service identity is: it answers requests there).
    """
    probe = await nc.subscribe(nc.new_inbox())
    try:
        await nc.publish(probe.subject, b"")
        await probe.next_msg(timeout=timeout)
    except NatsTimeout:
        raise BusError(
            f"NATS did not echo a message to its sender within {timeout:g}s: the "
            "connection's subscriptions may not be in effect"
        ) from None
    finally:
        await probe.unsubscribe()
