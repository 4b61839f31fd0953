"""``sandboxer up`` with its own nats-server, in a process of its own, for the tests of what
it does to that server (test_embedded_restart.py, test_disk_room.py): the ``up`` fixture runs
it under the ``home`` fixture's directory and tears it down after."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chaos.harness import nats_server_child
from tests.integration.conftest import Cli, reap_local

__all__ = ["Up", "up"]


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
