"""A stream the embedded nats-server stopped when its disk filled takes writes again once the
disk has room, with no operator: the service restarts the server itself (bus/disk_room.py).
A real nats-server on a real 32 MiB tmpfs, filled to the last byte and freed again, its log on
the same disk, as ``sandboxer up``'s is."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import nats
import pytest
from nats.errors import Error as NatsError

from chaos.disk import fill, free, small_filesystem
from sandboxer.bus.disk_room import restart_when_room
from sandboxer.bus.embedded_restart import keep_serving
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.cleanup_waits import cancel_until_done

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def _acked(js: nats.js.JetStreamContext, data: bytes) -> bool:
    try:
        await js.publish("t", data, timeout=0.5)
    except (NatsError, TimeoutError):
        return False
    return True


async def test_a_stream_stopped_by_a_full_disk_takes_writes_once_the_disk_has_room(
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root", pytrace=False)
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
