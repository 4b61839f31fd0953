"""``sandboxer up``'s own nats-server, killed under it, is started again on the same port; one
that will not stay up ends the service with the reason (bus/embedded_restart.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chaos.harness import nats_server_child
from sandboxer.bus.embedded_restart import RESTARTS
from tests.integration.conftest import Cli, reap_local

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class Up:
    process: subprocess.Popen[bytes]
    home: Path
    cli: Cli

    def log(self) -> str:
        return (self.home / "up.log").read_text(errors="replace")

    def nats_pid(self) -> int | None:
        """The pid of the nats-server the service runs now (None while there is none)."""
        return nats_server_child(self.process.pid)

    async def next_nats(self, other_than: int | None) -> int:
        """The server's pid once one other than ``other_than`` runs."""
        async with asyncio.timeout(30):
            while True:
                found = self.nats_pid()
                if found is not None and found != other_than:
                    return found
                assert self.process.poll() is None, self.log()
                await asyncio.sleep(0.02)


@pytest.fixture
async def up(home: Path) -> AsyncIterator[Up]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_")}
    env |= {"SANDBOXER_HOME": str(home)}
    home.mkdir(parents=True, exist_ok=True)
    with (home / "up.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sandboxer.cli.app", "up"], env=env, stdout=log, stderr=log
        )
    running = Up(process, home, Cli(env))
    try:
        async with asyncio.timeout(60):
            while not (home / "service.json").exists():
                assert process.poll() is None, running.log()
                await asyncio.sleep(0.05)
        yield running
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        await reap_local(home)


async def test_a_killed_embedded_server_is_started_again_and_serves_on(up: Up) -> None:
    """kill -9 of the server: it runs again on the same URL, the log made before it died is
    there, a new create is carried out, and the service still stops cleanly."""
    url = json.loads((up.home / "service.json").read_text())["nats_url"]
    before = json.loads((await up.cli("create", "--json")).stdout)["sandbox_id"]
    first = await up.next_nats(None)
    os.kill(first, signal.SIGKILL)
    await up.next_nats(first)
    after = json.loads((await up.cli("create", "--json")).stdout)["sandbox_id"]
    # The projector's reader finds its consumer gone by its idle heartbeat (about 5 s), and
    # reads on from where it was: a list from a fresh process shows both then.
    async with asyncio.timeout(30):
        while True:
            listed = json.loads((await up.cli("list", "--json")).stdout)
            if {row["sandbox_id"] for row in listed} >= {before, after}:
                break
            await asyncio.sleep(0.2)
    for sandbox_id in (before, after):
        await up.cli("destroy", sandbox_id)
    assert json.loads((up.home / "service.json").read_text())["nats_url"] == url
    assert "starting it again on" in up.log()
    up.process.terminate()
    assert await asyncio.to_thread(up.process.wait, 30) == 0, up.log()


async def test_a_server_that_will_not_stay_up_stops_the_service_with_the_reason(up: Up) -> None:
    """Killed as often as it starts: after ``RESTARTS`` exits within the window the service
    stops, exits non-zero and says why, and leaves no server behind."""
    await up.cli("list")  # serving
    pid = None
    for _ in range(RESTARTS):
        pid = await up.next_nats(pid)
        os.kill(pid, signal.SIGKILL)
    assert await asyncio.to_thread(up.process.wait, 60) != 0
    # The last kill may land while that server starts: it counts all the same.
    assert f"exited {RESTARTS} times within 60 s (last " in up.log()
    assert "; sandboxer stopped" in up.log()
    assert "Traceback" not in up.log()
    assert up.nats_pid() is None
    assert not (up.home / "service.json").exists()
