"""The sandbox view's checkpoint on a real nats-server (bus/view_checkpoints.py): a projector
stores a copy of its view as it follows the log, and one that opens with no view of its own
starts from it, reads only the log after it, and ends with the view a rebuild from sequence 1
makes. A checkpoint is trusted only for the log and the shape of view it was made of."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta

from chaos.checks import checkpoints_agree
from sandboxer import subjects
from sandboxer.bus.checkpoint_bucket import event_digest, open_checkpoint_bucket
from sandboxer.bus.connect import connect
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.streams import ensure_streams
from sandboxer.bus.view_checkpoints import ViewCheckpoints
from sandboxer.client import SandboxerClient
from sandboxer.errors import ViewBehind
from sandboxer.projections.projector import Projector
from sandboxer.projections.queries import QueryService
from sandboxer.projections.sandbox_view import FINGERPRINT
from sandboxer.projections.view_copy import copy_view
from tests.integration.conftest import routed_sandboxes, serving

pytestmark = pytest.mark.integration

AFTER = 40
ADMIN = {"type": "adm", "id": "ops"}
"""Events a projector folds before it stores the view's checkpoint, in these tests."""


@dataclass
class Bus:
    nc: Client
    js: JetStreamContext
    checkpoints: ViewCheckpoints

    def projector(self, path: Path, *, checkpoints: bool = True) -> Projector:
        return Projector(
            self.nc,
            self.js,
            path,
            checkpoints=self.checkpoints if checkpoints else None,
            checkpoint_after=AFTER,
        )


@pytest.fixture
async def bus(nats_server: NatsServerProcess) -> AsyncIterator[Bus]:
    nc = await connect([nats_server.url], name="test-view-checkpoints")
    js = nc.jetstream()
    await ensure_streams(js, 1)
    try:
        yield Bus(nc, js, ViewCheckpoints(js, await open_checkpoint_bucket(js, 1)))
    finally:
        await nc.close()


async def append_sandboxes(bus: Bus, first: int, count: int) -> int:
    """Two events for each of ``count`` sandboxes; the log's last sequence after them."""
    return await routed_sandboxes(bus.nc, "sbxview", first, count)


@contextlib.asynccontextmanager
async def following(projector: Projector) -> AsyncIterator[Projector]:
    """``projector`` opened and following the log until the block ends."""
    await projector.open()
    stop = asyncio.Event()
    running = asyncio.create_task(projector.run(stop))
    try:
        yield projector
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
        await projector.close()


async def rebuilt_rows(bus: Bus, path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the view a rebuild from sequence 1 makes (no checkpoint read)."""
    fresh = bus.projector(path, checkpoints=False)
    await fresh.open()
    await fresh.rebuild()
    try:
        assert fresh.view is not None
        return await fresh.view.dump()
    finally:
        await fresh.close()


async def stored_position(bus: Bus) -> int:
    async with asyncio.timeout(20):
        while (stored := await bus.checkpoints.stored(FINGERPRINT)) is None:
            await asyncio.sleep(0.05)
    return stored.position


async def test_a_projector_with_no_view_starts_from_the_checkpoint_and_equals_a_rebuild(
    bus: Bus, tmp_path: Path
) -> None:
    await append_sandboxes(bus, 0, 30)
    async with following(bus.projector(tmp_path / "first.sqlite3")) as first:
        last = await append_sandboxes(bus, 30, 30)
        assert await first.wait_for(last, timeout=15)
        await stored_position(bus)
    checkpointed = await stored_position(bus)  # the last one (closing finishes a write)
    assert AFTER <= checkpointed <= last
    last = await append_sandboxes(bus, 60, 5)  # past the checkpoint

    second = bus.projector(tmp_path / "second.sqlite3")
    await second.open()
    assert second.position == checkpointed  # read from it: the log after it is still to come
    await second.close()
    async with following(bus.projector(tmp_path / "second.sqlite3")) as second:
        assert await second.wait_for(last, timeout=15)
        assert second.view is not None
        assert await second.view.dump() == await rebuilt_rows(bus, tmp_path / "rebuilt.sqlite3")


async def test_a_view_of_another_shape_starts_from_the_checkpoint_of_this_one(
    bus: Bus, tmp_path: Path
) -> None:
    """An upgrade another process made first: its checkpoint saves this one the whole log."""
    last = await append_sandboxes(bus, 0, 30)
    async with following(bus.projector(tmp_path / "first.sqlite3")) as first:
        assert await first.wait_for(last, timeout=15)
        # The rebuild at open folded it all: its checkpoint is stored at once.
        checkpointed = await stored_position(bus)
    old = tmp_path / "old.sqlite3"
    old_view = bus.projector(old, checkpoints=False)
    await old_view.open()
    await old_view.close()
    with contextlib.closing(sqlite3.connect(old)) as db, db:
        db.execute("UPDATE meta SET value = 'an-older-shape' WHERE key = 'fingerprint'")
    upgraded = bus.projector(old)
    await upgraded.open()
    try:
        assert upgraded.position == checkpointed
        assert upgraded.view is not None
        assert await upgraded.view.is_current()
    finally:
        await upgraded.close()


async def test_a_checkpoint_is_read_only_as_the_view_of_this_log_it_says_it_is(
    bus: Bus, tmp_path: Path
) -> None:
    """A view of the log up to ``then``, planted as the checkpoint under several kinds of
    metadata, with the log gone on past it. Read, the projector opens at ``then``; refused,
    it opens empty (to be built from the log once it runs)."""
    then = await append_sandboxes(bus, 0, 20)
    real = tmp_path / "real.sqlite3"
    await rebuilt_rows(bus, real)
    await append_sandboxes(bus, 20, 10)  # the log goes on past the planted view
    other = tmp_path / "other.sqlite3"
    with contextlib.closing(sqlite3.connect(real)) as db:
        db.execute("VACUUM INTO ?", (str(other),))
    with contextlib.closing(sqlite3.connect(other)) as db, db:
        db.execute("UPDATE meta SET value = 'another-shape' WHERE key = 'fingerprint'")
    event = await event_digest(bus.js, then)
    assert event is not None
    bucket = await bus.js.object_store(subjects.CHECKPOINTS_BUCKET)

    async def opens_at(data: bytes, headers: dict[str, str]) -> int:
        await bucket.put(f"view.{FINGERPRINT}", data, meta=ObjectMeta(headers=headers))
        path = tmp_path / "opened.sqlite3"
        path.unlink(missing_ok=True)
        opened = bus.projector(path)
        await opened.open()
        await opened.close()
        return opened.position

    true = {"Sandboxer-Position": str(then), "Sandboxer-Event": event}
    assert await opens_at(real.read_bytes(), true) == then  # what it says: read
    refused = [
        (real.read_bytes(), {**true, "Sandboxer-Event": "0" * 64}),  # another log's event
        (real.read_bytes(), {**true, "Sandboxer-Position": str(then - 1)}),  # not its position
        (real.read_bytes(), {"Sandboxer-Position": str(then)}),  # no event recorded
        (other.read_bytes(), true),  # a view of another shape than its name says
        (b"not a database" * 1000, true),
    ]
    for data, headers in refused:
        assert await opens_at(data, headers) == 0


async def test_storing_a_checkpoint_retires_the_views_of_other_shapes(
    bus: Bus, tmp_path: Path
) -> None:
    last = await append_sandboxes(bus, 0, 5)
    bucket = await bus.js.object_store(subjects.CHECKPOINTS_BUCKET)
    await bucket.put("view.an-older-shape", b"an older view")
    await bucket.put("account.acme", b"an account's checkpoint stays")
    view = tmp_path / "view.sqlite3"
    await rebuilt_rows(bus, view)
    copy = tmp_path / "copy.sqlite3"
    assert copy_view(view, copy) == (FINGERPRINT, last)
    assert await bus.checkpoints.write(copy, FINGERPRINT, last)
    names = sorted(info.name for info in await bucket.list(ignore_deletes=True))
    assert names == ["account.acme", f"view.{FINGERPRINT}"]


async def test_a_service_on_a_new_machine_starts_its_view_from_the_checkpoint(
    nats_server: NatsServerProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``SANDBOXER_VIEW_CHECKPOINT_AFTER`` reaches the service's projector, and a service
    with a home of its own (another machine on the same NATS) answers from the checkpoint
    plus the log after it."""
    url = nats_server.url
    async with serving(tmp_path / "first", url, ["control", "projector"], view_checkpoint_after=10):
        admin = await SandboxerClient.connect([url], actor=ADMIN)
        try:
            for _ in range(12):
                await admin.account_command("add_credits", "acme", amount=1)
            # Read back (read-your-writes): the view has folded all twelve, so its checkpoint
            # is under way, and the stop waits for it. A stop does not wait for the view to
            # reach the log's end: before stops withdrew their pull requests (2026-12-07) it
            # took half a second, which the projector used.
            await admin.credits("acme")
        finally:
            await admin.close()
    caplog.set_level(logging.INFO, logger="sandboxer.projections.projector")
    async with serving(tmp_path / "second", url, ["projector"]):
        assert "read from its checkpoint" in caplog.text
        admin = await SandboxerClient.connect([url], actor=ADMIN)
        try:
            (account,) = await admin.credits("acme")
        finally:
            await admin.close()
    assert account["balance"] == 12


async def test_an_empty_view_opens_at_once_and_is_built_in_bulk_once_it_runs(
    bus: Bus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With no checkpoint to read, a projector's start does not wait for the whole log: it
    opens empty, and running, builds the view in bulk (faster than following the log from
    sequence 1), then follows it."""
    last = await append_sandboxes(bus, 0, 20)
    caplog.set_level(logging.WARNING, logger="sandboxer.projections.projector")
    async with following(bus.projector(tmp_path / "view.sqlite3", checkpoints=False)) as fresh:
        assert await fresh.wait_for(last, timeout=15)
        assert f"built from the log: {last} events" in caplog.text
        later = await append_sandboxes(bus, 20, 2)
        assert await fresh.wait_for(later, timeout=15)
    opened = bus.projector(tmp_path / "other.sqlite3", checkpoints=False)
    await opened.open()
    await opened.close()
    assert opened.position == 0


async def test_a_view_behind_the_log_answers_no_query_until_it_has_caught_up(
    bus: Bus, nats_server: NatsServerProcess, tmp_path: Path
) -> None:
    """A projector that opened behind the log (here an empty view, its bulk build not
    started) answers ``view_behind``, not the rows it has so far (none); once it has folded
    where the log was when it opened, it answers, a query that came meanwhile included."""
    last = await append_sandboxes(bus, 0, 5)
    projector = bus.projector(tmp_path / "view.sqlite3", checkpoints=False)
    await projector.open()
    assert projector.log_end_at_open == last
    queries = QueryService(bus.nc, projector, info={})
    await queries.start()
    client = await SandboxerClient.connect([nats_server.url], actor=ADMIN)
    try:
        assert (await client.health())["caught_up"] is False
        with pytest.raises(ViewBehind, match=f"at event 0 of {last}, where the log was"):
            await client.list_sandboxes()
        projector.building_at = 3  # as a rebuild says how far it has folded
        with pytest.raises(ViewBehind, match=f"at event 3 of {last}, .*being built from the log"):
            await client.list_sandboxes()
        projector.building_at = None
        asked = asyncio.create_task(client.list_sandboxes())
        stop = asyncio.Event()
        running = asyncio.create_task(projector.run(stop))
        assert len(await asked) == 5
        assert len(await client.list_sandboxes()) == 5
        assert (await client.health())["caught_up"] is True
        stop.set()
        await asyncio.wait_for(running, 10)
    finally:
        await client.close()
        await queries.stop()
        await projector.close()


async def test_the_fault_suite_holds_the_view_s_checkpoint_to_a_rebuild(
    bus: Bus, nats_server: NatsServerProcess, tmp_path: Path
) -> None:
    """``make chaos``'s ``checkpoints_agree`` verifies the view's checkpoint row by row
    against a rebuild up to its position: the true copy passes, one with a row the log does
    not make (a status changed here, its metadata left true) is named."""
    then = await append_sandboxes(bus, 0, 10)
    await append_sandboxes(bus, 10, 3)  # the log goes on past it
    real = tmp_path / "real.sqlite3"
    await rebuilt_rows(bus, real)
    copy = tmp_path / "copy.sqlite3"
    with contextlib.closing(sqlite3.connect(real)) as db, db:
        db.execute("DELETE FROM sandboxes WHERE sandbox_id >= 'sbxview000010'")
        db.execute("UPDATE position SET seq = ?", (then,))
    assert copy_view(real, copy) == (FINGERPRINT, then)
    assert await bus.checkpoints.write(copy, FINGERPRINT, then)
    assert await checkpoints_agree([nats_server.url]) == []

    with contextlib.closing(sqlite3.connect(real)) as db, db:
        db.execute("UPDATE sandboxes SET status = 'ready' WHERE sandbox_id = 'sbxview000003'")
    assert copy_view(real, copy) == (FINGERPRINT, then)
    assert await bus.checkpoints.write(copy, FINGERPRINT, then)
    problems = await checkpoints_agree([nats_server.url])
    assert problems
    assert all(p.startswith(f"the view's checkpoint at event {then}: ") for p in problems)
    assert any("sbxview000003" in p for p in problems)
