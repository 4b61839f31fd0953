"""The requests a worker is serving, and how a stopping worker ends them.

A request may run for long (a command for days, a copy for half an hour) while
``sandboxer down`` waits 30 s for the service to stop: after a short grace, what
still runs is cancelled, and each request's own handler tells its client so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["STOP_GRACE", "InFlight"]

STOP_GRACE = 5.0
"""Seconds running requests get to end when the worker stops, before they are cancelled."""


class InFlight:
    """Tasks serving requests, each forgotten once it ends."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, serving: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(serving)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self, grace: float) -> None:
        """Let the running requests end for ``grace`` seconds, then cancel the rest and wait
        for their handlers (which answer their clients)."""
        if not self._tasks:
            return
        _done, running = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
