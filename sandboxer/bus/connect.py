"""Connecting to NATS: the one place connection options are chosen."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from nats.aio.client import Client

from sandboxer.bus.nats_auth import NatsCredentials
from sandboxer.domain.key_state import is_valid_key_id
from sandboxer.errors import BusError

__all__ = ["connect", "redact_url"]

log = logging.getLogger(__name__)


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
) -> Client:
    """Connect to ``urls`` (a list: nats-py does not split comma strings).

    Long-lived workers reconnect forever and ping often so a dead server is
    noticed quickly; short CLI clients fail fast instead. ``credentials`` (see
    :mod:`sandboxer.bus.nats_auth`) authenticate the connection.
    """
    auth: dict[str, Any] = {}
    if credentials is not None:
        auth = {"user": credentials.user, "password": credentials.password}
        if is_valid_key_id(credentials.user):  # an API key's identity receives on its inbox only
            auth["inbox_prefix"] = f"_INBOX.{credentials.user}"
    nc = Client()

    async def on_error(exc: Exception) -> None:
        # One line, no traceback: a refused connect is raised below as a BusError, and a
        # long-lived worker's asynchronous errors (a permission violation) are worth a warning.
        log.log(logging.WARNING if long_lived else logging.DEBUG, "NATS (%s): %s", name, exc)

    try:
        await nc.connect(
            servers=list(urls),
            name=name,
            connect_timeout=2,
            allow_reconnect=long_lived,
            max_reconnect_attempts=-1 if long_lived else 0,
            reconnect_time_wait=0.5,  # type: ignore[arg-type]  # a float works
            ping_interval=5 if long_lived else 120,
            max_outstanding_pings=3,
            error_cb=on_error,
            **auth,
        )
    except Exception as exc:  # nats-py raises several unrelated types for "cannot reach"
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
    return nc


async def _discard(nc: Client) -> None:
    """Close what a failed connect left open (a refused one keeps its socket otherwise)."""
    with contextlib.suppress(Exception):
        await nc.close()
    transport = getattr(nc, "_transport", None)
    if transport is not None:
        with contextlib.suppress(Exception):
            transport.close()
