"""The sandbox aggregate on JetStream: a store folds only what came after the state it kept.

An active sandbox gains a ``touched`` event a minute, and every command on it (an exec
included) loads it, so each load reads on from the last state this store saw of it. What
it returns must be what a fold from sequence 1 gives, whoever appended meanwhile.
"""

from __future__ import annotations

from typing import Any

import pytest

from sandboxer.bus import jetstream_store
from sandboxer.bus.connect import connect
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.streams import ensure_streams
from sandboxer.clock import utc_now
from sandboxer.events.types import Actor, SandboxTouched

pytestmark = pytest.mark.integration

SID = "kept00000001"
ACTOR = Actor(type="agt", id="pytest")


def touched(n: int) -> SandboxTouched:
    return SandboxTouched(sandbox_id=SID, command_id=f"touch-{n}", actor=ACTOR, at=utc_now())


async def test_a_sandbox_loads_from_the_state_the_store_kept_and_equals_a_full_fold(
    nats_server: NatsServerProcess, monkeypatch: Any
) -> None:
    starts: list[int] = []
    read_subject = jetstream_store.read_subject

    def recording(*args: Any, **kwargs: Any) -> Any:
        starts.append(kwargs["start"])
        return read_subject(*args, **kwargs)

    monkeypatch.setattr(jetstream_store, "read_subject", recording)
    nc = await connect([nats_server.url], name="test-sandbox-store", long_lived=False)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        worker, other = JetStreamEventStore(nc, js), JetStreamEventStore(nc, js)
        loaded = await worker.load(SID)
        for n in range(5):
            loaded = await worker.append(loaded, [touched(n)])
        starts.clear()
        kept = await worker.load(SID)
        assert kept == loaded
        assert starts == [loaded.last_seq + 1]  # not sequence 1

        # Another writer (another process's store) appends; this store reads on from the
        # state it kept, and sees it.
        await other.append(await other.load(SID), [touched(5)])
        starts.clear()
        again = await worker.load(SID)
        assert starts == [kept.last_seq + 1]
        fresh = await JetStreamEventStore(nc, js).load(SID)
        assert again == fresh
        assert (fresh.state.version, len(fresh.state.handled)) == (6, 6)
    finally:
        await nc.close()


async def test_a_store_keeps_a_bounded_number_of_sandboxes(
    nats_server: NatsServerProcess,
) -> None:
    nc = await connect([nats_server.url], name="test-sandbox-store", long_lived=False)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        store = JetStreamEventStore(nc, js)
        store._sandboxes.limit = 2
        for sandbox_id in ("kept00000a1", "kept00000a2", "kept00000a3", "kept00000a2"):
            await store.load(sandbox_id)
        assert list(store._sandboxes) == ["kept00000a3", "kept00000a2"]
    finally:
        await nc.close()
