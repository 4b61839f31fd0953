"""Work held up in an extension worker, and what else happens meanwhile.

Real ext.local, real nats-server, extension workers on one job queue. A provisioning held
(as SIGSTOP holds a process) after it recorded `provisioning`, with no heartbeat: JetStream
gives the job to a second worker, and the first resumes after a recreate. A recreate's
clean start held the same way, resumed after the second worker made generation 2. A
snapshot held while the sandbox is touched: the touches must not send its job again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg

from sandboxer import subjects
from sandboxer.bus.connect import connect
from sandboxer.bus.in_effect import in_effect
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.config.catalog import Catalog
from sandboxer.extensions.base import Extension, ProvisionRequest
from sandboxer.extensions.local.backend import LocalExtension
from sandboxer.workers.extension_worker import ExtensionWorker
from sandboxer.workers.pull_loop import ConsumerSpec
from tests.integration.conftest import (
    consumer_idle,
    reap_local,
    serving,
    start_service,
    worker_running,
)
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


class HeldTeardowns:
    """Holds the first teardown ``extension`` is asked for (either kind it has: a recreate's
    clean start) at its start until ``go``, as a worker frozen (SIGSTOP) or cut off from
    NATS between its look at the log and its teardown is."""

    def __init__(self, extension: Extension) -> None:
        self.held = asyncio.Event()
        self.go = asyncio.Event()
        self.armed = True
        for name in ("teardown", "teardown_attempt"):
            if hasattr(extension, name):
                setattr(extension, name, self._hold(getattr(extension, name)))

    def _hold(self, call: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        async def held(*args: Any, **kwargs: Any) -> None:
            if self.armed:
                self.armed = False
                self.held.set()
                await self.go.wait()
            await call(*args, **kwargs)

        return held


async def test_a_recreate_held_before_its_clean_start_leaves_the_later_attempt_s_sandbox(
    nats_server: NatsServerProcess, home: Path
) -> None:
    """A recreate's worker is held after its look at the log, before it removes generation
    1's sandbox; the job goes to a second worker, whose attempt 2 removes generation 1's,
    makes generation 2's and records `ready`. The held worker then goes on: its clean start
    (attempt 1's) must leave that sandbox alone, or the log's `ready` names a holder that no
    longer runs (a plain teardown removed it, and attempt 1 made another in its place)."""
    service = await start_service(home, nats_server.url, roles=["control", "projector"])
    nc = await connect([nats_server.url], name="test-fencing-recreate")
    js = nc.jetstream()
    store = JetStreamEventStore(nc, js)
    catalog = Catalog.load(home)
    root = home / "local"
    maker = ExtensionWorker(js, store, catalog, LocalExtension(root), ack_wait=1)
    holding = LocalExtension(root)
    hold = HeldTeardowns(holding)
    held = ExtensionWorker(js, store, catalog, holding, ack_wait=1)
    held.spec = Silent(**{**dataclasses.asdict(held.spec), "concurrency": 1})
    other = ExtensionWorker(js, store, catalog, LocalExtension(root), ack_wait=1)
    stops = asyncio.Event(), asyncio.Event(), asyncio.Event()
    workers = [asyncio.create_task(maker.run(stops[0]))]
    client = service.client
    try:
        sandbox_id = (await client.create())["sandbox_id"]
        stops[0].set()
        await workers[0]  # generation 1 is ready; only the held worker takes the recreate
        workers.append(asyncio.create_task(held.run(stops[1])))
        await client.recreate(sandbox_id, wait=False)
        async with asyncio.timeout(30):
            await hold.held.wait()
        stops[1].set()  # the held worker fetches nothing more
        workers.append(asyncio.create_task(other.run(stops[2])))
        async with asyncio.timeout(60):
            while (await event_types(client, sandbox_id)).count("ready") < 2:
                await asyncio.sleep(0.05)
        hold.go.set()
        async with asyncio.timeout(30):
            await workers[1]  # the held worker goes on, and ends
        state = (await store.load(sandbox_id)).state
        assert (state.status, state.generation, state.attempt) == ("ready", 2, 2)
        assert state.reachability is not None
        recorded = json.loads((root / sandbox_id / "state.json").read_text())
        assert recorded["made_by"] == [2, 2]
        assert recorded["holder_pid"] == state.reachability["holder_pid"]  # the ready's own
        found = await LocalExtension(root).list_sandboxes()
        assert [(item.sandbox_id, item.alive, item.made_by) for item in found] == [
            (sandbox_id, True, (2, 2))
        ]
        assert "failed" not in await event_types(client, sandbox_id)
    finally:
        hold.go.set()
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
    nc = await connect([nats_server.url], name="test-touch-jobs")
    js = nc.jetstream()
    store = JetStreamEventStore(nc, js)
    local = HeldProvision(home / "local")
    local.go.set()  # the provision runs at once; the snapshot is held
    worker = ExtensionWorker(js, store, Catalog.load(home), local)
    sent: list[str] = []
    async with (
        serving(home, nats_server.url, ["control", "projector"], reap=True) as service,
        worker_running(worker, nc),
    ):
        client = service.client
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
            await in_effect(nc)  # or a job sent by the touches could pass unseen
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
