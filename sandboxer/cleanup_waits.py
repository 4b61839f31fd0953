"""Waits around cancellation that hold on every Python 3.11.

Clean-up that runs while its task is cancelled (an ``except CancelledError``, a teardown
under a stopping worker) must not bound its waits with ``asyncio.timeout``: on Python
3.11.0 to 3.11.2 (Debian 12's is 3.11.2) a timeout running out in a task already being
cancelled raises CancelledError instead of TimeoutError (gh-102780), which skips the rest
of the clean-up, a hung helper left neither killed nor reaped. ``asyncio.wait`` only
waits (docs/architecture.md).

The other way round, a cancel can be lost on 3.11: ``asyncio.wait_for`` returns the
result of its future when that future completed just as the waiting task was cancelled
(bpo-42130; 3.12 rewrote ``wait_for``), and nats-py awaits one in every request and
``next_msg``. A task that loops over such calls then goes on as if never cancelled, and
whoever awaits its end waits for ever (a meter export that polled on past its stop hung a
test for 20 minutes). :func:`cancel_until_done` cancels again until the task has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["cancel_until_done", "communicate_within", "settle"]

CANCEL_AGAIN = 0.5
"""How long a cancelled task may run on before it is cancelled again (its cancel lost)."""


async def settle(task: asyncio.Future[Any], seconds: float) -> None:
    """Let ``task`` end within ``seconds``, then cancel it and wait for its clean-up; its
    outcome is left on it, never raised."""
    if seconds > 0 and not task.done():
        await asyncio.wait([task], timeout=seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def cancel_until_done(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` and wait until each has ended, cancelling again every
    :data:`CANCEL_AGAIN` seconds one that runs on (its cancel lost: see the module). Their
    outcomes stay on them, never raised (an error is marked retrieved). Only for tasks that
    do no clean-up of their own once cancelled: a second cancel would cut it short."""
    while running := [task for task in tasks if not task.done()]:
        for task in running:
            task.cancel()
        await asyncio.wait(running, timeout=CANCEL_AGAIN)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: asyncio would log it at collection


async def communicate_within(
    process: asyncio.subprocess.Process, seconds: float, stdin: bytes | None = None
) -> tuple[bytes, bytes] | None:
    """``process.communicate(stdin)``; None when it ran past ``seconds``: the process is then
    killed and reaped."""
    talking = asyncio.ensure_future(process.communicate(stdin))
    await settle(talking, seconds)
    if talking.cancelled():
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        return None
    return talking.result()
