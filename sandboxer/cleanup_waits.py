"""Bounded waits that stay waits in a task already being cancelled.

Clean-up that runs while its task is cancelled (an ``except CancelledError``, a teardown
under a stopping worker) must not bound its waits with ``asyncio.timeout``: on Python
3.11.0 to 3.11.2 (Debian 12's is 3.11.2) a timeout running out in a task already being
cancelled raises CancelledError instead of TimeoutError (gh-102780), which skips the rest
of the clean-up, a hung helper left neither killed nor reaped. ``asyncio.wait`` only
waits (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["communicate_within", "settle"]


async def settle(task: asyncio.Future[Any], seconds: float) -> None:
    """Let ``task`` end within ``seconds``, then cancel it and wait for its clean-up; its
    outcome is left on it, never raised."""
    if seconds > 0 and not task.done():
        await asyncio.wait([task], timeout=seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


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
