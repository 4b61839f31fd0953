"""The events stored on 2026-12-02, put back into a real stream, replay to the same views.

Also: a view written by another shape of the code is noticed at start-up and
rebuilt from the log, with the projector saying so.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sandboxer.bus.connect import connect
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.streams import ensure_streams
from sandboxer.projections.projector import Projector
from tests.unit.golden_files import GOLDEN, contains
from tests.unit.test_golden_events import golden_lines

pytestmark = pytest.mark.integration


async def restore_golden_stream(url: str) -> None:
    """Publish every golden message with its own subject and headers (the stream starts empty,
    so each lands at its original sequence and the expected-sequence headers hold)."""
    nc = await connect([url], name="golden-loader")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        for line in golden_lines():
            ack = await js.publish(line["subject"], line["body"].encode(), headers=line["headers"])
            assert ack.seq == line["seq"]
    finally:
        await nc.drain()


async def open_projector(url: str, db: Path) -> tuple[Projector, Any]:
    nc = await connect([url], name="golden-projector")
    projector = Projector(nc, nc.jetstream(), db)
    await projector.open()
    return projector, nc


async def test_golden_events_replay_to_the_golden_states(
    nats_server: NatsServerProcess, tmp_path: Path
) -> None:
    await restore_golden_stream(nats_server.url)
    projector, nc = await open_projector(nats_server.url, tmp_path / "view.sqlite3")
    try:
        report = await projector.rebuild()
        assert report.events == len(golden_lines())
        assert projector.view is not None
        expected = json.loads((GOLDEN / "states-2026-12-02.json").read_text())
        for sandbox_id, state in expected.items():
            stored = await projector.view.get(sandbox_id)
            assert stored is not None
            assert contains(json.loads(msgspec.json.encode(stored)), state), sandbox_id
        rejection = await projector.view.rejection("golden-create-3")
        assert rejection is not None
        assert rejection["code"] == "unknown_profile"
        hosts = {row["host"]: row for row in await projector.view.hosts()}
        assert hosts["local-golden"]["reaped"]["removed"] == ["orphansbx01"]
        assert any(row["report"] for row in hosts.values())
    finally:
        await projector.close()
        await nc.drain()


async def test_a_view_of_another_shape_is_rebuilt_at_start(
    nats_server: NatsServerProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await restore_golden_stream(nats_server.url)
    db = tmp_path / "view.sqlite3"
    projector, nc = await open_projector(nats_server.url, db)
    await projector.rebuild()
    await projector.close()
    await nc.drain()
    # As if an older sandboxer had written it: another fingerprint, and a row it got wrong.
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = 'older-shape' WHERE key = 'fingerprint'")
        conn.execute("UPDATE sandboxes SET status = 'bogus'")
    caplog.set_level(logging.WARNING, logger="sandboxer.projections.projector")
    projector, nc = await open_projector(nats_server.url, db)
    try:
        assert "rebuilding it from the log" in caplog.text
        assert projector.view is not None
        assert await projector.view.is_current()
        statuses = {
            state.status for state in await projector.view.list_states(include_destroyed=True)
        }
        assert statuses == {"destroyed", "failed"}
        assert projector.position == len(golden_lines())
    finally:
        await projector.close()
        await nc.drain()
