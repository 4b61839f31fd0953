"""A provider create that never leaves two provider sandboxes for one of ours.

A create is not safe to repeat: when its answer is lost (a timeout, a reset
connection, a 5xx after the provider acted) the sandbox may exist anyway.
So before every retry we look for it by our label and take it if it is
there. A redelivered job (the worker was killed between the provider's
create and our ``ready``) comes through the backend's ``provision``, which
removes what the first attempt made before calling this.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sandboxer.errors import ProviderUnavailable

__all__ = ["create_once"]

log = logging.getLogger(__name__)

T = TypeVar("T")


async def create_once(
    create: Callable[[], Awaitable[T]],
    find: Callable[[], Awaitable[T | None]],
    *,
    attempts: int = 3,
    wait: float = 0.5,
) -> T:
    """``create()``; after an unavailability, ``find()`` what it may have made, else try again."""
    for attempt in range(1, attempts + 1):
        try:
            return await create()
        except ProviderUnavailable as exc:
            found = await find()
            if found is not None:
                log.info("a create whose answer was lost had made its sandbox: adopted it")
                return found
            if attempt == attempts:
                raise
            log.info("create failed (%s); nothing was made, trying again", exc.message)
            await asyncio.sleep(wait * attempt)
    raise AssertionError("unreachable")
