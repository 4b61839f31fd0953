"""A snapshot's delete removes its object only over the metadata it read before it looked at
the log (docs/snapshots.md, "Delete"): whoever stores or touches the object in between
keeps it. Before, the delete removed whatever the bucket held under the name by then."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta

from sandboxer import subjects
from sandboxer.bus.connect import connect
from sandboxer.bus.event_store import LoadedSnapshot
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.object_buckets import bucket_subjects, list_stored
from sandboxer.bus.streams import ensure_streams
from sandboxer.clock import utc_now
from sandboxer.commands.types import DeleteSnapshot
from sandboxer.config.catalog import Catalog
from sandboxer.domain.snapshot_objects import owned_by
from sandboxer.events.types import (
    Actor,
    SandboxRequested,
    SnapshotCreated,
    SnapshotDeleted,
    SnapshotEvent,
    SnapshotRequested,
)
from sandboxer.workers.snapshot_commands import SnapshotCommands
from sandboxer.workspaces.bucket import open_or_create_bucket
from sandboxer.workspaces.refs import object_name, object_ref
from sandboxer.workspaces.stored_objects import touch_stored

pytestmark = pytest.mark.integration

BUCKET = subjects.WORKSPACES_BUCKET

ACTOR = Actor(type="adm", id="pytest")


class Between(JetStreamEventStore):
    """Runs ``between`` once the delete's decision is appended, before its removal: what
    another process does to the object in that moment."""

    between: Callable[[], Awaitable[None]] | None = None

    async def append_snapshot(
        self, loaded: LoadedSnapshot, events: Sequence[SnapshotEvent]
    ) -> LoadedSnapshot:
        appended = await super().append_snapshot(loaded, events)
        if self.between is not None and any(isinstance(e, SnapshotDeleted) for e in events):
            between, self.between = self.between, None
            await between()
        return appended


@pytest.fixture
async def bus(nats_server: NatsServerProcess) -> AsyncIterator[tuple[Between, JetStreamContext]]:
    nc = await connect([nats_server.url], name="test-snapshot-delete", long_lived=False)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        await open_or_create_bucket(js, 1)
        yield Between(nc, js), js
    finally:
        await nc.close()


async def stored_snapshot(
    store: JetStreamEventStore, js: JetStreamContext, snapshot_id: str, data: bytes
) -> tuple[str, str]:
    """A snapshot ``created`` naming the object of ``data``, put by its job (marked); the
    object's name and SHA-256 hex."""
    sha = hashlib.sha256(data).hexdigest()
    name = object_name(sha)
    bucket = await open_or_create_bucket(js, 1)
    await bucket.put(name, data, meta=ObjectMeta(name=name, headers=owned_by(snapshot_id)))
    await taken(store, snapshot_id, name, sha, len(data))
    return name, sha


async def taken(
    store: JetStreamEventStore,
    snapshot_id: str,
    name: str,
    sha: str,
    size: int,
    *,
    done: bool = True,
) -> None:
    events: list[SnapshotEvent] = [
        SnapshotRequested(
            snapshot_id=snapshot_id,
            command_id=f"snap-{snapshot_id}",
            actor=ACTOR,
            at=utc_now(),
            sandbox_id="deletes00001",
            extension="ext.local",
        )
    ]
    if done:
        events.append(
            SnapshotCreated(
                snapshot_id=snapshot_id,
                command_id=f"snap-{snapshot_id}",
                actor=ACTOR,
                at=utc_now(),
                bucket=subjects.WORKSPACES_BUCKET,
                object=name,
                size=size,
                sha256=sha,
            )
        )
    await store.append_snapshot(await store.load_snapshot(snapshot_id), events)


async def present(js: JetStreamContext) -> set[str]:
    return {
        found.name
        for found in await list_stored(
            js, await bucket_subjects(js, bucket=BUCKET) or {}, bucket=BUCKET
        )
    }


def delete(snapshot_id: str, command_id: str = "") -> DeleteSnapshot:
    return DeleteSnapshot(
        command_id=command_id or f"del-{snapshot_id}", actor=ACTOR, snapshot_id=snapshot_id
    )


async def test_an_object_stored_or_touched_between_a_delete_s_decision_and_removal_stays(
    bus: tuple[Between, JetStreamContext], tmp_path: Path
) -> None:
    """A client uploading the same tree finds the object there (touches it) right after the
    delete decided to remove it, then names it in its create; or the object is removed and
    stored again (a collection, then a snapshot's job or an upload finding it absent). The
    delete's removal now fails over the changed metadata; before, it removed the object and
    the create (or the snapshot recording it) named an object that was gone."""
    store, js = bus
    commands = SnapshotCommands(js, store, Catalog.load(tmp_path))

    touched, sha = await stored_snapshot(store, js, "snpdeletes0000001", b"tree one")

    async def touch() -> None:
        assert await touch_stored(js, touched, sha, len(b"tree one"))

    store.between = touch
    await commands.delete(delete("snpdeletes0000001"))
    assert (await store.load_snapshot("snpdeletes0000001")).state.object_removed
    assert touched in await present(js)

    stored_again, _ = await stored_snapshot(store, js, "snpdeletes0000002", b"tree two")

    async def remove_and_put() -> None:
        bucket = await open_or_create_bucket(js, 1)
        await bucket.delete(stored_again)
        await bucket.put(stored_again, b"tree two")

    store.between = remove_and_put
    await commands.delete(delete("snpdeletes0000002"))
    assert stored_again in await present(js)

    # Nothing in between: the delete removes its object, as before.
    alone, _ = await stored_snapshot(store, js, "snpdeletes0000003", b"tree three")
    await commands.delete(delete("snpdeletes0000003"))
    assert alone not in await present(js)


async def test_a_delete_keeps_what_a_sandbox_or_a_later_snapshot_holds(
    bus: tuple[Between, JetStreamContext], tmp_path: Path
) -> None:
    """A sandbox not destroyed that names the object (a restored one: its recreate fetches it
    again) keeps it; so does a snapshot of the same tree recorded after the delete was first
    handled and before it was redelivered (the worker died before the removal). A redelivered
    delete with nothing holding the object removes what the crash left."""
    store, js = bus
    commands = SnapshotCommands(js, store, Catalog.load(tmp_path))
    held, sha = await stored_snapshot(store, js, "snpdeletes0000011", b"restored")
    restored = "deletes00002"
    await store.append(
        await store.load(restored),
        [
            SandboxRequested(
                sandbox_id=restored,
                command_id=f"create-{restored}",
                actor=ACTOR,
                at=utc_now(),
                profile="profile.local",
                profile_version=1,
                inputs={"repo": object_ref(sha)},
            )
        ],
    )
    await commands.delete(delete("snpdeletes0000011"))
    assert not (await store.load_snapshot("snpdeletes0000011")).state.object_removed
    assert held in await present(js)

    first, sha = await stored_snapshot(store, js, "snpdeletes0000012", b"shared later")
    # Decided, and the worker died before the removal; a snapshot of the same tree since.
    await decided_then_crashed(store, "snpdeletes0000012", "del-crashed")
    await taken(store, "snpdeletes0000013", first, sha, len(b"shared later"))
    await commands.delete(delete("snpdeletes0000012", "del-crashed"))
    assert first in await present(js)

    left, _ = await stored_snapshot(store, js, "snpdeletes0000014", b"left by a crash")
    await decided_then_crashed(store, "snpdeletes0000014", "del-crashed-2")
    await commands.delete(delete("snpdeletes0000014", "del-crashed-2"))
    assert left not in await present(js)


async def decided_then_crashed(store: JetStreamEventStore, snapshot_id: str, command: str) -> None:
    """The delete ``command`` of ``snapshot_id`` recorded, its worker killed before the removal."""
    decided = SnapshotDeleted(
        snapshot_id=snapshot_id, command_id=command, actor=ACTOR, at=utc_now(), object_removed=True
    )
    await store.append_snapshot(await store.load_snapshot(snapshot_id), [decided])


async def test_an_object_found_by_others_waits_while_a_snapshot_is_being_taken(
    bus: tuple[Between, JetStreamContext], tmp_path: Path
) -> None:
    """The object lost its snapshot's mark (someone found it there and touched it) before the
    delete read it, and a snapshot is being taken: that snapshot's job may be the one that
    found it, about to record it. The delete leaves the object to the collection, which
    removes it once no snapshot is being taken and nothing holds it."""
    store, js = bus
    commands = SnapshotCommands(js, store, Catalog.load(tmp_path))
    name, sha = await stored_snapshot(store, js, "snpdeletes0000021", b"found by a job")
    await taken(store, "snpdeletes0000022", name, sha, 0, done=False)  # still being taken
    assert await touch_stored(js, name, sha, len(b"found by a job"))  # its job found it
    await commands.delete(delete("snpdeletes0000021"))
    assert not (await store.load_snapshot("snpdeletes0000021")).state.object_removed
    assert name in await present(js)
