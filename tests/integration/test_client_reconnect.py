"""A connected client rides out the loss of its NATS server: it reconnects (for
``SERVER_RESTART_BUDGET`` seconds, then closes), and a command's wait reads from the log the
outcome it could not hear while it was cut off."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sandboxer import command_outcomes
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.client import SandboxerClient
from sandboxer.client import bus as client_bus
from sandboxer.errors import SandboxerError, ServiceNotRunning
from tests.integration.conftest import Service, serving

pytestmark = pytest.mark.integration

SLOW = "profile.slow-setup"


class Relay:
    """TCP from the client to the server through this process, which can cut the client off
    (its connections closed, its port closed: a reconnect is refused, as by a server that is
    down) and let it back on the same port."""

    def __init__(self, server_url: str) -> None:
        host, _, port = server_url.rpartition("/")[2].rpartition(":")
        self._to = (host, int(port))
        self._ends: list[asyncio.StreamWriter] = []
        self._listener: asyncio.Server | None = None
        self._port = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self._port}"

    @property
    def cut_off(self) -> bool:
        return self._listener is None

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self._to)
        self._ends += [client_w, server_w]
        await asyncio.gather(self._pump(client_r, server_w), self._pump(server_r, client_w))

    async def mend(self) -> None:
        self._listener = await asyncio.start_server(self._relay, "127.0.0.1", self._port)
        self._port = self._listener.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
            self._listener = None
        for end in self._ends:
            end.close()
        self._ends.clear()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Relay]:
        await self.mend()
        try:
            yield self
        finally:
            await self.cut()


@pytest.fixture
async def slow_service(home: Path, nats_server: NatsServerProcess) -> AsyncIterator[Service]:
    """The service, with a profile whose setup takes 2 s."""
    (home / "profiles").mkdir(exist_ok=True)
    (home / "profiles" / f"{SLOW}.yaml").write_text(
        f"id: {SLOW}\nextension: ext.local\nsetup:\n  instructions: ['sleep 2']\n"
    )
    async with serving(home, nats_server.url, reap=True) as service:
        yield service


@pytest.mark.parametrize("looks", [1.0, 60.0], ids=["looking", "told"])
async def test_a_wait_reads_the_outcome_it_missed_while_cut_off(
    slow_service: Service,
    nats_server: NatsServerProcess,
    monkeypatch: pytest.MonkeyPatch,
    looks: float,
) -> None:
    """The client is cut off from the server while the create it waits for becomes ready:
    the ``ready`` reached no subscription of its, and once back it reads it from the log.
    ``told``: the wait's looks at its connection are a minute apart, so it is the connection
    saying it is back (bus/reconnects.py) that has the log read."""
    monkeypatch.setattr(command_outcomes, "CATCH_UP_EVERY", looks)
    service = slow_service
    async with Relay(nats_server.url).running() as relay:
        client = await SandboxerClient.connect([relay.url])
        seen: list[str] = []

        async def on_event(event: dict[str, Any]) -> None:
            seen.append(event["type"])
            if event["type"] == "provisioning":
                await relay.cut()

        try:
            waiting = asyncio.create_task(client.create(SLOW, on_event=on_event))
            async with asyncio.timeout(60):
                while not relay.cut_off:
                    assert not waiting.done(), waiting.result()
                    await asyncio.sleep(0.01)
                sandbox_id = await _until_ready_in_the_view(service)
            await relay.mend()  # back: the client reconnects
            async with asyncio.timeout(20):  # a third of the told wait's looks
                ready = await waiting
            assert ready["type"] == "ready"
            assert ready["sandbox_id"] == sandbox_id
            assert client.nc.stats["reconnects"] >= 1
            assert seen[-1] == "ready"
            await client.destroy(sandbox_id)
        finally:
            await client.close()


async def _until_ready_in_the_view(service: Service) -> str:
    while True:
        rows = await service.client.list_sandboxes()
        if rows and rows[0]["status"] == "ready":
            return str(rows[0]["sandbox_id"])
        await asyncio.sleep(0.05)


async def test_a_client_outlasts_a_server_restart(
    service: Service, nats_server: NatsServerProcess
) -> None:
    """The server stopped and started again on its port and store: the same client goes on."""
    client = await SandboxerClient.connect([nats_server.url])
    try:
        made = (await client.create())["sandbox_id"]
        await nats_server.stop()
        await nats_server.start()
        async with asyncio.timeout(30):
            while True:  # the service's own connections come back within a second or so
                try:
                    row = await client.get(made)
                    break
                except ServiceNotRunning:
                    await asyncio.sleep(0.1)
        assert (row or {}).get("status") == "ready"
        await client.destroy(made)
    finally:
        await client.close()


async def test_a_client_whose_server_does_not_come_back_fails_its_calls(
    nats_server: NatsServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the budget the connection closes: a call then fails, it does not hang."""
    monkeypatch.setattr(client_bus, "SERVER_RESTART_BUDGET", 1.0)
    client = await SandboxerClient.connect([nats_server.url])
    try:
        await nats_server.stop()
        async with asyncio.timeout(30):
            while not client.nc.is_closed:
                await asyncio.sleep(0.1)
            with pytest.raises(SandboxerError):
                await client.list_sandboxes()
    finally:
        await client.close()
