"""An earlier provisioning attempt's E2B sandbox running beside the live one is stale.

Real nats-server, control worker and projector, and ``sandboxer worker ext.e2b`` processes
against the E2B double. The first worker is killed (-9) while E2B makes its sandbox, so the
job goes to a second worker whose attempt 2 makes the sandbox the log's ``ready`` names.
The killed attempt's create may land after that (slower than the redelivery): E2B then
runs a copy labelled ``sandboxer_attempt=1.1`` beside attempt 2's, under an id the log
calls live. ``inspect stale`` must report that copy (not the live one), and both
``reap-stale --apply`` and a worker's start must remove it, and only it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.hosted.labels import labels_for
from tests.doubles.e2b_double import ServedE2b
from tests.integration.conftest import Cli, Service, start_service, start_worker
from tests.integration.test_lifecycle import event_types, wait_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def running(served: ServedE2b, sandbox_id: str) -> list[str]:
    """E2B's ids of the sandboxes it runs labelled with ``sandbox_id``."""
    return [
        r.sandbox_id for r in served.double.live() if r.metadata.get("sandboxer_id") == sandbox_id
    ]


def late_copy(served: ServedE2b, sandbox_id: str) -> str:
    """What the killed attempt 1's create leaves when E2B carries it out after attempt 2's
    ``ready``: a sandbox labelled as attempt 1 made it (its E2B id)."""
    labels = labels_for(sandbox_id, "default", "ext.e2b", (1, 1))
    return served.double.plant_orphan(labels).sandbox_id


async def stale_report(service: Service) -> dict[str, Any]:
    [reply] = await service.client.inventory("stale", "ext.e2b", {})
    [host] = reply["hosts"]
    return dict(host)


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        process.wait(15)


async def test_an_earlier_attempt_s_copy_beside_the_live_sandbox_is_stale_and_removed(
    nats_server: Any,
    home: Path,
    e2b_double: ServedE2b,
    monkeypatch: pytest.MonkeyPatch,
    cli_env: dict[str, str],
) -> None:
    monkeypatch.setenv("E2B_API_URL", e2b_double.url)
    monkeypatch.setenv("E2B_API_KEY", e2b_double.api_key)
    # E2B makes the sandbox, then holds its answer: the worker dies waiting for it.
    e2b_double.double.app.faults.add("lost", method="POST", pattern="/sandboxes", seconds=60)
    service = await start_service(home, nats_server.url, roles=["control", "projector"])
    workers: list[subprocess.Popen[bytes] | None] = [start_worker(home, nats_server.url, "ext.e2b")]
    try:
        await service.fund()
        client = service.client
        sandbox_id = (await client.create("profile.e2b-burst", wait=False))["sandbox_id"]
        async with asyncio.timeout(30):
            while not running(e2b_double, sandbox_id):
                await asyncio.sleep(0.05)
        killed = workers[0]
        assert killed is not None
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        workers.append(start_worker(home, nats_server.url, "ext.e2b"))
        ready = await wait_status(client, sandbox_id, {"ready", "failed"}, timeout=60)
        assert ready["status"] == "ready", ready
        store = JetStreamEventStore(client.nc, client.js)
        state = (await store.load(sandbox_id)).state
        assert (state.generation, state.attempt) == (1, 2)
        assert state.reachability is not None
        live = state.reachability["sandbox_id"]
        assert running(e2b_double, sandbox_id) == [live]

        copy = late_copy(e2b_double, sandbox_id)
        report = await stale_report(service)
        assert [(o["sandbox_id"], o["detail"]["provider_id"]) for o in report["orphans"]] == [
            (sandbox_id, copy)
        ]
        [orphan] = report["orphans"]
        assert (orphan["made_by"], orphan["live_attempt"]) == ("1.1", "1.2")
        assert (report["ghosts"], report["corpses"]) == ([], [])
        shown = (await Cli(cli_env)("inspect", "stale")).stdout
        assert "a copy made by attempt 1.1 beside the live sandbox (attempt 1.2" in shown

        [reaped] = await client.inventory("reap", "ext.e2b", {"apply": True})
        assert reaped["hosts"][0]["removed"] == [sandbox_id]
        assert running(e2b_double, sandbox_id) == [live]  # the copy only
        assert (await store.load(sandbox_id)).state.status == "ready"
        assert "failed" not in await event_types(client, sandbox_id)

        # A worker's start removes another such copy the same way.
        copy = late_copy(e2b_double, sandbox_id)
        stop(workers[-1])
        workers.append(start_worker(home, nats_server.url, "ext.e2b"))
        async with asyncio.timeout(30):
            while copy in running(e2b_double, sandbox_id):
                await asyncio.sleep(0.1)
        assert running(e2b_double, sandbox_id) == [live]
        report = await stale_report(service)  # answered once the worker has started
        assert (report["orphans"], report["ghosts"], report["corpses"]) == ([], [], [])
        assert (await store.load(sandbox_id)).state.status == "ready"

        await client.destroy(sandbox_id)
        assert running(e2b_double, sandbox_id) == []
    finally:
        for process in workers:
            stop(process)
        await service.client.close()
        await service.shutdown()
