"""Telling the parts of a process that share a connection that it came back after a loss.

nats-py takes one ``reconnected_cb`` per connection, given at connect. :func:`connect
<sandboxer.bus.connect.connect>` gives :func:`reconnected`, and each part holding
something the server may have forgotten across the loss registers here: a pull request
held by a server that restarted is gone without a word (bus/pull_requests.py), and is
better sent again at once than waited out. nats-py calls back once the connection's
subscriptions are back and a round trip has been made, so what is sent then is heard.

A connection made without :func:`connect` (nats-py's own, in a test) calls nothing: its
parts fall back on what they do when no word comes.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable

from nats.aio.client import Client

__all__ = ["connection_now", "lost_since", "reconnected", "when_reconnected"]

log = logging.getLogger(__name__)

_listeners: weakref.WeakKeyDictionary[Client, list[Callable[[], None]]] = (
    weakref.WeakKeyDictionary()
)


def when_reconnected(nc: Client, listener: Callable[[], None]) -> Callable[[], None]:
    """Call ``listener`` each time ``nc`` is connected again after a loss, until the
    function returned is called."""
    listeners = _listeners.setdefault(nc, [])
    listeners.append(listener)

    def forget() -> None:
        if listener in listeners:
            listeners.remove(listener)

    return forget


def connection_now(nc: Client) -> int | None:
    """Which of ``nc``'s connections a send made now goes out on (how many times it has come
    back so far), or None while it is down: nats-py then holds the send for the next one."""
    return nc.stats["reconnects"] if nc.is_connected else None


def lost_since(nc: Client, sent_on: int | None) -> bool:
    """Whether a send made on connection ``sent_on`` (:func:`connection_now`) went out on one
    that has been lost since: the server that had it may have died with it, or its answer
    with the old connection."""
    return sent_on is not None and sent_on < nc.stats["reconnects"]


def reconnected(nc: Client) -> None:
    """``nc`` is connected again: tell each listener (one that fails is logged, not fatal
    to the others or to nats-py's reconnecting)."""
    for listener in list(_listeners.get(nc, ())):
        try:
            listener()
        except Exception:
            log.exception("a listener of a reconnect failed")
