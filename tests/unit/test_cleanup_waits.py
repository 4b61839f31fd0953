"""Bounded waits for clean-up in a task being cancelled (sandboxer/cleanup_waits.py)."""

from __future__ import annotations

import asyncio

from sandboxer.cleanup_waits import communicate_within, settle


async def test_a_helper_past_its_time_is_killed_and_reaped_even_while_cancelled() -> None:
    outcome: list[object] = []

    async def tearing_down() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            hung = await asyncio.create_subprocess_exec("sleep", "30")
            outcome.append(await communicate_within(hung, 0.1))
            outcome.append(hung.returncode)
            raise

    task = asyncio.create_task(tearing_down())
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert outcome == [None, -9]  # the clean-up ran to its end: killed, reaped


async def test_a_helper_within_its_time_answers() -> None:
    quick = await asyncio.create_subprocess_exec(
        "cat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert await communicate_within(quick, 5, b"hi") == (b"hi", None)


async def test_settle_leaves_the_outcome_on_the_task() -> None:
    async def fails() -> None:
        raise ValueError("x")

    failing = asyncio.ensure_future(fails())
    await settle(failing, 1)
    assert isinstance(failing.exception(), ValueError)
    slow = asyncio.ensure_future(asyncio.sleep(30))
    await settle(slow, 0.01)
    assert slow.cancelled()
