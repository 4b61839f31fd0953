"""Replay throughput over 200k events, with the raw ordered read of the same stream.

The log is filled with valid lifecycle events for 40k sandboxes (pipelined
publishes, not timed); then the same stream is read twice in this run: once
raw (an ordered consumer, counting messages) and once by the projector's
rebuild (decode, evolve, write SQLite).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from _harness import nats, tempdir

from sandboxer import subjects
from sandboxer.bus.connect import connect
from sandboxer.bus.event_reader import read_events
from sandboxer.bus.event_store import Loaded
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.replay_reader import replay_events
from sandboxer.bus.streams import ensure_streams
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.events.types import (
    Actor,
    SandboxDestroyed,
    SandboxDestroying,
    SandboxEvent,
    SandboxProvisioning,
    SandboxReady,
    SandboxRequested,
    SandboxRouted,
)
from sandboxer.projections.projector import Projector

EVENTS = 200_000
ACTOR = Actor(type="atm", id="bench")


def lifecycle(n: int) -> list[SandboxEvent]:
    sid = f"bench{n:010d}"
    head = {
        "sandbox_id": sid,
        "command_id": f"c{n}",
        "actor": ACTOR,
        "at": "2026-11-23T00:00:00.000Z",
    }
    return [
        SandboxRequested(**head, profile="profile.local", profile_version=1),
        SandboxRouted(**head, extension="ext.local", reason="bench"),
        SandboxProvisioning(**head, extension="ext.local"),
        SandboxReady(**head, reachability={"kind": "local"}),
        SandboxDestroying(**head),
    ]


async def fill(nc, js) -> None:  # type: ignore[no-untyped-def]
    """Append through the real event store (expected-sequence headers and all), 64 at a time."""
    store = JetStreamEventStore(nc, js)
    sandboxes = EVENTS // 6
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(sandboxes):
        queue.put_nowait(n)

    async def appender() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            events = lifecycle(n)
            events.append(
                SandboxDestroyed(
                    **{
                        k: getattr(events[0], k)
                        for k in ("sandbox_id", "command_id", "actor", "at")
                    }
                )
            )
            await store.append(Loaded(SandboxState(sandbox_id=events[0].sandbox_id), 0), events)

    await asyncio.gather(*(appender() for _ in range(64)))


async def main() -> None:
    with tempdir() as raw_tmp:
        tmp = Path(raw_tmp)
        async with nats(tmp) as server:
            nc = await connect([server.url], name="bench-replay")
            js = nc.jetstream(publish_async_max_pending=4000)
            await ensure_streams(js)
            started = time.perf_counter()
            await fill(nc, js)
            fill_seconds = time.perf_counter() - started
            total = (await js.stream_info(subjects.EVENTS_STREAM)).state.messages

            started = time.perf_counter()
            raw = 0
            async for _ in read_events(js):
                raw += 1
            raw_seconds = time.perf_counter() - started

            started = time.perf_counter()
            bulk = 0
            async for _ in replay_events(nc, js, start_seq=1, stop_seq=total):
                bulk += 1
            bulk_seconds = time.perf_counter() - started

            projector = Projector(nc, js, tmp / "view.sqlite3")
            await projector.open()
            report = await projector.rebuild()
            await projector.close()
            await nc.drain()

    print(
        f"events in the log                : {total} (appended in {fill_seconds:.1f} s, "
        f"{total / fill_seconds:,.0f} events/s, 64 sandboxes at a time)"
    )
    print(
        f"raw ordered read (count only)    : {raw} events in {raw_seconds:.2f} s = "
        f"{raw / raw_seconds:,.0f} events/s"
    )
    print(
        f"bulk protocol read (count only)  : {bulk} events in {bulk_seconds:.2f} s = "
        f"{bulk / bulk_seconds:,.0f} events/s"
    )
    print(
        f"replay into the sandbox view     : {report.events} events in {report.seconds:.2f} s "
        f"= {report.events_per_second:,.0f} events/s"
    )


if __name__ == "__main__":
    asyncio.run(main())
