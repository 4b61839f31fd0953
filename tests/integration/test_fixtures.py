"""The test fixtures themselves fail loudly: a service that never answers names what did not."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.errors import ConfigError
from tests.integration import conftest as integration
from tests.integration.conftest import start_service

pytestmark = pytest.mark.integration


async def test_start_service_fails_clearly_when_nothing_answers(
    nats_server: NatsServerProcess, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def silent_roles(*_args: Any, **_kwargs: Any) -> None:
        await asyncio.Event().wait()  # runs, but serves nothing

    monkeypatch.setattr(integration, "run_roles", silent_roles)
    monkeypatch.setattr(integration, "START_TIMEOUT", 0.5)
    with pytest.raises(pytest.fail.Exception) as caught:
        await start_service(home, nats_server.url)
    message = str(caught.value)
    assert "did not answer sandboxer.query.health within 0.5s" in message
    assert "control, projector" in message
    assert nats_server.url in message


async def test_start_service_raises_what_stopped_the_roles(
    nats_server: NatsServerProcess, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_roles(*_args: Any, **_kwargs: Any) -> None:
        raise ConfigError("the projector's view is unreadable")

    monkeypatch.setattr(integration, "run_roles", broken_roles)
    with pytest.raises(ConfigError, match="view is unreadable"):
        await start_service(home, nats_server.url)
