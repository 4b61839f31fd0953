"""A provisioning held up past the ack wait, resumed after others took the sandbox on.

Real ext.local, real nats-server, two extension workers on one job queue. The first
worker is held (as SIGSTOP holds a process) after it recorded `provisioning` and before
it made anything, and sends no heartbeat: JetStream gives the job to the second worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from sandboxer.bus.connect import connect
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.config.catalog import Catalog
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.local.backend import LocalExtension
from sandboxer.workers.extension_worker import ExtensionWorker
from sandboxer.workers.pull_loop import ConsumerSpec
from tests.integration.conftest import reap_local, start_service
from tests.integration.test_lifecycle import event_types

pytestmark = pytest.mark.integration


class HeldProvision(LocalExtension):
    """Real ext.local whose provisions wait at their start until ``go`` is set."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.held = asyncio.Event()
        self.go = asyncio.Event()

    async def provision(self, request: ProvisionRequest) -> None:
        self.held.set()
        await self.go.wait()
        await super().provision(request)


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
