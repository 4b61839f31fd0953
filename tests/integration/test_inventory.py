"""Telemetry and stale inventory for ext.local: planted orphans, ghosts and corpses are
found and reaped."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from sandboxer.config.catalog import Catalog
from sandboxer.extensions.base import ProvisionRequest
from sandboxer.extensions.local.backend import LocalExtension
from tests.integration.conftest import Service

pytestmark = pytest.mark.integration


async def test_inspect_host_records_telemetry(service: Service) -> None:
    client = service.client
    await client.create()
    replies = await client.inventory("inspect", "ext.local", {})
    assert len(replies) == 1
    report = replies[0]["reports"][0]["report"]
    assert report["memory_total_mb"] > 0
    assert report["disk_free_mb"] > 0
    assert "load1" in report
    assert len(report["workspaces"]) == 1
    hosts = await client.hosts()
    assert [h["extension"] for h in hosts] == ["ext.local"]
    assert hosts[0]["report"]["sandboxes"] == 1


async def test_stale_finds_orphans_and_ghosts_and_reap_cleans_them(service: Service) -> None:
    client = service.client
    local = LocalExtension(service.settings.local_root)
    # An orphan: made on the host behind the log's back.
    orphan = ProvisionRequest(
        sandbox_id="orphan000001", profile=Catalog.load().profile("profile.local"), inputs={}
    )
    await local.provision(orphan)
    # A ghost: ready in the log, torn down behind its back.
    ghost = (await client.create())["sandbox_id"]
    await local.teardown(ghost)
    # A healthy one, which must be left alone.
    healthy = (await client.create())["sandbox_id"]

    stale = await client.inventory("stale", "ext.local", {})
    drift = stale[0]["hosts"][0]
    assert [o["sandbox_id"] for o in drift["orphans"]] == ["orphan000001"]
    assert drift["ghosts"] == [ghost]

    dry = await client.inventory("reap", "ext.local", {"apply": False})
    assert dry[0]["applied"] is False
    assert [f.sandbox_id for f in await local.list_sandboxes()].count("orphan000001") == 1

    reaped = await client.inventory("reap", "ext.local", {"apply": True})
    assert reaped[0]["hosts"][0]["removed"] == ["orphan000001"]
    assert reaped[0]["hosts"][0]["marked_failed"] == [ghost]
    assert [f.sandbox_id for f in await local.list_sandboxes()] == [healthy]
    ghost_state = await client.get(ghost)
    assert ghost_state is not None
    assert ghost_state["status"] == "failed"
    assert "reap-stale" in ghost_state["failure"]
    assert (await client.get(healthy))["status"] == "ready"  # type: ignore[index]

    again = await client.inventory("stale", "ext.local", {})
    assert again[0]["hosts"][0] == {
        "host": again[0]["hosts"][0]["host"],
        "orphans": [],
        "ghosts": [],
        "corpses": [],
        "unmatched": [],
        "stuck": [],
    }
    hosts = await client.hosts()
    assert hosts[0]["reaped"] == {"removed": ["orphan000001"], "marked_failed": [ghost]}
    assert (await client.replay(verify=True))["verified"]


async def test_a_sandbox_whose_holder_died_is_a_corpse_and_reap_clears_it(
    service: Service,
) -> None:
    client = service.client
    local = LocalExtension(service.settings.local_root)
    corpse = (await client.create())["sandbox_id"]
    healthy = (await client.create())["sandbox_id"]
    [before] = [f for f in await local.list_sandboxes() if f.sandbox_id == corpse]
    holder = before.detail["holder_pid"]
    os.kill(holder, signal.SIGKILL)  # the holder dies behind sandboxer's back
    async with asyncio.timeout(10):
        while any(f.alive for f in await local.list_sandboxes() if f.sandbox_id == corpse):
            await asyncio.sleep(0.05)

    [stale] = await client.inventory("stale", "ext.local", {})
    drift = stale["hosts"][0]
    assert (drift["orphans"], drift["ghosts"]) == ([], [])
    [found] = drift["corpses"]
    assert found["sandbox_id"] == corpse
    assert found["reason"] == f"its holder process {holder} died"

    [reaped] = await client.inventory("reap", "ext.local", {"apply": True})
    assert reaped["hosts"][0]["removed"] == [corpse]
    assert reaped["hosts"][0]["marked_failed"] == [corpse]
    state = await client.get(corpse)
    assert state is not None
    assert state["status"] == "failed"
    assert f"its holder process {holder} died" in state["failure"]
    assert "reap-stale" in state["failure"]
    assert [f.sandbox_id for f in await local.list_sandboxes()] == [healthy]  # cleaned
    assert (await client.get(healthy))["status"] == "ready"  # type: ignore[index]
    [again] = await client.inventory("stale", "ext.local", {})
    assert again["hosts"][0]["corpses"] == []
