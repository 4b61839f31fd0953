"""Fixtures shared by every test suite: a real nats-server and system-tool checks.

Suite-specific fixtures live in the conftest.py of their own directory.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.config.settings import Settings

# Fixtures for remote backends (sshd hosts, a private container engine), shared by suites.
pytest_plugins = ["tests.integration.remote_fixtures"]


def require_tool(name: str, apt_package: str) -> str:
    """Path of the command ``name``; fails the test (never skips) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"required system tool {name!r} is missing; install it with: "
            f"apt-get install -y {apt_package} (or run 'make system-deps')",
            pytrace=False,
        )
    return path


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServerProcess]:
    """A fresh JetStream server on a free loopback port, its data in ``tmp_path``."""
    server = NatsServerProcess(
        tmp_path / "nats",
        binary=Settings.from_env().nats_server,
        port=0,
        server_name="test",
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServerProcess) -> str:
    return nats_server.url
