"""A TTL extension decided while a Daytona sandbox is being snapshotted reaches Daytona.

The extension sends no ``retime`` while the sandbox waits for its snapshot job
(workers/jobs.py: the snapshot comes first), so the worker that records
``snapshot_finished`` moves the provider's timeout (workers/provider_expiry.py).
Daytona's timeout is an idle auto-stop in minutes, relative to the moment it is
set: past the log's ``expires_at`` by the grace, rounded up to whole minutes.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.extensions.daytona.config import DaytonaConfig
from tests.doubles.daytona_double import EXECUTE, DaytonaServed
from tests.integration.conftest import start_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_an_extension_while_a_snapshot_is_taken_reaches_daytonas_auto_stop(
    nats_server: Any,
    home: Path,
    daytona_double: DaytonaServed,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DAYTONA_API_URL", daytona_double.api_url)
    monkeypatch.setenv("DAYTONA_API_KEY", daytona_double.key)
    service = await start_service(
        home, nats_server.url, roles=["control", "projector", "ext.daytona"]
    )
    try:
        await service.fund()
        client = service.client
        sandbox_id = (await client.create("profile.daytona", ttl="10m"))["sandbox_id"]
        [record] = [
            r for r in daytona_double.double.live() if r.labels["sandboxer_id"] == sandbox_id
        ]
        created_with = record.auto_stop
        # The copy through Daytona's exec answers late: the extension lands meanwhile.
        daytona_double.app.faults.add("latency", method="POST", pattern=EXECUTE, seconds=2)
        taking = asyncio.create_task(client.snapshot(sandbox_id))
        await wait_snapshotting(client, sandbox_id)
        extended = await client.extend_ttl(sandbox_id, "30m")
        assert (await taking)["status"] == "created"
        store = JetStreamEventStore(client.nc, client.js)
        state = (await store.load(sandbox_id)).state
        assert (state.status, state.snapshotting) in {("ready", None), ("active", None)}
        assert state.expires_at == extended["expires_at"]
        expires_at = datetime.fromisoformat(extended["expires_at"])
        grace = DaytonaConfig(settings={}).leak_grace_minutes  # the declaration sets none
        async with asyncio.timeout(20):  # set just after `snapshot_finished` is recorded
            while record.auto_stop == created_with:
                await asyncio.sleep(0.05)
        # auto_stop minutes from the moment it was set (a moment ago) = ceil(remaining) + grace
        remaining = (expires_at - datetime.now(UTC)).total_seconds() / 60
        assert remaining <= record.auto_stop - grace <= remaining + 1.5, (
            record.auto_stop,
            remaining,
        )
        await client.destroy(sandbox_id)
    finally:
        await service.client.close()
        await service.shutdown()


async def wait_snapshotting(client: Any, sandbox_id: str) -> None:
    async with asyncio.timeout(30):
        while True:
            found = await client.get(sandbox_id)
            if found and found.get("snapshotting"):
                return
            await asyncio.sleep(0.05)
