"""The workspaces bucket's objects that nothing holds go after a grace period: a create's
upload no sandbox names (any more), a copy's archive in or out, a killed put's chunks
(docs/workspaces.md, "What stays in the bucket"). Before, none of them was ever removed."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta
from nats.js.errors import NotFoundError

from sandboxer import subjects
from sandboxer.bus.connect import connect
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.object_buckets import bucket_subjects, list_stored
from sandboxer.clock import utc_now
from sandboxer.domain.bucket_objects import Stored
from sandboxer.events.types import (
    Actor,
    SandboxDestroyed,
    SandboxRequested,
    SnapshotCreated,
    SnapshotDeleted,
    SnapshotRequested,
)
from sandboxer.workers.snapshot_objects import collect_orphaned_objects
from sandboxer.workspaces.bucket import open_bucket
from sandboxer.workspaces.refs import object_name, object_ref
from sandboxer.workspaces.stored_objects import remove_unchanged, touch_stored
from tests.integration.conftest import reap_local, start_service

pytestmark = pytest.mark.integration

BUCKET = subjects.WORKSPACES_BUCKET

GRACE = 2.0
ACTOR = Actor(type="adm", id="pytest")
STREAM = f"OBJ_{subjects.WORKSPACES_BUCKET}"


def tree(root: Path, content: str) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text(content)
    return root


async def names(js: JetStreamContext) -> set[str]:
    bucket = await open_bucket(js)
    try:
        return {info.name for info in await bucket.list(ignore_deletes=True)}
    except NotFoundError:  # nats-py's answer to an empty listing
        return set()


async def chunk_subjects(js: JetStreamContext) -> set[str]:
    info = await js.stream_info(STREAM, subjects_filter=f"$O.{subjects.WORKSPACES_BUCKET}.C.>")
    return set(info.state.subjects or {})


async def listing(js: JetStreamContext) -> dict[str, Stored]:
    return {
        found.name: found
        for found in await list_stored(
            js, await bucket_subjects(js, bucket=BUCKET) or {}, bucket=BUCKET
        )
    }


class StopsAfterTwoChunks(io.RawIOBase):
    """A put's source that gives two chunks, then hangs (the putting process is killed
    there): nats-py reads it in a thread, so the test releases it at the end."""

    def __init__(self) -> None:
        self.given = 0
        self.release = threading.Event()

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        if self.given >= 2:
            self.release.wait(30)
            return 0
        self.given += 1
        buffer[:] = bytes([self.given]) * len(buffer)
        return len(buffer)


async def killed_put(js: JetStreamContext) -> set[str]:
    """A put cut off after its chunks and before its metadata; the chunk subject it left."""
    before = await chunk_subjects(js)
    bucket = await open_bucket(js)
    source = StopsAfterTwoChunks()
    putting = asyncio.create_task(bucket.put("sha256-" + "e" * 64, source))  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(10):
            while len(await chunk_subjects(js)) == len(before):
                await asyncio.sleep(0.05)
        putting.cancel()  # kill -9: nats-py purges on a failed read, never on this
        await asyncio.gather(putting, return_exceptions=True)
    finally:
        source.release.set()
    left = await chunk_subjects(js) - before
    assert len(left) == 1
    return left


async def test_objects_nothing_holds_go_after_the_grace_period(
    nats_server: NatsServerProcess, home: Path, tmp_path: Path
) -> None:
    service = await start_service(home, nats_server.url, input_roots=())
    client = service.client
    nc = await connect([nats_server.url], name="test-bucket-objects")
    js = nc.jetstream()
    store = JetStreamEventStore(nc, js)
    other = await connect([nats_server.url], name="test-bucket-objects-other")
    try:
        # A create's upload that no create ever named, and one a live sandbox names.
        unused = await client.upload_directory(tree(tmp_path / "unused", "a = 1\n"))
        held = await client.upload_directory(tree(tmp_path / "held", "b = 2\n"))
        again = await client.upload_directory(tree(tmp_path / "again", "c = 3\n"))
        sandbox_id = (await client.create("profile.local", {"repo": held.ref}))["sandbox_id"]
        # A copy in and a copy out, each through an object of the bucket.
        before = await names(js)
        (tmp_path / "notes.txt").write_text("copied in\n")
        await client.copy_in(sandbox_id, tmp_path / "notes.txt", "notes.txt")
        copied_in = await names(js) - before
        await client.copy_out(sandbox_id, "src/app.py", tmp_path / "out.py")
        copied_out = await names(js) - before - copied_in
        assert len(copied_in) == len(copied_out) == 1
        strays = await killed_put(js)

        await asyncio.sleep(GRACE + 0.5)
        # Within the grace: a tree uploaded again now (found there, so touched, not sent),
        # as a client does seconds before it sends its create, and one stored now.
        assert not (await client.upload_directory(tmp_path / "again")).stored
        fresh = await client.upload_directory(tree(tmp_path / "fresh", "d = 4\n"))

        removed = await collect_orphaned_objects(js, store, grace=GRACE)
        kept = await names(js)
        # On the old code every one of these stayed, for ever.
        gone = {object_name(unused.sha256), *copied_in, *copied_out}
        assert not gone & kept, (gone & kept, removed, unused, copied_in, copied_out)
        assert strays.isdisjoint(await chunk_subjects(js))
        assert set(removed) == gone | strays
        for live in (held, again, fresh):
            assert object_name(live.sha256) in kept

        await client.destroy(sandbox_id)
        await asyncio.sleep(GRACE + 0.5)
        # Two workers' collections at once: each object removed once, by one of them.
        first, second = await asyncio.gather(
            collect_orphaned_objects(js, store, grace=GRACE),
            collect_orphaned_objects(
                other.jetstream(), JetStreamEventStore(other, other.jetstream()), grace=GRACE
            ),
        )
        expected = {object_name(u.sha256) for u in (held, again, fresh)}
        # (A collection that lists between the other's removal and its purge of the chunks
        # purges them too: harmless, and reported.)
        assert sorted(n for n in first + second if n.startswith("sha256-")) == sorted(expected)
        assert not await names(js)
        assert not await chunk_subjects(js)
        assert await collect_orphaned_objects(js, store, grace=GRACE) == []
    finally:
        await other.drain()
        await nc.drain()
        await client.close()
        await service.shutdown()
        await reap_local(home)


async def test_a_touch_and_a_removal_never_both_win(
    nats_server: NatsServerProcess, home: Path, tmp_path: Path
) -> None:
    """The client that finds an object there and the collection that judged it unheld write
    over the same metadata, each only over the message it read: whichever is second fails
    (the toucher then stores the object again), so a create never names a removed object."""
    service = await start_service(home, nats_server.url, roles=["control"])
    client = service.client
    try:
        up = await client.upload_directory(tree(tmp_path / "t", "x = 1\n"))
        name = object_name(up.sha256)
        js = client.js
        listed = await listing(js)
        # Touched after the collection listed it: the removal finds it changed.
        assert await touch_stored(js, name, up.sha256, up.size)
        assert not await remove_unchanged(js, listed[name])
        assert name in await names(js)
        # Removed after the toucher read it... the touch fails: the client stores it again.
        listed = await listing(js)
        assert await remove_unchanged(js, listed[name])
        assert not await remove_unchanged(js, listed[name])  # a second worker: done already
        assert not await touch_stored(js, name, up.sha256, up.size)
        assert (await client.upload_directory(tmp_path / "t")).stored
        assert name in await names(js)
        # A touch drops a snapshot's mark: someone else now wants the object.
        bucket = await open_bucket(js)
        marked = "sha256-" + "f" * 64
        await bucket.put(
            marked, b"x", meta=ObjectMeta(name=marked, headers={"Sandboxer-Snapshot": ["s1"]})
        )
        sha = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"  # of b"x"
        assert await touch_stored(js, marked, sha, 1)
        assert not (await bucket.get_info(marked)).headers
    finally:
        await client.close()
        await service.shutdown()


def _requested(sandbox_id: str, inputs: dict[str, str]) -> SandboxRequested:
    return SandboxRequested(
        sandbox_id=sandbox_id,
        command_id=f"create-{sandbox_id}",
        actor=ACTOR,
        at=utc_now(),
        profile="profile.local",
        profile_version=1,
        inputs=inputs,
    )


async def destroy(store: JetStreamEventStore, sandbox_id: str) -> None:
    destroyed = SandboxDestroyed(
        sandbox_id=sandbox_id, command_id=f"destroy-{sandbox_id}", actor=ACTOR, at=utc_now()
    )
    await store.append(await store.load(sandbox_id), [destroyed])


async def test_a_worker_reads_only_the_log_past_what_it_kept(
    new_store: Callable[[], JetStreamEventStore], read_starts: list[int]
) -> None:
    """The collection asks, every leak sweep, which objects snapshots and sandboxes hold;
    the log is kept for ever, so a worker's store keeps what it read and reads on from
    there (before, every sweep read every snapshot event from sequence 1), and what it
    answers is what a fresh read of the whole log answers."""
    worker, other = new_store(), new_store()
    ref = [object_ref(str(n) * 64) for n in range(4)]
    for sandbox_id, inputs in (
        ("objs00000000", {"repo": ref[0]}),
        ("objs00000001", {"repo": ref[1]}),
        ("objs00000002", {"repo": ref[2], "extra": "/srv/checkouts/app"}),
    ):
        await other.append(await other.load(sandbox_id), [_requested(sandbox_id, inputs)])
    await destroy(other, "objs00000000")
    snap = await other.load_snapshot("objsnap00001")
    snap = await other.append_snapshot(
        snap,
        [
            SnapshotRequested(
                snapshot_id="objsnap00001",
                command_id="snap-1",
                actor=ACTOR,
                at=utc_now(),
                sandbox_id="objs00000001",
                extension="ext.local",
            ),
            SnapshotCreated(
                snapshot_id="objsnap00001",
                command_id="snap-1",
                actor=ACTOR,
                at=utc_now(),
                bucket=subjects.WORKSPACES_BUCKET,
                object=object_name("0" * 64),
                size=1,
                sha256="0" * 64,
            ),
        ],
    )
    assert await worker.objects_in_use() == {ref[1], ref[2]}
    assert [s.status for s in await worker.snapshot_states()] == ["created"]

    await destroy(other, "objs00000001")
    await other.append(
        await other.load("objs00000003"), [_requested("objs00000003", {"repo": ref[3]})]
    )
    await other.append_snapshot(
        snap,
        [
            SnapshotDeleted(
                snapshot_id="objsnap00001", command_id="del-1", actor=ACTOR, at=utc_now()
            )
        ],
    )
    read_starts.clear()
    assert await worker.objects_in_use() == {ref[2], ref[3]}
    assert [s.status for s in await worker.snapshot_states()] == ["deleted"]
    assert read_starts
    assert 1 not in read_starts  # on from what it kept, never from the log's start
    fresh = new_store()
    assert await fresh.objects_in_use() == {ref[2], ref[3]}
    assert await fresh.snapshot_states() == await worker.snapshot_states()
