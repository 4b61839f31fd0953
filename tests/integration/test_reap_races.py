"""``reap-stale --apply`` while the log moves on: a sandbox made ready while the host is
listed is no ghost, and what another worker recreated after the judgement is left running
(real nats, the real service, real ext.local sandboxes).

The reap runs on its own inventory service over the service's root, so that the test can
hold it at one point (a backend whose listing or teardown waits for the test, an inventory
whose judgement waits before it acts: each only delays, what is listed, judged and removed
is the real thing) while the service's worker recreates the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from sandboxer.bus.connect import connect
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.client import SandboxerClient
from sandboxer.domain.found import FoundSandbox, MadeBy
from sandboxer.domain.sandbox_decide import MarkFailed
from sandboxer.extensions.local.backend import LocalExtension
from sandboxer.workers.deciding import apply
from sandboxer.workers.inventory import InventoryService
from tests.integration.conftest import Service

pytestmark = pytest.mark.integration

WAIT = 60.0


class Gate:
    """Where a reap stops until the test, having done what it does meanwhile, opens it."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.open = asyncio.Event()

    async def pass_through(self) -> None:
        self.reached.set()
        await self.open.wait()


class ListingWaits(LocalExtension):
    """Real ext.local; its listing, once made, is handed back only when the gate opens."""

    gate = Gate()

    async def list_sandboxes(self) -> Sequence[FoundSandbox]:
        found = await super().list_sandboxes()
        await self.gate.pass_through()
        return found


class TeardownWaits(LocalExtension):
    """Real ext.local; each teardown starts only when the gate opens."""

    gate = Gate()

    async def teardown(self, sandbox_id: str, *, host: str | None = None) -> None:
        await self.gate.pass_through()
        await super().teardown(sandbox_id, host=host)

    async def teardown_attempt(
        self, sandbox_id: str, made_by: MadeBy, *, host: str | None = None
    ) -> None:
        await self.gate.pass_through()
        await super().teardown_attempt(sandbox_id, made_by, host=host)


class JudgementWaits(InventoryService):
    """The real inventory service; once it has judged a host, it acts when the gate opens."""

    gate = Gate()

    async def _drift(self, host: str | None) -> Any:
        judged = await super()._drift(host)
        await self.gate.pass_through()
        return judged


@contextlib.asynccontextmanager
async def reaper(
    service: Service, extension: LocalExtension, kind: type[InventoryService] = InventoryService
) -> AsyncIterator[InventoryService]:
    nc = await connect(list(service.settings.nats_urls), name="test-reaper")
    try:
        store = JetStreamEventStore(nc, nc.jetstream())
        yield kind(nc, store, extension, service.settings)
    finally:
        await nc.drain()


async def in_view(client: SandboxerClient, sandbox_id: str, status: str, generation: int) -> None:
    """Until the sandbox view (which reap-stale asks for the log's usable sandboxes) says it."""
    async with asyncio.timeout(WAIT):
        while True:
            sandbox = await client.get(sandbox_id)
            if sandbox and (sandbox["status"], sandbox["generation"]) == (status, generation):
                return
            await asyncio.sleep(0.05)


async def reap_through(inventory: InventoryService, gate: Gate, meanwhile: Any) -> dict[str, Any]:
    """Run a reap until ``gate``, await ``meanwhile()``, open it; the reap's one host report."""
    reap = asyncio.create_task(inventory._reap({"apply": True}))
    try:
        async with asyncio.timeout(WAIT):
            await gate.reached.wait()
        await meanwhile()
    finally:
        gate.open.set()
    async with asyncio.timeout(WAIT):
        reply = await reap
    [host] = reply["hosts"]
    return dict(host)


def ignore(_stream: str, _data: bytes) -> None:
    pass


async def alive(local: LocalExtension, sandbox_id: str) -> FoundSandbox:
    [found] = [f for f in await local.list_sandboxes() if f.sandbox_id == sandbox_id]
    assert found.alive
    return found


async def failed_behind_its_back(service: Service, sandbox_id: str) -> None:
    """Failed in the log while what it is still runs on the host: a job's failure whose
    cleanup did not run (the worker died first), as reap-stale finds it."""
    nc = await connect(list(service.settings.nats_urls), name="test-fail")
    try:
        store = JetStreamEventStore(nc, nc.jetstream())
        await apply(
            store,
            sandbox_id,
            MarkFailed(job_id="test", stage="job", reason="the job died (test)"),
        )
    finally:
        await nc.drain()
    await in_view(service.client, sandbox_id, "failed", 1)


async def test_a_sandbox_made_ready_while_the_host_is_listed_is_no_ghost(
    service: Service,
) -> None:
    client = service.client
    local = LocalExtension(service.settings.local_root)
    listing = ListingWaits(service.settings.local_root)
    listing.gate = Gate()
    made: list[str] = []

    async def create() -> None:
        # Listed already; ready (in the log and its view) before reap-stale goes on.
        made.append((await client.create())["sandbox_id"])
        await in_view(client, made[0], "ready", 1)

    async with reaper(service, listing) as inventory:
        host = await reap_through(inventory, listing.gate, create)
    [new] = made
    assert (host["removed"], host["marked_failed"]) == ([], [])
    assert (await client.get(new))["status"] == "ready"  # type: ignore[index]
    await alive(local, new)
    assert await client.exec(new, ["true"], ignore) == 0


async def test_a_ghost_recreated_after_the_judgement_is_not_marked_failed(
    service: Service,
) -> None:
    client = service.client
    local = LocalExtension(service.settings.local_root)
    ghost = (await client.create())["sandbox_id"]
    # In the view first, which reap-stale reads (a create returns on its ready event, and the
    # view may be a few ms behind it): else the stale query below can come before it.
    await in_view(client, ghost, "ready", 1)
    await local.teardown(ghost)  # gone behind the log's back: a ghost

    async def recreate() -> None:
        await client.recreate(ghost)
        await in_view(client, ghost, "ready", 2)

    JudgementWaits.gate = Gate()
    async with reaper(service, local, JudgementWaits) as inventory:
        [stale] = await client.inventory("stale", "ext.local", {})
        assert stale["hosts"][0]["ghosts"] == [ghost]  # what the held reap judges too
        host = await reap_through(inventory, JudgementWaits.gate, recreate)
    assert host["marked_failed"] == []
    sandbox = await client.get(ghost)
    assert sandbox is not None
    assert (sandbox["status"], sandbox["generation"]) == ("ready", 2)
    assert (await alive(local, ghost)).made_by == (2, 1)


async def test_a_failed_sandbox_recreated_after_the_judgement_is_left_running(
    service: Service,
) -> None:
    client = service.client
    local = LocalExtension(service.settings.local_root)
    sandbox_id = (await client.create())["sandbox_id"]
    await failed_behind_its_back(service, sandbox_id)

    async def recreate() -> None:
        await client.recreate(sandbox_id)
        await in_view(client, sandbox_id, "ready", 2)

    JudgementWaits.gate = Gate()
    async with reaper(service, local, JudgementWaits) as inventory:
        host = await reap_through(inventory, JudgementWaits.gate, recreate)
    assert host["removed"] == []
    assert (await alive(local, sandbox_id)).made_by == (2, 1)
    assert (await client.get(sandbox_id))["status"] == "ready"  # type: ignore[index]
    assert await client.exec(sandbox_id, ["true"], ignore) == 0


async def test_a_failed_sandbox_recreated_while_its_removal_waits_is_left_running(
    service: Service,
) -> None:
    """Judged and read again before the recreate; the removal, scoped to the failed
    provisioning (teardown_attempt), leaves the recreate's sandbox."""
    client = service.client
    local = LocalExtension(service.settings.local_root)
    sandbox_id = (await client.create())["sandbox_id"]
    await failed_behind_its_back(service, sandbox_id)
    slow = TeardownWaits(service.settings.local_root)
    slow.gate = Gate()

    async def recreate() -> None:
        await client.recreate(sandbox_id)
        await in_view(client, sandbox_id, "ready", 2)

    async with reaper(service, slow) as inventory:
        await reap_through(inventory, slow.gate, recreate)
    assert (await alive(local, sandbox_id)).made_by == (2, 1)
    assert (await client.get(sandbox_id))["status"] == "ready"  # type: ignore[index]
    assert await client.exec(sandbox_id, ["true"], ignore) == 0


async def test_a_corpse_recreated_after_the_judgement_is_neither_marked_nor_removed(
    service: Service,
) -> None:
    client = service.client
    local = LocalExtension(service.settings.local_root)
    corpse = (await client.create())["sandbox_id"]
    os.kill((await alive(local, corpse)).detail["holder_pid"], signal.SIGKILL)
    async with asyncio.timeout(WAIT):
        while any(f.alive for f in await local.list_sandboxes() if f.sandbox_id == corpse):
            await asyncio.sleep(0.05)

    async def recreate() -> None:
        await client.recreate(corpse)
        await in_view(client, corpse, "ready", 2)

    JudgementWaits.gate = Gate()
    async with reaper(service, local, JudgementWaits) as inventory:
        host = await reap_through(inventory, JudgementWaits.gate, recreate)
    assert (host["removed"], host["marked_failed"]) == ([], [])
    sandbox = await client.get(corpse)
    assert sandbox is not None
    assert (sandbox["status"], sandbox["generation"]) == ("ready", 2)
    assert (await alive(local, corpse)).made_by == (2, 1)
