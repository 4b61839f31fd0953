"""A provider create that never leaves two provider sandboxes for one of ours, nor one
that no teardown finds.

A create is not safe to repeat: when its answer is lost (a timeout, a reset
connection, a 5xx after the provider acted) the sandbox may exist anyway.
So before every retry we look for it by our label and take it if it is
there. A redelivered job (the worker was killed between the provider's
create and our ``ready``) comes through the backend's ``provision``, which
removes what the first attempt made before calling this.

A create we gave up on (its answer did not come in time, or we were
cancelled while it was on its way) may also be carried out by the provider
*later*: after our retries found nothing, after the worker's cleanup tore
the failed sandbox down, after it was rerouted elsewhere. A provider that
lists only what has finished booting (E2B) shows nothing before then. So
:class:`LateCreates` remembers, per sandbox, until when such a create may
still land (``create_settle`` seconds after we gave it up), and a backend's
teardown goes through :meth:`LateCreates.teardown`, which looks again by
label until then, less often as the window goes on, and removes what has
landed. Past that window, the provider's own timeout (set just past our TTL)
is the backstop, and ``sandboxer inspect stale`` shows what carries our label.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from sandboxer.errors import ProviderUnavailable

__all__ = ["DEFAULT_SETTLE", "LateCreates", "create_once"]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_SETTLE = 60.0
"""Seconds after we gave a create up during which the provider may still carry it out."""
FIRST_WAIT = 1.0
"""Seconds before a teardown's second look while a create given up on may still land."""
LONGEST_WAIT = 8.0
"""The waits between looks double up to this: looks at 0, 1, 3, 7, 15, 23 ... s, and at
the window's end (11 in all over the default 60 s, rather than one a second)."""


class LateCreates:
    """The creates of this process we gave up on, each with the time until which the
    provider may still carry it out; shared by a backend and its per-key copies."""

    def __init__(
        self,
        settle: float = DEFAULT_SETTLE,
        *,
        first_wait: float = FIRST_WAIT,
        longest_wait: float = LONGEST_WAIT,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._settle = settle
        self._first_wait = first_wait
        self._longest_wait = longest_wait
        self._clock = clock
        self._sleep = sleep
        """Waits between a teardown's looks; ``clock`` must see the time it lets pass."""
        self._until: dict[str, float] = {}

    def gave_up(self, sandbox_id: str) -> None:
        """A create of ``sandbox_id`` was given up on now: it may land until ``settle`` from now."""
        now = self._clock()
        for done in [k for k, until in self._until.items() if until <= now]:
            del self._until[done]  # past their window: nothing of theirs can land any more
        self._until[sandbox_id] = max(self._until.get(sandbox_id, now), now + self._settle)

    def remaining(self, sandbox_id: str) -> float:
        """Seconds during which a create of ``sandbox_id`` we gave up on may still land."""
        return max(0.0, self._until.get(sandbox_id, 0.0) - self._clock())

    async def teardown(self, sandbox_id: str, remove: Callable[[], Awaitable[None]]) -> None:
        """``remove()`` what the provider holds for the sandbox (by its label); then, while
        a create of it we gave up on may still land, look again, so that what it makes is
        removed too, not left running with no record naming it.

        Each look lists the provider (Modal reads every listed sandbox's tags), so the
        waits between them double from ``first_wait`` up to ``longest_wait``: a create
        that lands soon after is removed soon, and one that lands late runs for at most
        about ``longest_wait`` seconds. The last look is when the window closes."""
        await remove()
        if self.remaining(sandbox_id) > 0:
            log.info(
                "%s: a create given up on may still land; looking for it for %.0f s more",
                sandbox_id,
                self.remaining(sandbox_id),
            )
        waits = _look_waits(self._first_wait, self._longest_wait)
        while (left := self.remaining(sandbox_id)) > 0:
            await self._sleep(min(next(waits), left))
            await remove()
        self._until.pop(sandbox_id, None)


def _look_waits(first: float, longest: float) -> Iterator[float]:
    """Seconds between a teardown's looks: ``first``, then each twice the one before, at
    most ``longest``. (Not stamina's backoff: it retries what raised, stops on its own
    clock with no last look at the deadline, and takes no clock or sleep from a test.)"""
    wait = first
    while True:
        yield wait
        wait = min(wait * 2, longest)


async def create_once(
    create: Callable[[], Awaitable[T]],
    find: Callable[[], Awaitable[T | None]],
    *,
    sandbox_id: str,
    late: LateCreates,
    redelivered: bool = False,
    attempts: int = 3,
    wait: float = 0.5,
) -> T:
    """``create()``; after an unavailability, ``find()`` what it may have made, else try again.

    Every create given up on (unanswered, or cancelled on its way) is noted in ``late``,
    also when the look for what it made fails (the provider's list down as well).
    So is a ``redelivered`` job's that fails: an earlier attempt's create, sent by a worker
    that may have died waiting for it, may land after the teardown that follows. (One that
    succeeds is not: a copy landing later carries our label, and the sandbox's teardown
    finds it then; the window would only hold up a destroy soon after.)"""
    try:
        return await _create_once(create, find, sandbox_id, late, attempts, wait)
    except BaseException:
        if redelivered:
            late.gave_up(sandbox_id)
        raise


async def _create_once(
    create: Callable[[], Awaitable[T]],
    find: Callable[[], Awaitable[T | None]],
    sandbox_id: str,
    late: LateCreates,
    attempts: int,
    wait: float,
) -> T:
    for attempt in range(1, attempts + 1):
        try:
            return await create()
        except ProviderUnavailable as exc:
            try:
                found = await find()
            except BaseException:
                # Nobody knows whether the create was carried out, nor whether it still may
                # be: the teardown that follows must keep looking for it.
                late.gave_up(sandbox_id)
                raise
            if found is not None:
                if attempt > 1:  # the one found may be an earlier create's: this one may land
                    late.gave_up(sandbox_id)
                log.info("a create whose answer was lost had made its sandbox: adopted it")
                return found
            late.gave_up(sandbox_id)
            if attempt == attempts:
                raise
            log.info("create failed (%s); nothing was made, trying again", exc.message)
            await asyncio.sleep(wait * attempt)
        except asyncio.CancelledError:  # a worker stopping, a deadline: it may be on its way
            late.gave_up(sandbox_id)
            raise
    raise AssertionError("unreachable")
