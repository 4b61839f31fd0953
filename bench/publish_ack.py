"""One JetStream publish and its ack: nats-py's ``JetStreamContext.publish`` against ours.

    python bench/publish_ack.py [PUBLISHES]

Every append, job and command of a create is one publish awaited to its ack
(``bus/publish.py``). This times the publish alone on a private nats-server, a
900-byte message (about an event's size) with its ``Nats-Msg-Id``, both ways in
turns: back to back, and each after 50 ms idle (as ``make bench`` times a warm
create). It prints the p50 wall time and the p50 CPU of this process's thread per
publish, the part of a publish that is Python and the kernel's work for it.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from _harness import nats, tempdir
from nats.js.api import StreamConfig

from sandboxer.bus.ack_inbox import publish_for_ack
from sandboxer.bus.connect import connect

DATA = b"x" * 900
ROUNDS = 3

Publish = Callable[[str, dict[str, str]], Awaitable[object]]


async def timed(publish: Publish, count: int, idle: float) -> tuple[float, float]:
    """p50 wall and thread-CPU microseconds of ``count`` publishes, each after ``idle`` s."""
    walls, cpus = [], []
    for n in range(count):
        if idle:
            await asyncio.sleep(idle)
        cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
        await publish(f"bench.ack.{n % 10}", {"Nats-Msg-Id": uuid.uuid4().hex})
        walls.append((time.perf_counter_ns() - wall) / 1e3)
        cpus.append((time.thread_time_ns() - cpu) / 1e3)
    return statistics.median(walls), statistics.median(cpus)


async def measure(count: int) -> None:
    with tempdir() as name:
        async with nats(Path(name)) as server:
            nc = await connect([server.url], name="bench-publish-ack")
            js = nc.jetstream()
            try:
                await js.add_stream(StreamConfig(name="BENCH_ACK", subjects=["bench.ack.>"]))

                async def theirs(subject: str, headers: dict[str, str]) -> object:
                    return await js.publish(subject, DATA, timeout=5, headers=headers)

                async def ours(subject: str, headers: dict[str, str]) -> object:
                    return await publish_for_ack(nc, subject, DATA, headers=headers, timeout=5)

                ways = {"nats-py js.publish": theirs, "bus/ack_inbox": ours}
                for label, idle in (("back to back", 0.0), ("after 50 ms idle", 0.05)):
                    figures: dict[str, list[tuple[float, float]]] = {way: [] for way in ways}
                    for _ in range(ROUNDS):
                        for way, publish in ways.items():
                            figures[way].append(await timed(publish, count, idle))
                    print(f"{label}, p50 of {count} in each of {ROUNDS} rounds (wall / CPU µs):")
                    for way, rounds in figures.items():
                        each = ", ".join(f"{wall:.0f} / {cpu:.0f}" for wall, cpu in rounds)
                        print(f"  {way:20} {each}")
            finally:
                await nc.close()


if __name__ == "__main__":
    asyncio.run(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 200))
