"""Scale-out: each role on its own node of a real 3-node NATS cluster."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandboxer import subjects
from sandboxer.bus.connect import connect
from sandboxer.bus.nats_cluster import NatsCluster
from sandboxer.bus.streams import ensure_streams, replicas_for
from sandboxer.client import SandboxerClient
from sandboxer.config.catalog import Catalog
from sandboxer.config.settings import Settings
from sandboxer.service import all_roles, run_roles
from tests.integration.conftest import reap_local

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    nodes = NatsCluster(tmp_path / "cluster", size=3, binary=Settings.from_env().nats_server)
    async with nodes:
        yield nodes


async def start_role(home: Path, url: str, role: str, stop: asyncio.Event) -> asyncio.Task[None]:
    """Run one role in this event loop on its own connection to the node at ``url``."""
    settings = Settings(home=home, nats_urls=(url,), nats_server=None, ack_wait=5)
    catalog = Catalog.load(home)
    nc = await connect([url], name=f"test-{role}")

    async def run() -> None:
        try:
            await run_roles(nc, [role], settings, catalog, stop, info={"test": True})
        finally:
            await nc.drain()

    return asyncio.create_task(run(), name=role)


async def wait_healthy(client: SandboxerClient, tasks: list[asyncio.Task[None]]) -> None:
    """Until the projector answers (across the cluster), failing early if a role crashed."""
    async with asyncio.timeout(60):
        while True:
            for task in tasks:
                if task.done():
                    task.result()
                    pytest.fail(f"role {task.get_name()} stopped before the service was up")
            with contextlib.suppress(Exception):
                await client.health()
                return
            await asyncio.sleep(0.1)


async def test_roles_on_three_nodes_serve_one_sandbox(cluster: NatsCluster, home: Path) -> None:
    node1, node2, node3 = cluster.urls
    assert "ext.local" in all_roles(Catalog.load(home))
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    client: SandboxerClient | None = None
    try:
        # The projector creates the streams before the others start; roles creating them
        # together is test_roles_create_the_streams_together's business.
        tasks.append(await start_role(home, node2, "projector", stop))
        client = await SandboxerClient.connect([node1], actor={"type": "atm", "id": "pytest"})
        await wait_healthy(client, tasks)
        tasks.append(await start_role(home, node1, "control", stop))
        tasks.append(await start_role(home, node3, "ext.local", stop))

        ready = await client.create(timeout=60)
        assert ready["type"] == "ready"
        sandbox_id = ready["sandbox_id"]
        sandbox = await client.get(sandbox_id)  # read-your-writes, via the projector on node 2
        assert sandbox is not None
        assert sandbox["status"] == "ready"

        # client on node 1 -> exec service of ext.local on node 3
        assert await client.exec(sandbox_id, ["true"], lambda s, d: None) == 0

        await client.destroy(sandbox_id)
        assert (await client.get(sandbox_id))["status"] == "destroyed"  # type: ignore[index]

        info = await client.js.stream_info("SANDBOXER_EVENTS")
        assert info.config.num_replicas == 3
        assert info.cluster is not None
        assert len(info.cluster.replicas or []) == 2
    finally:
        if client is not None:
            await client.close()
        stop.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        await reap_local(home)
    assert [r for r in results if isinstance(r, BaseException)] == []


async def test_roles_create_the_streams_together(cluster: NatsCluster) -> None:
    """Roles starting at once on different nodes all get the R3 streams (none times out)."""
    connections = [await connect([url], name=f"test-node{i}") for i, url in enumerate(cluster.urls)]
    try:
        await asyncio.gather(*(
            ensure_streams(nc.jetstream(), replicas_for(nc._server_info)) for nc in connections
        ))
        js = connections[0].jetstream()
        for name in (subjects.COMMANDS_STREAM, subjects.EVENTS_STREAM, subjects.JOBS_STREAM):
            assert (await js.stream_info(name)).config.num_replicas == 3
    finally:
        for nc in connections:
            await nc.close()
