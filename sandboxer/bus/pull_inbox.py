"""Closing a pull subscription's inbox to new deliveries while keeping what already came.

A worker that stops while its fetch waits must not lose a message the server delivered
to that fetch's request. Unsubscribing at once would drop one still on the wire (it
would come back only after ``ack_wait``); so the server is told first to deliver
nothing more to the inbox, and one round trip later everything it delivered before is
in the subscription's pending queue, where the waiting fetch takes it.

nats-py has no public call that stops the server's deliveries and keeps the local
subscription, so this module is the one place that reaches into it.
"""

from __future__ import annotations

from nats.errors import Error as NatsError
from nats.js import JetStreamContext

__all__ = ["close_inbox"]

CLOSE_TIMEOUT = 1
"""Seconds the round trip may take (nats-py's flush wants whole seconds)."""


async def close_inbox(psub: JetStreamContext.PullSubscription) -> bool:
    """Stop the server's deliveries to ``psub`` and wait until those made before are read.

    True when done; False when the bus did not answer (closed, reconnecting): then a
    message on its way may be lost here and the server gives it again after ``ack_wait``,
    as after a crash. ``psub`` still needs its ``unsubscribe()`` afterwards.
    """
    sub = psub._sub
    try:
        await sub._conn._send_unsubscribe(sub._id)  # the server's side only
        await sub._conn.flush(CLOSE_TIMEOUT)  # the messages before it precede its PONG
    except (NatsError, TimeoutError):
        return False
    return True
