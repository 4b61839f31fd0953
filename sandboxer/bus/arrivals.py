"""Messages a subscription callback collects, taken in bursts by the reader that waits for them.

Awaiting ``next_msg`` per message costs a task and a timer each on Python
3.11, more than everything else a reader does with a message; a callback that
appends to a list, and a reader that takes the whole list when it wakes, cost
neither (``event_reader``, ``direct_get``).
"""

from __future__ import annotations

import asyncio

from nats.aio.msg import Msg

__all__ = ["Arrivals"]


class Arrivals:
    """Pass :meth:`collect` as a subscription's ``cb``; :meth:`burst` takes what came."""

    def __init__(self) -> None:
        self.pending: list[Msg] = []
        self._wake = asyncio.Event()

    async def collect(self, msg: Msg) -> None:
        self.pending.append(msg)
        self._wake.set()

    async def wait(self, timeout: float) -> None:
        """Return once a message is pending; TimeoutError if none comes within ``timeout``."""
        if self.pending:
            return
        self._wake.clear()
        # asyncio.timeout, not wait_for: on 3.11 a cancellation that lands as wait_for
        # times out comes back as TimeoutError, which a caller would take for silence.
        async with asyncio.timeout(timeout):
            await self._wake.wait()

    def take(self) -> list[Msg]:
        """Every message pending, in the order they came; none is left pending."""
        burst, self.pending = self.pending, []
        return burst
