"""Connecting to NATS: the one place connection options are chosen."""

from __future__ import annotations

from collections.abc import Sequence

import nats
from nats.aio.client import Client

from sandboxer.errors import BusError

__all__ = ["connect"]


async def connect(urls: Sequence[str], *, name: str, long_lived: bool = True) -> Client:
    """Connect to ``urls`` (a list: nats-py does not split comma strings).

    Long-lived workers reconnect forever and ping often so a dead server is
    noticed quickly; short CLI clients fail fast instead.
    """
    try:
        return await nats.connect(
            servers=list(urls),
            name=name,
            connect_timeout=2,
            allow_reconnect=long_lived,
            max_reconnect_attempts=-1 if long_lived else 0,
            reconnect_time_wait=0.5,
            ping_interval=5 if long_lived else 120,
            max_outstanding_pings=3,
        )
    except Exception as exc:  # nats-py raises several unrelated types for "cannot reach"
        raise BusError(
            f"cannot reach NATS at {', '.join(urls)}: {exc}. "
            "Start the service with 'sandboxer up' or check SANDBOXER_NATS_URL."
        ) from exc
