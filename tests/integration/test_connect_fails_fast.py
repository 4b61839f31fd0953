"""A short-lived client given a NATS that is not there fails at once, saying so."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sandboxer.bus.connect import connect
from sandboxer.errors import BusError
from tests.integration.conftest import Cli
from tests.ports import closed_port

pytestmark = pytest.mark.integration


async def test_a_client_given_a_server_that_is_down_fails_within_seconds() -> None:
    url = f"nats://127.0.0.1:{closed_port()}"
    async with asyncio.timeout(15):  # nats-py read 0 attempts as no limit: for ever
        with pytest.raises(BusError, match="cannot reach NATS"):
            await connect([url], name="test", long_lived=False)


async def test_the_cli_given_a_server_that_is_down_says_so(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{closed_port()}"
    env = {"SANDBOXER_HOME": str(tmp_path), "SANDBOXER_NATS_URL": url, "PATH": "/usr/bin:/bin"}
    done = await Cli(env)("list", check=False, timeout=30)
    assert done.returncode == 1, done.stderr
    assert "cannot reach NATS" in done.stderr
