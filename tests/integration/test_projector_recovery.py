"""A projector whose view cannot be written (a full disk) waits and catches up; it never ends
its role (the disk-full chaos scenario found it dying)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sandboxer.bus.connect import connect
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.streams import ensure_streams
from sandboxer.clock import utc_now
from sandboxer.events.types import SYSTEM_ACTOR, CommandRejected
from sandboxer.projections.projector import Projector
from sandboxer.projections.sandbox_view import SandboxView

pytestmark = pytest.mark.integration


class FullDiskView(SandboxView):
    """A real view whose first ``failures`` saves fail as SQLite does on a full disk."""

    failures = 2

    async def save(self, *args: Any, **kwargs: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        await super().save(*args, **kwargs)


async def test_a_view_that_cannot_be_written_is_retried_until_it_can(
    nats_server: NatsServerProcess, tmp_path: Path
) -> None:
    nc = await connect([nats_server.url], name="test-projector")
    js = nc.jetstream()
    await ensure_streams(js, 1)
    store = JetStreamEventStore(nc, js)
    rejection = CommandRejected(
        command_id="c-full",
        command="create",
        code="x",
        reason="y",
        actor=SYSTEM_ACTOR,
        at=utc_now(),
    )
    await store.record(rejection)
    projector = Projector(nc, js, tmp_path / "view.sqlite3")
    projector.view = await FullDiskView.open(tmp_path / "view.sqlite3")
    projector.position = 0
    stop = asyncio.Event()
    running = asyncio.create_task(projector.run(stop))
    try:
        assert await projector.wait_for(1, timeout=15)
        assert not running.done()
        assert isinstance(projector.view, FullDiskView)
        assert projector.view.failures == 0
        assert await projector.view.position() == 1
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
        await projector.close()
        await nc.close()
