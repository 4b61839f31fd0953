"""The usage table keeps a row per sandbox id and project, and a view written when it kept one
per sandbox id is rebuilt from the log at its first start (docs/payments.md)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from sandboxer.bus.connect import connect
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.domain.account_decide import MeterUsage, meter_command_id
from sandboxer.events.types import Actor
from sandboxer.projections.account_rows import list_usage
from sandboxer.projections.projector import Projector
from sandboxer.workers.deciding import apply_account

pytestmark = pytest.mark.integration

METER = Actor(type="atm", id="sandboxer-meter")
SANDBOX = "shared000001"

OLD_USAGE = """
CREATE TABLE usage (
    sandbox_id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    profile TEXT,
    extension TEXT,
    seconds INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    byok INTEGER NOT NULL,
    price TEXT NOT NULL,
    at TEXT NOT NULL,
    seq INTEGER NOT NULL
);
"""
"""The table as the code before 2026-12-04's review made it."""
OLD_FINGERPRINT = "f94537030deb7650"
"""What that code wrote in the view's meta (its tables and the states' shapes then)."""


def metered(seconds: int) -> MeterUsage:
    """The meter's command for the shared id: acme's sandbox ran; beta's lost create is
    released at zero seconds under the same command id (``release_lost_reservation``)."""
    return MeterUsage(
        command_id=meter_command_id(SANDBOX),
        actor=METER,
        sandbox_id=SANDBOX,
        extension="ext.saas-stub",
        profile="profile.saas-stub",
        seconds=seconds,
        price="100",
        create_price="1000",
    )


async def test_a_view_keyed_by_sandbox_id_alone_is_rebuilt_with_each_project_s_row(
    nats_server: NatsServerProcess,
    new_store: Callable[[], JetStreamEventStore],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = new_store()
    await apply_account(store, "acme", metered(10))
    await apply_account(store, "beta", metered(0))
    db = tmp_path / "view.sqlite3"
    nc = await connect([nats_server.url], name="usage-view", long_lived=False)
    try:
        projector = Projector(nc, nc.jetstream(), db)
        await projector.open()
        await projector.rebuild()
        await projector.close()
        # As the old code left it: its table shape and fingerprint, and beta's zero row in
        # place of acme's (the view's position already past both events).
        with sqlite3.connect(db) as conn:
            (beta_row,) = conn.execute("SELECT * FROM usage WHERE project = 'beta'").fetchall()
            conn.executescript("DROP TABLE usage;" + OLD_USAGE)
            conn.execute(f"INSERT INTO usage VALUES ({', '.join('?' * len(beta_row))})", beta_row)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'fingerprint'", (OLD_FINGERPRINT,))

        caplog.set_level(logging.WARNING, logger="sandboxer.projections.projector")
        projector = Projector(nc, nc.jetstream(), db)
        await projector.open()
        try:
            assert "rebuilding it from the log" in caplog.text
            assert projector.view is not None
            assert await projector.view.is_current()
            db_conn = projector.view._db
            async with db_conn.execute("PRAGMA table_info(usage)") as cursor:
                keyed = sorted((row[5], row[1]) for row in await cursor.fetchall() if row[5])
            assert keyed == [(1, "sandbox_id"), (2, "project")]
            rows = {
                project: [
                    (u["sandbox_id"], u["amount"])
                    for u in await list_usage(db_conn, project=project)
                ]
                for project in ("acme", "beta")
            }
            assert rows == {"acme": [(SANDBOX, 1000 + 10 * 100)], "beta": [(SANDBOX, 0)]}
        finally:
            await projector.close()
    finally:
        await nc.close()
