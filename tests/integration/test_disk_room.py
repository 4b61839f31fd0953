"""A stream the embedded nats-server stopped when its disk filled takes writes again once the
disk has room, with no operator: the service restarts the server itself (bus/disk_room.py).
A real nats-server on a real tmpfs, filled to the last byte and freed again, its log on the same
disk, as ``sandboxer up``'s is; and ``sandboxer up`` itself with its home on one."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.errors import Error as NatsError

from chaos.disk import fill, free, small_filesystem
from sandboxer.bus.disk_room import restart_when_room
from sandboxer.bus.embedded_restart import keep_serving
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.cleanup_waits import cancel_until_done
from tests.integration.conftest import reap_local
from tests.integration.embedded_up import Up, up

__all__ = ["up"]  # the fixture, used by name

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _root() -> None:
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root", pytrace=False)


@pytest.fixture
async def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Path]:
    """A home on a 64 MiB tmpfs of its own: the embedded server's store and log, the views and
    the sandboxes on one small disk (``up`` runs the service under it)."""
    _root()
    async with small_filesystem(tmp_path / "disk", 64) as disk:
        path = disk / "home"
        path.mkdir()
        monkeypatch.setenv("SANDBOXER_HOME", str(path))
        yield path
        await reap_local(path)


async def _acked(js: nats.js.JetStreamContext, data: bytes) -> bool:
    try:
        await js.publish("t", data, timeout=0.5)
    except (NatsError, TimeoutError):
        return False
    return True


async def test_a_stream_stopped_by_a_full_disk_takes_writes_once_the_disk_has_room(
    tmp_path: Path,
) -> None:
    _root()
    async with small_filesystem(tmp_path / "disk", 32) as disk:
        server = NatsServerProcess(disk / "nats", log_file=disk / "nats-server.log")
        await server.start()
        gave_up: list[str] = []
        keeper = asyncio.create_task(keep_serving(server, gave_up.append))
        room = asyncio.create_task(restart_when_room(server, every=0.1))
        nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        try:
            js = nc.jetstream()
            await js.add_stream(name="T", subjects=["t"])
            assert await _acked(js, b"before")
            first = server.pid
            await fill(disk)
            async with asyncio.timeout(30):  # a write or two may fit pages already taken
                while await _acked(js, b"x" * 4096):
                    pass
            assert server.pid == first  # full, and not restarted while it is
            await asyncio.sleep(0.5)
            assert not await _acked(js, b"still full")

            free(disk)
            async with asyncio.timeout(30):
                while not await _acked(js, b"after"):
                    await asyncio.sleep(0.1)
            assert server.pid != first  # started again, on the same port and store
            info = await js.stream_info("T")
            assert info.state.messages >= 2  # what it had acknowledged is there
            assert gave_up == []
        finally:
            await nc.close()
            await cancel_until_done(room, keeper)
            await server.stop()


async def test_sandboxer_up_serves_again_once_its_full_disk_has_room(up: Up) -> None:
    """The home's disk filled under a running ``sandboxer up``, then freed: the service
    restarts its own server (not while the disk is full) and carries out a create after."""
    before = json.loads((await up.cli("create", "--json")).stdout)["sandbox_id"]
    first = await up.next_nats(None)
    disk = up.home.parent
    await fill(disk)
    await asyncio.sleep(2.5)  # more than two looks of the watch
    assert up.nats_pid() == first
    free(disk)
    await up.next_nats(first)
    after = json.loads((await up.cli("create", "--json")).stdout)["sandbox_id"]
    assert after != before
    assert "the disk has room again: restarting it" in up.log()
    for sandbox_id in (before, after):
        await up.cli("destroy", sandbox_id)
