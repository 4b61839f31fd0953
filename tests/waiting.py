"""Waiting in tests for something another task, thread or process does: polled, bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(
    condition: Callable[[], object], seconds: float = 20, *, every: float = 0.01, failure: str = ""
) -> None:
    """Until ``condition()`` is true, looked at every ``every`` seconds; an AssertionError
    (``failure``, or how long it waited) when it is not within ``seconds``: a generous bound,
    which a passing test never reaches and a busy machine does not make it miss."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        if loop.time() >= deadline:
            raise AssertionError(failure or f"not so within {seconds:g} s")
        await asyncio.sleep(every)
