"""A ``ws://`` server address works (README: ``SANDBOXER_NATS_URL``), though nats-py's
transports load without aiohttp in a sandboxer process (sandboxer/bus/nats_websockets.py).

Run in a fresh Python: a pytest worker may have imported aiohttp already (schemathesis,
the modal SDK), and then nats-py would have it from the start.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.config.settings import Settings
from tests.ports import closed_port

pytestmark = pytest.mark.integration

CLIENT = """
    import asyncio, sys
    from sandboxer.bus.connect import connect

    async def main(url):
        loaded_before = "aiohttp" in sys.modules
        nc = await connect([url], name="ws-test", long_lived=False)
        try:
            async def echo(msg):
                await msg.respond(b"echo " + msg.data)
            await nc.subscribe("ws.test", cb=echo)
            answer = await nc.request("ws.test", b"hello", timeout=10)
        finally:
            await nc.close()
        import aiohttp  # what the modal SDK does later in the same process
        print(loaded_before, answer.data.decode(), aiohttp.ClientSession.__name__)

    asyncio.run(main(sys.argv[1]))
"""


async def test_a_websocket_server_address_connects_and_carries_requests(tmp_path: Path) -> None:
    port = closed_port()
    config = tmp_path / "websocket.conf"
    config.write_text(f"websocket {{\n  host: 127.0.0.1\n  port: {port}\n  no_tls: true\n}}\n")
    server = NatsServerProcess(
        tmp_path / "nats",
        binary=Settings.from_env().nats_server,
        port=0,
        server_name="ws",
        config_file=config,
    )
    await server.start()
    try:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(CLIENT), f"ws://127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        await server.stop()
    assert done.returncode == 0, done.stderr
    # aiohttp was not loaded by the import, the request went through the WebSocket, and
    # the process's own later import of aiohttp gives the real package.
    assert done.stdout.split() == ["False", "echo", "hello", "ClientSession"]
