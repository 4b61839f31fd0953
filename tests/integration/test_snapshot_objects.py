"""Snapshot objects nothing holds are collected: one stored by a worker killed before it
recorded ``created``, and a deleted snapshot's once the sandbox that held it is destroyed
(docs/snapshots.md, "Objects nothing holds")."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

import pytest
from nats.js import JetStreamContext
from nats.js.errors import ObjectNotFoundError

from sandboxer import subjects
from sandboxer.bus.connect import connect
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.config.catalog import Catalog
from sandboxer.domain.left_out import LeftOut
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.domain.snapshot_decide import RecordSnapshotFailed, RecordSnapshotStored
from sandboxer.errors import CommandFailed, ExtensionError
from sandboxer.extensions.local import LocalExtension
from sandboxer.workers.extension_worker import ExtensionWorker
from sandboxer.workers.jobs import Job
from sandboxer.workers.snapshot_job import SnapshotJob
from sandboxer.workers.snapshot_objects import collect_orphaned_objects
from sandboxer.workspaces.limits import ArchiveLimits
from tests.integration.conftest import reap_local, serving, start_service, worker_running
from tests.waiting import logged

pytestmark = pytest.mark.integration


class WrittenDuringTheCopy(LocalExtension):
    """The sandbox wrote a file while the first copy ran and removed it since: the first
    attempt stores other bytes than the one after it."""

    async def snapshot_workspace(
        self, sandbox_id: str, destination: Path, *, host: str | None = None
    ) -> LeftOut:
        left_out = await super().snapshot_workspace(sandbox_id, destination, host=host)
        (destination / "build.log").write_text("half-way through the build\n")
        return left_out


class WorkspaceGone(LocalExtension):
    """The copy fails (the sandbox's disk went away meanwhile): the snapshot fails."""

    async def snapshot_workspace(
        self, sandbox_id: str, destination: Path, *, host: str | None = None
    ) -> LeftOut:
        raise ExtensionError("the sandbox's workspace is gone (injected)")


class KilledAfterStoring(SnapshotJob):
    """Stores the snapshot's object, then the process is killed (kill -9) before it appends
    ``created``: the job hangs there until the test closes its connection and cancels it,
    so nothing after the upload ever runs, as in a killed process."""

    stored: asyncio.Future[str]
    """The object the cut-off delivery stored (set by the test)."""
    hanging: asyncio.Task[object] | None = None

    async def _take(
        self, job: Job, sandbox: SandboxState
    ) -> RecordSnapshotStored | RecordSnapshotFailed:
        outcome = await super()._take(job, sandbox)
        assert isinstance(outcome, RecordSnapshotStored), outcome
        self.hanging = asyncio.current_task()
        self.stored.set_result(outcome.object)
        await asyncio.Event().wait()  # killed here
        raise AssertionError("unreachable")


async def present(js: JetStreamContext, name: str) -> bool:
    bucket = await js.object_store(subjects.WORKSPACES_BUCKET)
    try:
        await bucket.get_info(name)
    except ObjectNotFoundError:
        return False
    return True


async def gone_within(js: JetStreamContext, name: str, seconds: float) -> bool:
    async with asyncio.timeout(seconds):
        while await present(js, name):
            await asyncio.sleep(0.1)
    return True


@pytest.mark.parametrize("then", ["stored_again", "failed"])
async def test_an_object_stored_by_a_worker_killed_before_created_is_collected(
    nats_server: NatsServerProcess, home: Path, then: Literal["stored_again", "failed"]
) -> None:
    service = await start_service(home, nats_server.url, roles=["control", "projector"])
    catalog = Catalog.load(home)
    nc1 = await connect([nats_server.url], name="test-snapshot-objects-killed")
    js1 = nc1.jetstream()
    store1 = JetStreamEventStore(nc1, js1)
    first = WrittenDuringTheCopy(home / "local")
    killed = ExtensionWorker(js1, store1, catalog, first)
    job = KilledAfterStoring(
        js1, store1, first, staging_root=home / "staging", limits=ArchiveLimits(), explain=str
    )
    job.stored = asyncio.get_running_loop().create_future()
    killed._snapshots = job
    stop1 = asyncio.Event()
    running1 = asyncio.create_task(killed.run(stop1))
    nc2 = await connect([nats_server.url], name="test-snapshot-objects-restarted")
    js2 = nc2.jetstream()
    store2 = JetStreamEventStore(nc2, js2)
    stop2 = asyncio.Event()
    running2: asyncio.Task[None] | None = None
    client = service.client
    try:
        sandbox_id = (await client.create())["sandbox_id"]
        taking = asyncio.create_task(client.snapshot(sandbox_id, timeout=90))
        async with asyncio.timeout(60):
            orphan = await job.stored
        # kill -9: the job's task and the worker's end where they are, the job un-acked and
        # no word of it sent (a cancelled handler neither acks nor naks: pull_loop.py).
        assert job.hanging is not None
        job.hanging.cancel()
        running1.cancel()
        async with asyncio.timeout(10):
            await asyncio.gather(running1, job.hanging, return_exceptions=True)
        await nc1.close()

        # A slow or frozen job (its snapshot still requested) keeps what it stored: it may
        # yet record it.
        assert await collect_orphaned_objects(js2, store2) == []
        assert await present(js2, orphan)

        # The restarted worker (or another) is delivered the job again.
        backend = LocalExtension if then == "stored_again" else WorkspaceGone
        restarted = ExtensionWorker(js2, store2, catalog, backend(home / "local"))
        await restarted.reconcile()
        running2 = asyncio.create_task(restarted.run(stop2))
        if then == "stored_again":
            snapshot = await taking
            assert snapshot["status"] == "created"
            assert snapshot["object"] != orphan
            assert await present(js2, snapshot["object"])
        else:
            with pytest.raises(CommandFailed, match="workspace is gone"):
                await taking
        # Collected as the redelivered job ends, with no other start or sweep; on the old
        # code the killed delivery's object stayed in the bucket for good.
        assert await gone_within(js2, orphan, 10)
    finally:
        stop2.set()
        if running2 is not None:
            await asyncio.gather(running2, return_exceptions=True)
        await nc2.drain()
        if not nc1.is_closed:
            await nc1.close()
        await client.close()
        await service.shutdown()
        await reap_local(home)


@pytest.mark.parametrize("collector", ["start", "leak_sweep"])
async def test_a_deleted_snapshot_s_object_goes_once_the_sandbox_restored_from_it_is_destroyed(
    nats_server: NatsServerProcess, home: Path, collector: Literal["start", "leak_sweep"]
) -> None:
    nc = await connect([nats_server.url], name="test-snapshot-objects-deleted")
    js = nc.jetstream()
    store = JetStreamEventStore(nc, js)
    catalog = Catalog.load(home)
    worker = ExtensionWorker(js, store, catalog, LocalExtension(home / "local"))
    async with (
        serving(home, nats_server.url, ["control", "projector"], reap=True) as service,
        worker_running(worker, nc),
    ):
        client = service.client
        source = (await client.create())["sandbox_id"]
        snapshot = await client.snapshot(source, timeout=60)
        restored = (await client.restore(snapshot["snapshot_id"]))["sandbox_id"]
        deleted = await client.delete_snapshot(snapshot["snapshot_id"])
        # The restored sandbox names the object as its input (a recreate fetches it again).
        assert deleted["object_removed"] is False

        async def collect() -> None:
            if collector == "leak_sweep":
                await worker.sweep_leaks()  # the running worker's
            else:  # another worker's start
                await ExtensionWorker(
                    js, store, catalog, LocalExtension(home / "local")
                ).reconcile()

        await collect()
        assert await present(js, snapshot["object"])

        await client.destroy(restored)
        # The collection reads the log: without its `destroyed` there, the sandbox holds it.
        await logged(lambda: store.load(restored), lambda got: got.state.status == "destroyed")
        await collect()
        # On the old code nothing removed it once the sandbox holding it was gone.
        assert not await present(js, snapshot["object"])
