"""An account with a long history: loading it, metering on it, rebuilding its view row.

A project's account gains a reservation and a meter event for every sandbox
on a paid backend, forever, so its history is the longest in the log. The
log is filled with 100,001 such events for one project (pipelined publishes,
not timed); then, each beside its baseline in this run:

- a fresh event store's ``load_account`` (what a restarted service pays on
  its first meter or paid create), beside the raw bulk read of the account's
  subjects and the raw batched direct gets of them;
- the same load from the account's checkpoint (bus/checkpoints.py), which the
  service's stores write after a long load: beside the same bulk read;
- a meter through ``apply_account`` on it (what every ``destroyed`` of a
  sandbox pays), median of 20, beside the same on a new account;
- a rebuild of the view (which folds the account from sequence 1 and writes
  its row), beside the raw bulk read of the log.

Until 2026-12-03 every one of these folded the account's decided command ids
as a tuple copied per event, so they grew with the square of its history
(docs/performance.md, Accounts).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

from _harness import bulk_read, main, nats, progress, tempdir
from _table import Row

from sandboxer import subjects
from sandboxer.bus.checkpoints import AccountCheckpoints
from sandboxer.bus.connect import connect
from sandboxer.bus.direct_get import read_subject
from sandboxer.bus.event_reader import last_sequence
from sandboxer.bus.event_store import stamp
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.replay_reader import replay_events
from sandboxer.bus.streams import ensure_streams
from sandboxer.domain.account_decide import MeterUsage, meter_command_id
from sandboxer.events.account_events import (
    AccountEvent,
    CreditsAdded,
    CreditsReserved,
    UsageMetered,
)
from sandboxer.events.codec import encode_event
from sandboxer.events.types import Actor, event_type
from sandboxer.projections.projector import Projector
from sandboxer.workers.deciding import apply_account

SANDBOXES = 50_000
PROJECT = "bench"
ACTOR = Actor(type="agt", id="bench", project=PROJECT)
AT = "2026-12-02T10:00:00.000Z"


def history() -> list[AccountEvent]:
    head = {"project": PROJECT, "actor": ACTOR, "at": AT}
    events: list[AccountEvent] = [CreditsAdded(**head, command_id="add", amount=10**12)]
    for n in range(SANDBOXES):
        sandbox_id = f"bench{n:010d}"
        events.append(
            CreditsReserved(
                **head,
                command_id=f"reserve-{sandbox_id}",
                sandbox_id=sandbox_id,
                amount=1_000,
                price="1",
                extension="ext.e2b",
            )
        )
        events.append(
            UsageMetered(
                **head,
                command_id=meter_command_id(sandbox_id),
                sandbox_id=sandbox_id,
                extension="ext.e2b",
                profile=None,
                seconds=60,
                amount=60,
                price="1",
                byok=False,
            )
        )
    return events


async def fill(js, events: list[AccountEvent]) -> None:  # type: ignore[no-untyped-def]
    """Publish in order, pipelined (no expected-sequence checks: only the reads are timed)."""
    pending = []
    for version, event in enumerate(events):
        stamped = stamp(event, version=version)
        subject = subjects.account_event_subject(PROJECT, event_type(stamped))
        pending.append(await js.publish_async(subject, encode_event(stamped)))
        if len(pending) >= 2_000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


async def meter_twenty(store: JetStreamEventStore, project: str) -> float:
    """The median time of 20 meters in a row on ``project``'s account (after one to load it)."""
    actor = Actor(type="agt", id="bench", project=project)
    times = []
    for n in range(21):
        sandbox_id = f"extra{n:010d}"
        usage = MeterUsage(
            command_id=meter_command_id(sandbox_id),
            actor=actor,
            sandbox_id=sandbox_id,
            extension="ext.e2b",
            profile=None,
            seconds=1,
            price="1",
        )
        started = time.perf_counter()
        await apply_account(store, project, usage)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


async def rows() -> list[Row]:
    with tempdir() as raw_tmp:
        tmp = Path(raw_tmp)
        async with nats(tmp) as server:
            nc = await connect([server.url], name="bench-accounts")
            js = nc.jetstream(publish_async_max_pending=4000)
            await ensure_streams(js)
            events = history()
            progress(f"accounts: appending {len(events):,} events of one project")
            await fill(js, events)

            started = time.perf_counter()
            raw = 0
            async for _ in read_subject(nc, subjects.account_events_filter(PROJECT)):
                raw += 1
            raw_seconds = time.perf_counter() - started
            raw_bulk_seconds = await bulk_read(nc, js, subjects.account_events_filter(PROJECT))

            store = JetStreamEventStore(nc, js)
            started = time.perf_counter()
            loaded = await store.load_account(PROJECT)
            load_seconds = time.perf_counter() - started
            assert loaded.state.metered == SANDBOXES

            progress("accounts: writing its checkpoint, and loading from it")
            checkpoints = await AccountCheckpoints.open(js, 1)
            writer = JetStreamEventStore(nc, js, checkpoints=checkpoints)
            await writer.load_account(PROJECT)
            await checkpoints.settled()
            started = time.perf_counter()
            resumed = await JetStreamEventStore(nc, js, checkpoints=checkpoints).load_account(
                PROJECT
            )
            checkpoint_seconds = time.perf_counter() - started
            assert resumed == loaded

            progress("accounts: metering 20 more sandboxes on it, and on a new account")
            long_history = await meter_twenty(store, PROJECT)
            new_account = await meter_twenty(store, "fresh")

            started = time.perf_counter()
            bulk = 0
            async for _ in replay_events(nc, js, start_seq=1, stop_seq=await last_sequence(js)):
                bulk += 1
            bulk_seconds = time.perf_counter() - started

            progress("accounts: rebuilding the view")
            projector = Projector(nc, js, tmp / "view.sqlite3")
            await projector.open()
            report = await projector.rebuild()
            await projector.close()
            await nc.drain()

    figure = f"an account of {raw:,} events"
    return [
        Row(
            f"{figure}: a fresh store's load",
            "ms",
            load_seconds * 1e3,
            raw_bulk_seconds * 1e3,
            "raw bulk read of its subjects",
        ),
        Row(
            f"{figure}: a fresh store's load",
            "ms",
            load_seconds * 1e3,
            raw_seconds * 1e3,
            "raw direct gets of its subjects",
        ),
        Row(
            f"{figure}: a fresh store's load from its checkpoint",
            "ms",
            checkpoint_seconds * 1e3,
            raw_bulk_seconds * 1e3,
            "raw bulk read of its subjects",
        ),
        Row(
            f"{figure}: a meter (apply_account), p50 of 20",
            "ms",
            long_history * 1e3,
            new_account * 1e3,
            "the same on a new account",
        ),
        Row(
            f"{figure}: view rebuild ({report.events:,} events)",
            "events/s",
            report.events_per_second,
            bulk / bulk_seconds,
            "raw bulk read, count only",
        ),
    ]


if __name__ == "__main__":
    main(rows)
