"""Connecting to NATS: the one place connection options are chosen, and where a
connection's asynchronous errors are logged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from nats.aio.client import Client
from nats.errors import SlowConsumerError

from sandboxer.bus import nats_websockets, reconnects
from sandboxer.bus.nats_auth import NatsCredentials
from sandboxer.domain.key_state import is_valid_key_id
from sandboxer.errors import BusError

__all__ = ["connect", "redact_url"]

log = logging.getLogger(__name__)

DROPS_SUMMARY_SECONDS = 5.0
"""How often, at most, a connection logs the messages its slow subscriptions dropped."""

RECONNECT_WAIT = 0.5
"""Seconds between two attempts to reach the same server again."""

FLUSH_TIMEOUT = 5.0
"""Seconds a publish waits for nats-py's outgoing buffer to be written, once the buffer is
past its limit (2 MB), before it goes on to wait for its reply under its own timeout.

nats-py waits for ever by default, and swallows the cancellation of that wait: a server
that reads nothing (frozen, or its host gone without a reset) held every publish, whatever
its timeout or budget, for as long as it read nothing
(``tests/integration/test_publish.py``)."""


class DroppedMessages:
    """Logs the messages a connection's slow subscriptions dropped: the first at once, then
    how many on which subjects at most every :data:`DROPS_SUMMARY_SECONDS`.

    nats-py reports each message it drops from a subscription whose pending limits are full
    (a slow ``events --follow``, a busy worker) as its own error, thousands a second in a
    burst: one line each would bury the log, and everything else in it.
    """

    def __init__(self, name: str, level: int) -> None:
        self.name = name
        self.level = level
        self._counts: Counter[str] = Counter()
        self._summary: asyncio.TimerHandle | None = None

    def note(self, subject: str) -> None:
        if self._summary is None:  # the first of a spell: said at once
            log.log(
                self.level,
                "NATS (%s): a slow subscription dropped a message on %s (its pending limit is "
                "full); further drops are summed up every %g s",
                self.name,
                subject,
                DROPS_SUMMARY_SECONDS,
            )
            self._schedule()
            return
        self._counts[subject] += 1

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        self._summary = loop.call_later(DROPS_SUMMARY_SECONDS, self._summarize)

    def _summarize(self) -> None:
        if not self._counts:  # the spell is over: the next drop is said at once again
            self._summary = None
            return
        shown = ", ".join(f"{count} on {subject}" for subject, count in self._counts.most_common())
        log.log(
            self.level,
            "NATS (%s): slow subscriptions dropped %d more messages in %g s: %s",
            self.name,
            self._counts.total(),
            DROPS_SUMMARY_SECONDS,
            shown,
        )
        self._counts.clear()
        self._schedule()

    def close(self) -> None:
        """Stop the pending summary (its counts are dropped with the connection)."""
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None


def redact_url(url: str) -> str:
    """``url`` without a password it may carry (``nats://user:***@host:port``)."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if parts.password is None and "@" not in parts.netloc:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}" if user else f"***@{host}"))


async def connect(
    urls: Sequence[str],
    *,
    name: str,
    long_lived: bool = True,
    credentials: NatsCredentials | None = None,
    outlast: float = 0.0,
) -> Client:
    """Connect to ``urls`` (a list: nats-py does not split comma strings).

    Long-lived workers reconnect forever and ping often so a dead server is
    noticed quickly; short CLI clients fail fast instead. ``outlast``: seconds a short
    one, once connected, reconnects after losing its server (a restart: the embedded
    server is started again at once, bus/embedded_restart.py) before it closes; a
    connect that fails still fails at once. ``credentials`` (see
    :mod:`sandboxer.bus.nats_auth`) authenticate the connection. Each time it is back after
    a loss, it tells whoever registered with :mod:`sandboxer.bus.reconnects`.
    """
    nats_websockets.allow_for(urls)
    auth: dict[str, Any] = {}
    if credentials is not None:
        auth = {"user": credentials.user, "password": credentials.password}
        if is_valid_key_id(credentials.user):  # an API key's identity receives on its inbox only
            auth["inbox_prefix"] = f"_INBOX.{credentials.user}"
    nc = Client()
    level = logging.WARNING if long_lived else logging.DEBUG
    dropped = DroppedMessages(name, level)

    async def on_error(exc: Exception) -> None:
        if isinstance(exc, SlowConsumerError):  # one per dropped message: summed up instead
            dropped.note(exc.subject)
            return
        # One line, no traceback: a refused connect is raised below as a BusError, and a
        # long-lived worker's asynchronous errors (a permission violation) are worth a warning.
        log.log(level, "NATS (%s): %s", name, exc)

    async def on_closed() -> None:
        dropped.close()

    async def on_reconnected() -> None:
        reconnects.reconnected(nc)

    try:
        await nc.connect(
            servers=list(urls),
            name=name,
            connect_timeout=2,
            allow_reconnect=long_lived,
            # Not 0 for a short one: nats-py reads 0 as no limit, and a CLI call (or a client)
            # given a server that is down then tried it every 2 s for ever.
            max_reconnect_attempts=-1 if long_lived else 1,
            reconnect_time_wait=RECONNECT_WAIT,  # type: ignore[arg-type]  # a float works
            ping_interval=5 if long_lived else 120,
            max_outstanding_pings=3,
            flush_timeout=FLUSH_TIMEOUT,
            error_cb=on_error,
            closed_cb=on_closed,
            reconnected_cb=on_reconnected,
            **auth,
        )
    except Exception as exc:  # nats-py raises several unrelated types for "cannot reach"
        dropped.close()
        await _discard(nc)
        shown = ", ".join(redact_url(url) for url in urls)
        if (
            "authorization violation" in str(exc).lower()
            and credentials
            and auth.get("inbox_prefix")
        ):
            raise BusError(
                f"NATS at {shown} refused API key {credentials.user}: the key is revoked, was "
                "created without a bus identity, or was created a moment ago (its NATS user is "
                "loaded within a second; docs/security.md#keys-on-the-bus)"
            ) from exc
        if "authorization violation" in str(exc).lower():
            who = f"user {credentials.user!r}" if credentials else "an anonymous connection"
            raise BusError(
                f"NATS at {shown} refused {who}: authorization violation. With the embedded "
                "server the credentials are in $SANDBOXER_HOME/nats-auth; for a shared NATS "
                "point SANDBOXER_NATS_AUTH at the directory of yours (docs/security.md)."
            ) from exc
        raise BusError(
            f"cannot reach NATS at {shown}: {exc}. "
            "Start the service with 'sandboxer up' or check SANDBOXER_NATS_URL."
        ) from exc
    if outlast > 0 and not long_lived:
        # nats-py reads these as it loses a server, so from now on that starts reconnects
        # (each server tried this many times, RECONNECT_WAIT apart), not the close.
        nc.options["allow_reconnect"] = True
        nc.options["max_reconnect_attempts"] = max(1, math.ceil(outlast / RECONNECT_WAIT))
    return nc


async def _discard(nc: Client) -> None:
    """Close what a failed connect left open (a refused one keeps its socket otherwise)."""
    with contextlib.suppress(Exception):
        await nc.close()
    transport = getattr(nc, "_transport", None)
    if transport is not None:
        with contextlib.suppress(Exception):
            transport.close()
