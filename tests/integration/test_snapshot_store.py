"""The snapshot aggregate on JetStream: its own subjects, and the same concurrency rule."""

from __future__ import annotations

import pytest

from sandboxer import subjects
from sandboxer.bus.connect import connect
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.streams import ensure_streams
from sandboxer.clock import utc_now
from sandboxer.domain.snapshot_decide import RecordSnapshotStored, RequestSnapshot, decide_snapshot
from sandboxer.errors import ConcurrencyConflict
from sandboxer.events.types import SYSTEM_ACTOR
from sandboxer.workers.deciding import apply_snapshot

pytestmark = pytest.mark.integration

SNAP = "snp0000000000000009"


async def test_snapshot_events_append_under_their_own_expected_sequence(
    nats_server: NatsServerProcess,
) -> None:
    nc = await connect([nats_server.url], name="test-snapshot-store", long_lived=False)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        store = JetStreamEventStore(nc, js)
        request = RequestSnapshot(
            command_id="c-snap", actor=SYSTEM_ACTOR, sandbox_id="sandbox0001", extension="ext.local"
        )
        loaded, changed = await apply_snapshot(store, SNAP, request)
        assert changed
        stale = await store.load_snapshot("snp0000000000000009")
        stored = RecordSnapshotStored(
            job_id="j", bucket="SANDBOXER_WORKSPACES", object="sha256-ab", size=3, sha256="ab"
        )
        await apply_snapshot(store, SNAP, stored)
        again = decide_snapshot(loaded.state, stored, utc_now())
        with pytest.raises(ConcurrencyConflict, match=f"snapshot {SNAP}"):
            await store.append_snapshot(stale, again)
        final = await store.load_snapshot(SNAP)
        assert (final.state.status, final.state.object, final.state.version) == (
            "created",
            "sha256-ab",
            2,
        )
        last = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.snapshot_events_filter(SNAP))
        assert last.subject == f"sandboxer.evt.snapshot.{SNAP}.created"
        assert (await store.load("sandbox0001")).last_seq == 0
    finally:
        await nc.close()
