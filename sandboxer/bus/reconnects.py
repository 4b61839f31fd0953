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

__all__ = ["reconnected", "when_reconnected"]

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


def reconnected(nc: Client) -> None:
    """``nc`` is connected again: tell each listener (one that fails is logged, not fatal
    to the others or to nats-py's reconnecting)."""
    for listener in list(_listeners.get(nc, ())):
        try:
            listener()
        except Exception:
            log.exception("a listener of a reconnect failed")
