"""A snapshot job that runs out of deliveries after its snapshot was stored: the snapshot
stays created, and the snapshot command's caller is told so."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxer.bus.connect import connect
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.config.catalog import Catalog
from sandboxer.errors import ExtensionError
from sandboxer.extensions.local import LocalExtension
from sandboxer.workers.extension_worker import ExtensionWorker
from sandboxer.workers.jobs import Job
from sandboxer.workers.snapshot_job import SnapshotJob
from sandboxer.workspaces.limits import ArchiveLimits
from tests.integration.conftest import serving, worker_running

pytestmark = pytest.mark.integration


class FinishFails(SnapshotJob):
    """The sandbox's ``snapshot_finished`` append fails on every delivery (not for the bus:
    each counts against the job), after the snapshot was stored; only the give-up's goes
    through."""

    giving_up = False
    failed = 0

    async def finish(self, job: Job, outcome: str) -> None:
        if not self.giving_up:
            self.failed += 1
            raise ExtensionError("the sandbox's append failed (injected)")
        await super().finish(job, outcome)

    async def give_up(self, job: Job, exc: BaseException) -> None:
        self.giving_up = True
        await super().give_up(job, exc)


async def test_a_snapshot_stored_before_its_job_gave_up_is_answered_created(
    nats_server: NatsServerProcess, home: Path
) -> None:
    nc = await connect([nats_server.url], name="test-snapshot-give-up")
    js = nc.jetstream()
    store, extension = JetStreamEventStore(nc, js), LocalExtension(home / "local")
    worker = ExtensionWorker(js, store, Catalog.load(home), extension)
    snapshots = FinishFails(
        js,
        store,
        extension,
        staging_root=home / "staging",
        limits=ArchiveLimits(),
        explain=str,
    )
    worker._snapshots = snapshots
    async with (
        serving(home, nats_server.url, ["control", "projector"], reap=True) as service,
        worker_running(worker, nc),
    ):
        client = service.client
        sandbox_id = (await client.create())["sandbox_id"]
        # On the old code: CommandFailed ("failed: see 'sandboxer snapshots get'"), and the
        # sandbox's snapshot_finished said failed, of a snapshot stored and restorable.
        snapshot = await client.snapshot(sandbox_id, timeout=60)
        assert snapshot["status"] == "created"
        assert snapshots.failed == worker.spec.max_failures
        finished = [
            event
            async for _, event in client.events(sandbox_id=sandbox_id)
            if event["type"] == "snapshot_finished"
        ]
        assert [e["outcome"] for e in finished] == ["created"]
        got = await client.get(sandbox_id)
        assert got is not None
        assert got["snapshotting"] is None  # the sandbox is released
