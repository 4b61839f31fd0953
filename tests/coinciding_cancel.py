"""Cancelling a wait in the same turn of the loop as what it waits for arrives.

On Python 3.11, ``asyncio.wait_for`` then returns what arrived and drops the cancellation
(3.12 rebuilt it on ``asyncio.timeout``, which keeps it): a read that a loop repeats until it
is cancelled runs on instead. :func:`cancel_as_it_lands` provokes that coincidence once and
says whether the cancellation was kept; a test repeats it, since one round proves little.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ["cancel_as_it_lands"]


async def cancel_as_it_lands(
    wait: Awaitable[object],
    land: Callable[[], Awaitable[object]],
    landed: Callable[[], bool],
    *,
    within: float = 1.0,
) -> bool:
    """Whether ``wait`` kept a cancellation that came with what it waits for.

    ``wait`` is started and left to block; ``land()`` sends what it waits for, and the
    cancellation comes in the turn of the loop in which ``landed()`` first says it was handed
    over (the waiter woken, not yet run). Kept: ``wait`` ends cancelled within ``within``
    seconds. Lost: it returns, fails otherwise, or is still running then (it is cancelled
    once more, away from any arrival, and collected).
    """
    waiting = asyncio.ensure_future(wait)
    await asyncio.sleep(0.01)  # the wait blocks
    await land()
    async with asyncio.timeout(5):
        while not landed() and not waiting.done():
            await asyncio.sleep(0)  # until what it waits for is handed to it
    waiting.cancel()  # in the same turn of the loop as the hand-over
    await asyncio.wait([waiting], timeout=within)
    if not waiting.done():  # it went on waiting: for the next message, say
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        return False
    if waiting.cancelled():
        return True
    waiting.exception()  # a result or another error: lost either way (and now retrieved)
    return False
