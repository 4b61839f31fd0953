"""A sandbox with a long history: loading it, cold and kept.

An active sandbox gains a ``touched`` event a minute, so one used for a week
holds about 10,000 events, and every command on it (an exec included) loads
it. The log is filled with 10,000 such events for one sandbox (pipelined
publishes, not timed); then, each beside its baseline in this run:

- a fresh event store's ``load`` (what a restarted service pays once),
  beside the raw bulk read of the sandbox's subjects and the raw batched
  direct gets of them;
- a load by a store that keeps the sandbox, after another store appended one
  event to it (what each later command pays), median of 20, beside the same
  on a sandbox of one event.

Until 2026-12-03 every load folded the sandbox from sequence 1, copying and
scanning its decided command ids per event: 0.9 s at 10,000 events
(docs/performance.md, "Sandboxes with long histories").
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

from _harness import bulk_read, main, nats, progress, tempdir
from _table import Row

from sandboxer import subjects
from sandboxer.bus.connect import connect
from sandboxer.bus.direct_get import read_subject
from sandboxer.bus.event_store import stamp
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.streams import ensure_streams
from sandboxer.events.codec import encode_event
from sandboxer.events.types import Actor, SandboxTouched

EVENTS = 10_000
LONG, SHORT = "benchlong0001", "benchshort001"
ACTOR = Actor(type="agt", id="bench", project="bench")
AT = "2026-12-03T10:00:00.000Z"


def touched(sandbox_id: str, n: int) -> SandboxTouched:
    return SandboxTouched(sandbox_id=sandbox_id, command_id=f"touch-{n}", actor=ACTOR, at=AT)


async def fill(js, sandbox_id: str, count: int) -> None:  # type: ignore[no-untyped-def]
    """Publish in order, pipelined (no expected-sequence checks: only the loads are timed)."""
    subject = subjects.sandbox_event_subject(sandbox_id, "touched")
    pending = [
        await js.publish_async(subject, encode_event(stamp(touched(sandbox_id, n), version=n)))
        for n in range(count)
    ]
    await asyncio.gather(*pending)


async def kept_loads(
    worker: JetStreamEventStore, other: JetStreamEventStore, sandbox_id: str
) -> float:
    """The median of 20 loads by ``worker``, each after ``other`` appended one event."""
    times = []
    await worker.load(sandbox_id)
    for n in range(20):
        await other.append(await other.load(sandbox_id), [touched(sandbox_id, EVENTS + n)])
        started = time.perf_counter()
        await worker.load(sandbox_id)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def rows() -> list[Row]:
    with tempdir() as raw_tmp:
        async with nats(Path(raw_tmp)) as server:
            nc = await connect([server.url], name="bench-sandboxes")
            js = nc.jetstream(publish_async_max_pending=4000)
            await ensure_streams(js)
            progress(f"sandboxes: appending {EVENTS:,} events of one sandbox")
            await fill(js, LONG, EVENTS)
            await fill(js, SHORT, 1)

            started = time.perf_counter()
            raw = 0
            async for _ in read_subject(nc, subjects.sandbox_events_filter(LONG)):
                raw += 1
            raw_seconds = time.perf_counter() - started
            raw_bulk_seconds = await bulk_read(nc, js, subjects.sandbox_events_filter(LONG))

            started = time.perf_counter()
            loaded = await JetStreamEventStore(nc, js).load(LONG)
            cold_seconds = time.perf_counter() - started
            assert loaded.state.version == EVENTS

            progress("sandboxes: loads by a store that keeps them")
            worker, other = JetStreamEventStore(nc, js), JetStreamEventStore(nc, js)
            long_kept = await kept_loads(worker, other, LONG)
            short_kept = await kept_loads(worker, other, SHORT)
            await nc.drain()

    figure = f"a sandbox of {raw:,} events"
    return [
        Row(
            f"{figure}: a fresh store's load",
            "ms",
            cold_seconds * 1e3,
            raw_bulk_seconds * 1e3,
            "raw bulk read of its subjects",
        ),
        Row(
            f"{figure}: a fresh store's load",
            "ms",
            cold_seconds * 1e3,
            raw_seconds * 1e3,
            "raw direct gets of its subjects",
        ),
        Row(
            f"{figure}: a kept load after one more event, p50 of 20",
            "ms",
            long_kept * 1e3,
            short_kept * 1e3,
            "the same on a sandbox of one event",
        ),
    ]


if __name__ == "__main__":
    main(rows)
