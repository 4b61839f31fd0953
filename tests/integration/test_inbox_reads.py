"""Reading an inbox keeps a cancellation that coincides with a message.

A gateway stops an exec (a revoked key, a caller gone) by cancelling the client's read of
the exec's inbox, while the worker's ``alive`` checks land there every few seconds. nats-py's
``next_msg(timeout=...)`` waits through ``asyncio.wait_for``, which on Python 3.11 returns
a message that lands as its caller is cancelled and drops the cancellation: the exec then
ran on, and its request was never answered (seen once in a clean run of
``test_a_revoked_keys_running_exec_is_stopped``).

The worker reads an exec's standard input from an inbox of its own (``StdinInbox``), and
a backend feeds it to the command until it is cancelled. Read through ``asyncio.wait_for``,
a chunk landing as an exec is stopped (its timeout, its client gone, the worker stopping)
dropped the stop: over SSH the feeder went on waiting for input the closed inbox would never
bring, the command ran on, and its ``exit`` came ``STDIN_IDLE`` (two minutes) late.
"""

from __future__ import annotations

import nats
import pytest
from nats.aio.client import Client

from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.exec_protocol.heartbeat import next_answer
from sandboxer.exec_protocol.wire import STDIN_HEADER
from sandboxer.workers.stdin_inbox import StdinInbox
from tests.coinciding_cancel import cancel_as_it_lands

pytestmark = pytest.mark.integration

ROUNDS = 30


async def _answer_read(nc: Client) -> bool:
    """A client's read of a request's inbox, cancelled as an ``alive`` check lands."""
    sub = await nc.subscribe(nc.new_inbox())
    try:
        return await cancel_as_it_lands(
            next_answer(sub, 30.0, sandbox_id="s", doing="running", unknown=""),
            lambda: nc.publish(sub.subject, b"alive"),
            lambda: sub._pending_queue.qsize() > 0,  # handed to the read
        )
    finally:
        await sub.unsubscribe()


async def test_a_cancel_as_a_message_lands_is_never_lost(nats_server: NatsServerProcess) -> None:
    nc = await nats.connect(nats_server.url)
    lost = 0
    try:
        for _ in range(ROUNDS):
            lost += not await _answer_read(nc)
    finally:
        await nc.close()
    assert lost == 0, f"{lost} of {ROUNDS} cancellations were lost"


async def _stdin_feed(nc: Client) -> bool:
    """A backend's feeding of an exec's standard input, stopped as a chunk lands."""
    inbox = StdinInbox(nc)  # waits STDIN_IDLE for input: a feeder that missed its stop waits
    await inbox.open()
    fed: list[bytes] = []

    async def feed() -> None:  # as ext.local's and the SSH backends' feeders do
        async for chunk in inbox.chunks():
            fed.append(chunk)

    try:
        return await cancel_as_it_lands(
            feed(),
            lambda: nc.publish(
                inbox.subject, b"input", reply=nc.new_inbox(), headers={STDIN_HEADER: "data"}
            ),
            lambda: inbox._queue.qsize() > 0,  # queued for the command: the feeder is woken
        )
    finally:
        await inbox.close()


async def test_an_exec_input_feed_stopped_as_a_chunk_lands_stops(
    nats_server: NatsServerProcess,
) -> None:
    nc = await nats.connect(nats_server.url)
    lost = 0
    try:
        for _ in range(ROUNDS):
            lost += not await _stdin_feed(nc)
    finally:
        await nc.close()
    assert lost == 0, f"{lost} of {ROUNDS} stopped feeders went on waiting for input"
