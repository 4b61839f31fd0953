"""No failure goes unrecorded: a teardown that keeps failing, and a job nobody can read."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from sandboxer import subjects
from sandboxer.bus.connect import connect
from sandboxer.bus.event_store import Loaded
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.client import SandboxerClient
from sandboxer.config.catalog import Catalog
from sandboxer.config.settings import Settings
from sandboxer.errors import ExtensionError
from sandboxer.extensions.local.backend import LocalExtension
from sandboxer.workers.extension_worker import ExtensionWorker
from sandboxer.workers.inventory import InventoryService
from tests.integration.conftest import (
    consumer_idle,
    reap_local,
    resend_provision_job,
    serving,
    start_service,
    worker_running,
)
from tests.integration.test_lifecycle import event_types, wait_status

pytestmark = pytest.mark.integration


class TeardownFaults(LocalExtension):
    """Real ext.local, with a teardown that fails while ``broken`` is set (a fault injected
    to see how a failure is recorded; the real teardown runs once it is cleared)."""

    broken = False

    async def teardown(self, sandbox_id: str, *, host: str | None = None) -> None:
        if self.broken:
            raise ExtensionError(
                f"cannot remove {sandbox_id}: device busy (injected)", sandbox_id=sandbox_id
            )
        await super().teardown(sandbox_id, host=host)


@dataclasses.dataclass
class Beside:
    """The control worker and projector, and this test's own ext.local worker beside them."""

    client: SandboxerClient
    settings: Settings
    nc: NatsClient
    store: JetStreamEventStore
    worker: ExtensionWorker


@contextlib.asynccontextmanager
async def worker_beside(
    home: Path,
    url: str,
    extension: LocalExtension,
    store_type: type[JetStreamEventStore] = JetStreamEventStore,
) -> AsyncIterator[Beside]:
    """An extension worker of ``extension`` and a store of ``store_type`` (either may fail
    on purpose) that gives a job up after two failures, beside the real service's roles."""
    nc = await connect([url], name="test-faulty-worker")
    store = store_type(nc, nc.jetstream())
    worker = ExtensionWorker(nc.jetstream(), store, Catalog.load(home), extension, ack_wait=2)
    worker.spec = dataclasses.replace(worker.spec, max_failures=2)
    async with (
        serving(home, url, ["control", "projector"], reap=True) as service,
        worker_running(worker, nc),
    ):
        yield Beside(service.client, service.settings, nc, store, worker)


async def test_a_teardown_that_keeps_failing_is_recorded_and_retried(
    nats_server: NatsServerProcess, home: Path
) -> None:
    extension = TeardownFaults(home / "local")
    async with worker_beside(home, nats_server.url, extension) as beside:
        client = beside.client
        inventory = InventoryService(beside.nc, beside.store, extension, beside.settings)
        await inventory.start()
        try:
            ready = await client.create()
            sandbox_id = ready["sandbox_id"]
            extension.broken = True
            await client.destroy(sandbox_id, wait=False)
            async with asyncio.timeout(30):
                while "teardown_failed" not in await event_types(client, sandbox_id):
                    await asyncio.sleep(0.1)
            stuck = await wait_status(client, sandbox_id, {"destroying"})
            assert "device busy" in stuck["teardown_failure"]
            failed = [
                event
                async for _seq, event in client.events(sandbox_id=sandbox_id)
                if event["type"] == "teardown_failed"
            ]
            assert "device busy" in failed[0]["reason"]
            # inspect stale shows it stuck; reap-stale tries again and records the new failure.
            stale = await client.inventory("stale", "ext.local", {})
            assert [s["sandbox_id"] for s in stale[0]["hosts"][0]["stuck"]] == [sandbox_id]
            await client.inventory("reap", "ext.local", {"apply": True})
            again = await wait_status(client, sandbox_id, {"destroying"})
            assert "reap-stale tried again" in (again["teardown_failure"] or "")
            # Once the cause is gone, reap-stale (or a new destroy) finishes the job.
            extension.broken = False
            reaped = await client.inventory("reap", "ext.local", {"apply": True})
            assert reaped[0]["hosts"][0]["removed"] == [sandbox_id]
            done = await wait_status(client, sandbox_id, {"destroyed"})
            assert done["teardown_failure"] is None
            assert not (home / "local" / sandbox_id).exists()
        finally:
            await inventory.stop()


class AppendFaults(JetStreamEventStore):
    """The real store, whose sandbox appends fail while ``broken`` is set (a fault injected
    so that a job keeps failing until it runs out of deliveries)."""

    broken = False
    failed = 0

    async def append(self, loaded: Loaded, events: Any, *, alongside: Any = None) -> Loaded:
        if self.broken:
            self.failed += 1
            raise RuntimeError("append refused (injected)")
        return await super().append(loaded, events, alongside=alongside)


async def test_a_stale_provision_job_giving_up_leaves_the_ready_sandbox_alone(
    nats_server: NatsServerProcess, home: Path
) -> None:
    """A copy of a ready sandbox's provision job (redelivered, or sent again) keeps failing
    until it runs out of deliveries. Its give-up is not the sandbox's failure: the sandbox
    the job is past stays ready and running. It used to be torn down and marked failed."""
    extension = LocalExtension(home / "local")
    async with worker_beside(home, nats_server.url, extension, AppendFaults) as beside:
        client, store = beside.client, beside.store
        assert isinstance(store, AppendFaults)
        ready = await client.create()
        sandbox_id = ready["sandbox_id"]
        store.broken = True
        await resend_provision_job(client, sandbox_id)  # as of `routed`: it appends, and fails
        async with asyncio.timeout(30):
            while store.failed < 2:  # the job's deliveries, each failed: then the give-up
                await asyncio.sleep(0.05)
        store.broken = False  # a give-up that tried to record a failure now records it
        await consumer_idle(client, subjects.JOBS_STREAM, beside.worker.spec.durable)
        types = await event_types(client, sandbox_id)
        assert types == ["requested", "routed", "provisioning", "ready"], types
        assert (home / "local" / sandbox_id).is_dir()  # not torn down
        listed = {found.sandbox_id: found.alive for found in await extension.list_sandboxes()}
        assert listed.get(sandbox_id) is True  # its holder still runs


async def test_an_unreadable_job_becomes_a_rejection(
    nats_server: NatsServerProcess, home: Path
) -> None:
    service = await start_service(home, nats_server.url)
    client = service.client
    rejected: list[dict[str, Any]] = []

    async def on_rejection(msg: Any) -> None:
        rejected.append(json.loads(msg.data))

    sub = await client.nc.subscribe("sandboxer.evt.command.*.rejected", cb=on_rejection)
    try:
        junk = [b"{not a job", b"[" * 5000 + b"]" * 5000, b'{"job_id": 1}']
        for data in junk:
            await client.js.publish(subjects.job_subject("ext.local", "junkjob01"), data)
        async with asyncio.timeout(15):
            while len(rejected) < len(junk):
                await asyncio.sleep(0.05)
        assert {r["code"] for r in rejected} == {"unreadable_job"}
        assert {r["stream"] for r in rejected} == {subjects.JOBS_STREAM}
        assert all(r["reason"].startswith("the job is unreadable") for r in rejected)
        # ...and the worker still serves.
        assert (await client.create())["type"] == "ready"
    finally:
        await sub.unsubscribe()
        await client.close()
        await service.shutdown()
        await reap_local(home)
