"""A running worker's leak sweep removes what leaks at the provider after its start.

Real nats-server, control worker and projector, and ``sandboxer worker ext.e2b`` processes
against the E2B double, sweeping every second (``SANDBOXER_LEAK_SWEEP_INTERVAL``). The first
worker is killed (-9) while E2B makes its sandbox, so attempt 2, on a second worker, makes
the sandbox the log's ``ready`` names. Then, with that worker running on, the killed
attempt's create lands (a copy labelled ``sandboxer_attempt=1.1``): nothing but a reap, the
next start, the destroy or E2B's timeout removed it before, and it ran and cost meanwhile.
The sweep must remove exactly it and leave the live sandbox; and after the destroy, a late
copy of the destroyed sandbox too. Neither touches the sandbox's log; each is recorded as a
``reaped`` host event of the sweep.
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
from sandboxer.client import SandboxerClient
from sandboxer.hosted.labels import labels_for
from tests.doubles.e2b_double import ServedE2b
from tests.integration.conftest import start_service, start_worker
from tests.integration.test_lifecycle import event_types, wait_status
from tests.integration.test_stale_attempt_copies import late_copy, running, stop

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SWEEP = 1.0
"""Seconds between the workers' leak sweeps here (5 minutes by default)."""


async def swept(client: SandboxerClient) -> list[list[str]]:
    """What each of the sweeps' ``reaped`` host events says it removed, in log order."""
    return [
        event["removed"]
        async for _, event in client.events()
        if event["type"] == "reaped" and event["actor"]["id"] == "sandboxer-leak-sweep"
    ]


async def swept_by_now(client: SandboxerClient, count: int) -> list[list[str]]:
    """:func:`swept` once it holds ``count`` sweeps: a sweep records its ``reaped`` event
    after the removal the test sees at the provider."""
    async with asyncio.timeout(SWEEP * 20):
        while len(found := await swept(client)) < count:
            await asyncio.sleep(0.1)
    return found


async def gone(served: ServedE2b, sandbox_id: str, provider_id: str) -> None:
    async with asyncio.timeout(SWEEP * 20):
        while provider_id in running(served, sandbox_id):
            await asyncio.sleep(0.1)


async def test_a_late_copy_appearing_while_the_worker_runs_is_removed_by_its_sweep(
    nats_server: Any,
    home: Path,
    e2b_double: ServedE2b,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("E2B_API_URL", e2b_double.url)
    monkeypatch.setenv("E2B_API_KEY", e2b_double.api_key)
    monkeypatch.setenv("SANDBOXER_LEAK_SWEEP_INTERVAL", f"{SWEEP:g}")  # read by the workers
    # E2B makes the sandbox, then holds its answer: the worker dies waiting for it.
    e2b_double.double.app.faults.add("lost", method="POST", pattern="/sandboxes", seconds=60)
    service = await start_service(home, nats_server.url, roles=["control", "projector"])
    workers: list[subprocess.Popen[bytes]] = [start_worker(home, nats_server.url, "ext.e2b")]
    client = service.client
    try:
        await service.fund()
        sandbox_id = (await client.create("profile.e2b-burst", wait=False))["sandbox_id"]
        async with asyncio.timeout(30):
            while not running(e2b_double, sandbox_id):
                await asyncio.sleep(0.05)
        os.kill(workers[0].pid, signal.SIGKILL)
        workers[0].wait()
        workers.append(start_worker(home, nats_server.url, "ext.e2b"))
        ready = await wait_status(client, sandbox_id, {"ready", "failed"}, timeout=60)
        assert ready["status"] == "ready", ready
        store = JetStreamEventStore(client.nc, client.js)
        state = (await store.load(sandbox_id)).state
        assert (state.generation, state.attempt) == (1, 2)
        assert state.reachability is not None
        live = state.reachability["sandbox_id"]
        assert running(e2b_double, sandbox_id) == [live]
        await asyncio.sleep(SWEEP * 3)  # sweeps of the live sandbox alone leave it
        assert running(e2b_double, sandbox_id) == [live]
        assert await swept(client) == []

        # The killed attempt's create lands now, the worker running on: no start, no reap.
        copy = late_copy(e2b_double, sandbox_id)
        await gone(e2b_double, sandbox_id, copy)
        assert running(e2b_double, sandbox_id) == [live]  # the copy only
        assert workers[-1].poll() is None  # the same worker, never restarted
        assert (await store.load(sandbox_id)).state.status == "ready"
        assert "failed" not in await event_types(client, sandbox_id)
        assert await swept_by_now(client, 1) == [[sandbox_id]]
        await asyncio.sleep(SWEEP * 3)
        assert running(e2b_double, sandbox_id) == [live]

        # A destroyed sandbox's late copy (its attempt 1.2's create landing after the
        # teardown) goes too, and the log stays as the destroy left it.
        await client.destroy(sandbox_id)
        assert running(e2b_double, sandbox_id) == []
        after_destroy = await event_types(client, sandbox_id)
        labels = labels_for(sandbox_id, "default", "ext.e2b", (1, 2))
        leftover = e2b_double.double.plant_orphan(labels).sandbox_id
        await gone(e2b_double, sandbox_id, leftover)
        assert running(e2b_double, sandbox_id) == []
        assert await event_types(client, sandbox_id) == after_destroy
        assert await swept_by_now(client, 2) == [[sandbox_id], [sandbox_id]]
    finally:
        for process in workers:
            stop(process)
        await client.close()
        await service.shutdown()
