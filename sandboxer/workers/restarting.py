"""Keeping a follower of the log running: after an error (the bus went away, a disk error) it
starts again from its own stored position, until the service stops. Shared by the meter
export and the State Hub projection."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

__all__ = ["keep_running"]

log = logging.getLogger(__name__)


async def keep_running(
    name: str, run: Callable[[], Awaitable[None]], stop: asyncio.Event, *, pause: float = 1.0
) -> None:
    """Await ``run()`` again and again until ``stop`` is set (or this task is cancelled)."""
    while not stop.is_set():
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if stop.is_set():
                return  # the connection drains at shutdown: nothing to report
            log.error("%s failed: %r; restarting it in %g s", name, exc, pause)
            await asyncio.sleep(pause)
