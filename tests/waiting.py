"""Waiting in tests for something another task, thread or process does: polled, bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


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


async def logged(
    load: Callable[[], Awaitable[T]],
    holds: Callable[[T], object],
    seconds: float = 20,
    *,
    every: float = 0.01,
) -> T:
    """``load()`` until ``holds`` its value: a subscriber may hear an event before it is stored."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not holds(value := await load()):
        if loop.time() >= deadline:
            raise AssertionError(f"the log did not hold it within {seconds:g} s; read: {value!r}")
        await asyncio.sleep(every)
    return value
