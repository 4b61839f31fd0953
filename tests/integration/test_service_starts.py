"""A worker's services answer a request sent the moment their start returns.

``sandboxer worker EXTENSION`` started (or restarted) beside sandboxes that are already
ready: once it says it runs, an exec or a copy from another connection must reach it, even
when nats-server reads the worker's subscriptions late (tests/integration/slow_after_ping.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sandboxer.bus.connect import connect
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.client import SandboxerClient
from sandboxer.config.catalog import Catalog
from sandboxer.domain.found import FoundSandbox
from sandboxer.errors import SandboxerError
from sandboxer.extensions.local.backend import LocalExtension
from sandboxer.service import run_roles
from sandboxer.workers.exec_service import ExecService
from sandboxer.workers.extension_worker import ExtensionWorker
from tests.integration.conftest import serving, settings_for, worker_running
from tests.integration.slow_after_ping import slow_after_ping

pytestmark = pytest.mark.integration


async def test_an_exec_and_a_copy_right_after_the_exec_service_starts_are_answered(
    nats_server: NatsServerProcess, home: Path, tmp_path: Path
) -> None:
    """start() returned as soon as its SUBs were queued for nats-py's flusher: the exec and
    the copy sent at once from the client's connection met "no responders" (the client
    said no extension worker was running)."""
    nc = await connect([nats_server.url], name="test-provisions")
    js = nc.jetstream()
    local = LocalExtension(home / "local")
    worker = ExtensionWorker(js, JetStreamEventStore(nc, js), Catalog.load(home), local)
    source = tmp_path / "note.txt"
    source.write_text("in effect\n")
    async with (
        serving(home, nats_server.url, ["control", "projector"], reap=True) as service,
        worker_running(worker, nc),
    ):
        client = service.client
        sandbox_id = (await client.create())["sandbox_id"]
        async with slow_after_ping(nats_server.url) as relayed:
            late = await connect([relayed], name="test-late-worker", long_lived=False)
            executor = ExecService(
                late,
                JetStreamEventStore(late, late.jetstream()),
                local,
                settings=service.settings,
            )
            try:
                await executor.start()
                code, _copied = await asyncio.gather(
                    client.exec(sandbox_id, ["true"], lambda _s, _d: None),
                    client.copy_in(sandbox_id, source, "note.txt"),
                )
                assert code == 0
                out: list[bytes] = []
                await client.exec(sandbox_id, ["cat", "note.txt"], lambda _s, d: out.append(d))
                assert b"".join(out) == b"in effect\n"
            finally:
                await executor.stop()
                await late.close()


async def test_health_says_running_only_once_the_extension_workers_reconcile_is_done(
    nats_server: NatsServerProcess, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The projector answers health while the process still starts its other roles: a test
    (or an operator) that took that answer for "started" looked at a backend whose leftovers
    the worker's start-up reconcile had not removed yet. ``on_running`` (where ``serve``
    freezes the start-up's heap) is called then too, once."""
    listing = asyncio.Event()
    release = asyncio.Event()
    original = LocalExtension.list_sandboxes

    async def held(self: LocalExtension) -> list[FoundSandbox]:
        listing.set()
        await release.wait()
        return await original(self)

    monkeypatch.setattr(LocalExtension, "list_sandboxes", held)
    settings = settings_for(home, nats_server.url)
    nc = await connect([nats_server.url], name="test-service")
    info: dict[str, Any] = {}
    stop = asyncio.Event()
    running_seen: list[object] = []
    roles = asyncio.create_task(
        run_roles(
            nc,
            ["projector", "ext.local"],
            settings,
            Catalog.load(home),
            stop,
            info=info,
            on_running=lambda: running_seen.append(info["running"]),
        )
    )
    client = await SandboxerClient.connect([nats_server.url], actor={"type": "atm", "id": "t"})
    try:
        await asyncio.wait_for(listing.wait(), 30)
        async with asyncio.timeout(30):
            while True:
                try:
                    answer = await client.health()
                    break
                except SandboxerError:
                    await asyncio.sleep(0.05)
        assert answer["running"] is False
        assert running_seen == []
        release.set()
        async with asyncio.timeout(30):
            while not (await client.health())["running"]:
                await asyncio.sleep(0.05)
        assert running_seen == [True]
    finally:
        release.set()
        stop.set()
        await client.close()
        await asyncio.wait_for(roles, 30)
        await nc.drain()
