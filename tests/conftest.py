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

# Fixtures for remote backends (sshd hosts, a private container engine) and provider
# doubles, shared by suites.
pytest_plugins = [
    "tests.integration.remote_fixtures",
    "tests.doubles.e2b_double",
    "tests.doubles.daytona_double",
    "tests.doubles.modal_double",
]


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


def fail_on_logged_errors(server: NatsServerProcess) -> None:
    """Fail the test when the server logged ``[FTL]`` or ``[ERR]`` lines since it started.

    A client that breaks the protocol, a store that cannot write, a stream that
    lost its leader: the server says so in its log even when no client sees an
    error, and a test that passes over such a line hides a bug.
    """
    errors = server.logged_errors()
    if errors:
        shown = "\n  ".join(errors[:20])
        pytest.fail(
            f"nats-server {server.server_name!r} logged {len(errors)} error line(s):\n  {shown}\n"
            f"full log: {server.log_file} (mark the test 'nats_errors_expected' if it provokes "
            "them on purpose)",
            pytrace=False,
        )


@pytest.fixture
async def nats_server(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[NatsServerProcess]:
    """A fresh JetStream server on a free loopback port, its data in ``tmp_path``.

    The test fails when the server logs fatal or error lines while it runs.
    """
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
    if request.node.get_closest_marker("nats_errors_expected") is None:
        fail_on_logged_errors(server)


@pytest.fixture
def nats_url(nats_server: NatsServerProcess) -> str:
    return nats_server.url


PROVIDER_VARIABLES = (
    "E2B_API_KEY",
    "E2B_API_URL",
    "E2B_DOMAIN",
    "DAYTONA_API_KEY",
    "DAYTONA_API_URL",
    "DAYTONA_TARGET",
    "MODAL_SERVER_URL",
    "MODAL_TOKEN_ID",
    "MODAL_TOKEN_SECRET",
)


@pytest.fixture(autouse=True)
def _no_real_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests reach hosted providers only through their doubles: a developer's own keys in
    the environment must never send a test's request to the real E2B, Daytona or Modal."""
    for name in PROVIDER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
