"""Work held up in an extension worker, and what else happens meanwhile.

Real ext.local, real nats-server, extension workers on one job queue. A provisioning held
(as SIGSTOP holds a process) after it recorded `provisioning`, with no heartbeat: JetStream
gives the job to a second worker, and the first resumes after a recreate. A snapshot held
while the sandbox is touched: the touches must not send its job again.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from sandboxer import subjects
from sandboxer.bus.connect import connect
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.config.catalog import Catalog
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.local.backend import LocalExtension
from sandboxer.workers.extension_worker import ExtensionWorker
from sandboxer.workers.pull_loop import ConsumerSpec
from tests.integration.conftest import consumer_idle, reap_local, start_service
from tests.integration.test_lifecycle import event_types

pytestmark = pytest.mark.integration


class HeldProvision(LocalExtension):
    """Real ext.local whose provisions (and snapshots) wait at their start until ``go``."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.held = asyncio.Event()
        self.go = asyncio.Event()

    async def provision(self, request: ProvisionRequest) -> None:
        self.held.set()
        await self.go.wait()
        await super().provision(request)

    async def snapshot_workspace(
        self, sandbox_id: str, destination: Path, *, host: str | None = None
    ) -> None:
        self.held.set()
        await self.go.wait()
        await super().snapshot_workspace(sandbox_id, destination, host=host)


@dataclasses.dataclass(frozen=True)
class Silent(ConsumerSpec):
    """A consumer whose worker never says it is still at work: a frozen process's."""

    @property
    def heartbeat_every(self) -> float:
        return 3600.0


async def test_a_frozen_attempt_resumed_after_a_recreate_leaves_the_new_generation_alone(
    nats_server: NatsServerProcess, home: Path
) -> None:
    """Attempt 1 of generation 1 is held; attempt 2 makes the sandbox ready, and a recreate
    makes generation 2. Resumed, attempt 1 is refused by what is there (made later) and
    must not tear it down: the sandbox under that id is generation 2's."""
    service = await start_service(home, nats_server.url, roles=["control", "projector"])
    nc = await connect([nats_server.url], name="test-fencing")
    js = nc.jetstream()
    store = JetStreamEventStore(nc, js)
    catalog = Catalog.load(home)
    held = HeldProvision(home / "local")
    frozen = ExtensionWorker(js, store, catalog, held, ack_wait=1)
    # One slot: once the held job has it, the frozen worker fetches nothing more.
    frozen.spec = Silent(**{**dataclasses.asdict(frozen.spec), "concurrency": 1})
    other = ExtensionWorker(js, store, catalog, LocalExtension(home / "local"), ack_wait=1)
    stops = asyncio.Event(), asyncio.Event()
    workers = [asyncio.create_task(frozen.run(stops[0]))]
    client = service.client
    try:
        asked = await client.create(wait=False)
        sandbox_id = asked["sandbox_id"]
        async with asyncio.timeout(30):
            await held.held.wait()
        stops[0].set()  # and fetches no more once its slot is free
        workers.append(asyncio.create_task(other.run(stops[1])))
        async with asyncio.timeout(60):
            while "ready" not in await event_types(client, sandbox_id):
                await asyncio.sleep(0.05)
        recreated = await client.recreate(sandbox_id, timeout=60)
        assert recreated["generation"] == 2
        held.go.set()  # attempt 1 of generation 1 resumes
        async with asyncio.timeout(30):
            await workers[0]
        found = await LocalExtension(home / "local").list_sandboxes()
        assert [(item.sandbox_id, item.alive) for item in found] == [(sandbox_id, True)]
        types = await event_types(client, sandbox_id)
        assert types[-1] == "ready"
        assert types.count("ready") == 2
        assert "failed" not in types
    finally:
        held.go.set()
        for stop in stops:
            stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
        await nc.drain()
        await client.close()
        await service.shutdown()
        await reap_local(home)


async def test_touches_during_a_long_snapshot_do_not_send_its_job_again(
    nats_server: NatsServerProcess, home: Path
) -> None:
    """Every exec sends a touch. Had each touch sent the job the sandbox waits for again (a
    snapshot's, here), one sent after the jobs stream's two-minute window would be a new
    message, and a second worker would copy the snapshot beside the first."""
    service = await start_service(home, nats_server.url, roles=["control", "projector"])
    nc = await connect([nats_server.url], name="test-touch-jobs")
    js = nc.jetstream()
    store = JetStreamEventStore(nc, js)
    local = HeldProvision(home / "local")
    local.go.set()  # the provision runs at once; the snapshot is held
    worker = ExtensionWorker(js, store, Catalog.load(home), local)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    client = service.client
    sent: list[str] = []
    try:
        sandbox_id = (await client.create())["sandbox_id"]
        local.go.clear()
        local.held.clear()
        snapshot = asyncio.create_task(client.snapshot(sandbox_id, timeout=60))
        async with asyncio.timeout(30):
            await local.held.wait()

        # Any job published from now on, stored or dropped as a copy, reaches this.
        async def seen(msg: Msg) -> None:
            sent.append(msg.subject)

        jobs = await nc.subscribe("sandboxer.job.>", cb=seen)
        for _ in range(3):
            await client.touch(sandbox_id)
        await consumer_idle(client, subjects.COMMANDS_STREAM, "control")  # all three handled
        await nc.flush()
        await jobs.unsubscribe()
        assert sent == []
        local.go.set()
        assert (await snapshot)["status"] == "created"
    finally:
        local.go.set()
        stop.set()
        await asyncio.gather(running, return_exceptions=True)
        await nc.drain()
        await client.close()
        await service.shutdown()
        await reap_local(home)
