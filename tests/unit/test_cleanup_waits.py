"""Waits around cancellation (sandboxer/cleanup_waits.py): bounded clean-up in a task being
cancelled, and a cancel that Python 3.11's ``wait_for`` loses."""

from __future__ import annotations

import asyncio
import sys

from sandboxer.cleanup_waits import cancel_until_done, communicate_within, settle


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


async def test_a_cancel_lost_in_wait_for_is_sent_again_until_the_loop_ends() -> None:
    """A loop over ``wait_for`` (as nats-py's requests are) cancelled just as the awaited
    future completes: 3.11's ``wait_for`` returns the result, the cancel is lost and the
    loop goes on, so a plain cancel-then-await waits for ever (a meter export's stop did)."""
    rounds = 0

    async def polling(handed: asyncio.Queue[asyncio.Future[int]]) -> None:
        nonlocal rounds
        while True:
            answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            await handed.put(answer)
            await asyncio.wait_for(answer, 10)
            rounds += 1

    handed: asyncio.Queue[asyncio.Future[int]] = asyncio.Queue()
    lost = asyncio.create_task(polling(handed))
    (await handed.get()).set_result(1)
    lost.cancel()  # in the same step as the answer: the race, every time
    await asyncio.wait([lost], timeout=0.3)
    if sys.version_info < (3, 12):
        assert not lost.done()  # lost: it polls on
        assert rounds == 1
    await cancel_until_done(lost)
    assert lost.cancelled()

    handed = asyncio.Queue()
    again = asyncio.create_task(polling(handed))
    (await handed.get()).set_result(1)
    async with asyncio.timeout(5):
        await cancel_until_done(again)  # its first cancel lost the same way
    assert again.cancelled()


async def test_cancel_until_done_leaves_an_error_on_its_task() -> None:
    async def failing() -> None:
        raise RuntimeError("broken")

    task = asyncio.create_task(failing())
    await asyncio.sleep(0)
    await cancel_until_done(task)
    assert isinstance(task.exception(), RuntimeError)
