"""Reading a request's inbox keeps a cancellation that coincides with a message.

A gateway stops an exec (a revoked key, a caller gone) by cancelling the client's read of
the exec's inbox, while the worker's ``alive`` checks land there every few seconds. nats-py's
``next_msg(timeout=...)`` waits through ``asyncio.wait_for``, which on Python 3.11 returns
a message that lands as its caller is cancelled and drops the cancellation: the exec then
ran on, and its request was never answered (seen once in a clean run of
``test_a_revoked_keys_running_exec_is_stopped``).
"""

from __future__ import annotations

import asyncio

import nats
import pytest

from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.workers.heartbeat import next_answer

pytestmark = pytest.mark.integration

ROUNDS = 30


async def test_a_cancel_as_a_message_lands_is_never_lost(nats_server: NatsServerProcess) -> None:
    nc = await nats.connect(nats_server.url)
    lost = 0
    try:
        for _ in range(ROUNDS):
            sub = await nc.subscribe(nc.new_inbox())
            reading = asyncio.ensure_future(
                next_answer(sub, 30.0, sandbox_id="s", doing="running", unknown="")
            )
            await asyncio.sleep(0.01)  # the read waits
            await nc.publish(sub.subject, b"alive")
            async with asyncio.timeout(5):
                while not sub._pending_queue.qsize() and not reading.done():
                    await asyncio.sleep(0)  # until the message is handed to the read
            reading.cancel()  # in the same turn of the loop as the message
            try:
                await reading
                lost += 1  # the message came back: the cancellation was dropped
            except asyncio.CancelledError:
                pass
            await sub.unsubscribe()
    finally:
        await nc.close()
    assert lost == 0, f"{lost} of {ROUNDS} cancellations were lost"
