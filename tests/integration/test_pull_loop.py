"""The worker loop against a real JetStream: poison messages end as a recorded failure."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.msg import Msg

from sandboxer.bus.connect import connect
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.streams import ensure_streams
from sandboxer.workers.pull_loop import ConsumerSpec, run_pull_consumer

pytestmark = pytest.mark.integration


async def test_poison_message_is_recorded_once_and_the_loop_keeps_serving(
    nats_server: NatsServerProcess,
) -> None:
    nc = await connect([nats_server.url], name="test")
    js = nc.jetstream()
    await ensure_streams(js)
    spec = ConsumerSpec(stream="SANDBOXER_JOBS", durable="poison-test",
                        filter_subject="sandboxer.job.poison.>", ack_wait=2, max_deliver=3)
    deliveries: dict[bytes, int] = {}
    poisoned: list[tuple[bytes, str]] = []
    handled: list[bytes] = []

    async def handler(msg: Msg) -> None:
        deliveries[msg.data] = deliveries.get(msg.data, 0) + 1
        if msg.data == b"poison":
            raise RuntimeError("cannot handle this")
        handled.append(msg.data)
        await msg.ack()

    async def on_poison(msg: Msg, exc: BaseException) -> None:
        poisoned.append((msg.data, str(exc)))

    stop = asyncio.Event()
    loop = asyncio.create_task(run_pull_consumer(js, spec, handler, on_poison, stop))
    await js.publish("sandboxer.job.poison.a", b"poison")
    await js.publish("sandboxer.job.poison.b", b"fine")
    async with asyncio.timeout(20):
        while not poisoned:
            await asyncio.sleep(0.05)
    await js.publish("sandboxer.job.poison.c", b"after")
    async with asyncio.timeout(10):
        while b"after" not in handled:
            await asyncio.sleep(0.05)
    stop.set()
    await loop

    assert poisoned == [(b"poison", "cannot handle this")]
    assert deliveries[b"poison"] == spec.max_deliver
    info = await js.consumer_info("SANDBOXER_JOBS", "poison-test")
    assert info.num_pending == 0
    assert info.num_ack_pending == 0  # terminated, not left to redeliver forever
    await nc.drain()
