"""Replay throughput over 200k events, against raw reads of the same stream.

The log is filled with valid lifecycle events for 33k sandboxes (pipelined
publishes, not timed); then the same stream is read four times in this run:
raw with an ordered consumer and raw with the bulk protocol the replay uses
(both only counting messages), then read in the replay's chunks and only
decoded (the least any replay does with an event), then read and folded in
memory alone (decode and evolve, nothing written: the floor any rebuild in
this process pays), then by the projector's rebuild (decode, evolve, write
SQLite).
The server runs with the embedded configuration (generated users and
passwords), as under ``sandboxer up``, and every reader connects as the
service identity.
The target compares the rebuild with the raw bulk read; the two floors show
how the time beyond the read divides between decoding, folding and writing.
The last row is the limit that reading in Python sets: the CPU nats-server spends per event
delivered (the lower of what it spent in the bulk read and in the second floor) plus the CPU this process spends per event to read,
decode and fold (the second floor) and to write each sandbox's last state once, against the CPU per event that all the machine's cores
together give at the target's rate. A value above its baseline means that no rebuild in
Python (however it shared the work out between processes) could reach the target here.
Then the rebuilt view is stored as the view's checkpoint, and a projector with
no view of its own opens from it: timed against the rebuild it replaces.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from _harness import cpu_use, main, progress, tempdir
from _table import Row, Target

from sandboxer import subjects
from sandboxer.bus.checkpoint_bucket import open_checkpoint_bucket
from sandboxer.bus.connect import connect
from sandboxer.bus.event_reader import read_events
from sandboxer.bus.event_store import Loaded
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_auth import AUTH_DIR_NAME, ensure_embedded_auth, read_credentials
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.replay_reader import replay_batches, replay_events
from sandboxer.bus.streams import ensure_streams
from sandboxer.bus.view_checkpoints import ViewCheckpoints
from sandboxer.domain.sandbox_state import SandboxState, evolve
from sandboxer.events.codec import decode_event
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
from sandboxer.fewer_collections import fewer_collections
from sandboxer.projections.projector import Projector
from sandboxer.projections.sandbox_view import SandboxView
from sandboxer.projections.view_copy import copy_view

EVENTS = 200_000
TARGET = 0.6
"""The rebuild's target: this share of the raw bulk read's rate."""
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


async def rows() -> list[Row]:
    with tempdir() as raw_tmp:
        tmp = Path(raw_tmp)
        # The embedded server's configuration (users and passwords), as `sandboxer up` runs it.
        server = NatsServerProcess(
            tmp / "nats", config_file=ensure_embedded_auth(tmp), server_name="bench"
        )
        await server.start()
        try:
            service = read_credentials(tmp / AUTH_DIR_NAME, "service")
            nc = await connect([server.url], name="bench-replay", credentials=service)
            js = nc.jetstream(publish_async_max_pending=4000)
            await ensure_streams(js)
            progress(f"replay: filling the log with about {EVENTS:,} events")
            started = time.perf_counter()
            await fill(nc, js)
            fill_seconds = time.perf_counter() - started
            total = (await js.stream_info(subjects.EVENTS_STREAM)).state.messages
            progress(
                f"replay: {total:,} events appended in {fill_seconds:.1f} s; reading them back"
            )

            started = time.perf_counter()
            raw = 0
            async for _ in read_events(js):
                raw += 1
            raw_seconds = time.perf_counter() - started

            started = time.perf_counter()
            bulk = 0
            with cpu_use(server.pid) as serving:
                async for _ in replay_events(nc, js, start_seq=1, stop_seq=total):
                    bulk += 1
            bulk_seconds = time.perf_counter() - started

            started = time.perf_counter()
            decoded = await decode_alone(nc, js, total)
            decode_seconds = time.perf_counter() - started

            started = time.perf_counter()
            with cpu_use(os.getpid()) as folding, cpu_use(server.pid) as serving_slower:
                folded, states = await fold_alone(nc, js, total)
            fold_seconds = time.perf_counter() - started
            # The least writing any rebuild does: each sandbox's last state, once.
            floor_view = await SandboxView.open(tmp / "floor.sqlite3", scratch=True)
            with cpu_use(os.getpid()) as writing:
                await floor_view.save(((state, total) for state in states.values()), (), total)
            await floor_view.close()

            projector = Projector(nc, js, tmp / "view.sqlite3")
            await projector.open()
            report = await projector.rebuild()
            await projector.close()

            # The view's checkpoint, stored from the rebuilt view; then a projector with no
            # view of its own (a new machine, a lost home) opens from it.
            views = ViewCheckpoints(js, await open_checkpoint_bucket(js, 1))
            copy = tmp / "copy.sqlite3"
            fingerprint, position = copy_view(tmp / "view.sqlite3", copy)
            checkpoint_mb = copy.stat().st_size / 2**20
            assert await views.write(copy, fingerprint or "", position)
            fresh = Projector(nc, js, tmp / "fresh.sqlite3", checkpoints=views)
            started = time.perf_counter()
            await fresh.open()
            checkpoint_seconds = time.perf_counter() - started
            assert fresh.position == position, "the fresh view was not read from its checkpoint"
            await fresh.close()
            await nc.drain()
        finally:
            await server.stop()

    replayed = report.events_per_second
    cores = os.cpu_count() or 1
    # The server's CPU per event delivered, the lower of the bulk read's and the floor's (a
    # slower reader may cost it less): the least any reader makes it spend.
    served = min(serving[0].process / bulk, serving_slower[0].process / folded) * 1e6
    read = folding[0].process / folded * 1e6
    write = writing[0].process / folded * 1e6
    budget = cores / (TARGET * bulk / bulk_seconds)
    return [
        Row(
            f"replay into the sandbox view ({report.events:,} events)",
            "events/s",
            replayed,
            bulk / bulk_seconds,
            "raw bulk read, count only",
            Target(">=", TARGET, "ratio"),
        ),
        Row(
            f"replay into the sandbox view ({report.events:,} events)",
            "events/s",
            replayed,
            raw / raw_seconds,
            "raw ordered consumer, count only",
        ),
        Row(
            f"a view with none of its own, from the view's checkpoint ({checkpoint_mb:.0f} MB)",
            "s",
            checkpoint_seconds,
            report.seconds,
            "the rebuild of the same view from sequence 1",
        ),
        Row(
            f"replay's floor: read and decode only ({decoded:,} events)",
            "events/s",
            decoded / decode_seconds,
            bulk / bulk_seconds,
            "raw bulk read, count only",
        ),
        Row(
            f"replay's floor: read, decode, evolve, no SQLite ({folded:,} events)",
            "events/s",
            folded / fold_seconds,
            bulk / bulk_seconds,
            "raw bulk read, count only",
        ),
        Row(
            f"least CPU per event of any rebuild: nats-server's delivery {served:.2f} µs "
            f"+ read, decode and fold {read:.2f} µs (the floor) + each state written once "
            f"{write:.2f} µs",
            "µs",
            served + read + write,
            budget * 1e6,
            f"CPU per event that {cores} cores give at {TARGET:.0%} of the bulk read",
        ),
    ]


async def decode_alone(nc, js, total: int) -> int:  # type: ignore[no-untyped-def]
    """Read the log as the rebuild does and decode every event into its type; nothing else."""
    count = 0
    with fewer_collections():
        async for events in replay_batches(nc, js, start_seq=1, stop_seq=total):
            for _seq, data in events:
                decode_event(data)
            count += len(events)
    return count


async def fold_alone(nc, js, total: int) -> tuple[int, dict[str, SandboxState]]:  # type: ignore[no-untyped-def]
    """Read the log as the rebuild does and fold every sandbox in memory; nothing else. The
    events read, and the sandboxes' states."""
    folded: dict[str, SandboxState] = {}
    count = 0
    with fewer_collections():
        async for events in replay_batches(nc, js, start_seq=1, stop_seq=total):
            for _seq, data in events:
                event = decode_event(data)
                assert isinstance(event, SandboxEvent)  # the bench appends nothing else
                state = folded.get(event.sandbox_id) or SandboxState(sandbox_id=event.sandbox_id)
                folded[event.sandbox_id] = evolve(state, event)
            count += len(events)
    return count, folded


if __name__ == "__main__":
    main(rows)
