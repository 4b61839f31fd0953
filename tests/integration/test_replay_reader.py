"""The raw bulk reader a rebuild reads the log with (bus/replay_reader.py), against a real
nats-server: every event once and in order, with and without the embedded server's
credentials (the default deployment requires them), and a fallback, not a failure, where it
cannot connect as its client does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from sandboxer import subjects
from sandboxer.bus import direct_get, replay_reader
from sandboxer.bus.connect import connect
from sandboxer.bus.direct_get import read_subject
from sandboxer.bus.event_reader import last_sequence
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_auth import (
    AUTH_DIR_NAME,
    NatsCredentials,
    ensure_embedded_auth,
    read_credentials,
)
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.replay_reader import replay_batches
from sandboxer.bus.streams import ensure_streams
from sandboxer.errors import BusError, ReplayUnsupported
from sandboxer.events.account_events import AccountEvent, CreditsAdded, CreditsReserved
from sandboxer.events.types import Actor
from sandboxer.projections import projector as projector_module
from sandboxer.projections.projector import Projector
from tests.integration.conftest import routed_sandboxes

pytestmark = pytest.mark.integration

SANDBOXES = 40
AT = "2026-12-02T00:00:00.000Z"


@pytest.fixture
async def authed(tmp_path: Path) -> AsyncIterator[NatsServerProcess]:
    """A server with the embedded configuration: users and passwords, as `sandboxer up` runs."""
    home = tmp_path / "home"
    server = NatsServerProcess(
        home / "nats", config_file=ensure_embedded_auth(home), server_name="auth"
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def as_service(
    authed: NatsServerProcess, tmp_path: Path
) -> AsyncIterator[tuple[Client, NatsCredentials]]:
    """A connection to ``authed`` as the service identity, and that identity."""
    service = read_credentials(tmp_path / "home" / AUTH_DIR_NAME, "service")
    assert service is not None
    nc = await connect([authed.url], name="replay", long_lived=False, credentials=service)
    try:
        yield nc, service
    finally:
        await nc.close()


async def fill(nc: Client) -> int:
    """Two events for each of SANDBOXES sandboxes, through the real store; the last sequence."""
    await ensure_streams(nc.jetstream())
    return await routed_sandboxes(nc, "sbxreplay", 0, SANDBOXES)


async def read_all(nc: Client, start: int, stop: int) -> list[int]:
    seqs: list[int] = []
    async for batch in replay_batches(nc, nc.jetstream(), start_seq=start, stop_seq=stop):
        seqs += [seq for seq, _data in batch]
    return seqs


async def test_every_event_once_and_in_order(nats_server: NatsServerProcess) -> None:
    nc = await connect([nats_server.url], name="replay", long_lived=False)
    try:
        last = await fill(nc)
        assert await read_all(nc, 1, last) == list(range(1, last + 1))
        assert await read_all(nc, 7, 20) == list(range(7, 21))
        assert await read_all(nc, 5, 4) == []
    finally:
        await nc.close()


async def test_it_reads_as_the_service_identity_of_the_embedded_server(
    as_service: tuple[Client, NatsCredentials],
) -> None:
    nc, _ = as_service
    last = await fill(nc)
    # The raw reader itself, not the fallback: it would raise ReplayUnsupported here.
    assert await read_all(nc, 1, last) == list(range(1, last + 1))


async def test_credentials_it_cannot_send_mean_fall_back(
    as_service: tuple[Client, NatsCredentials],
) -> None:
    nc, service = as_service
    last = await fill(nc)
    nc.options["user"] = nc.options["password"] = None  # as a client with nkeys would be
    with pytest.raises(ReplayUnsupported, match="credentials"):
        await read_all(nc, 1, last)
    nc.options["user"], nc.options["password"] = service.user, "not-the-password"
    with pytest.raises(ReplayUnsupported, match="refused"):
        await read_all(nc, 1, last)


async def test_a_delivery_that_stops_is_an_error_not_a_wait_for_ever(
    nats_server: NatsServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its consumer deleted mid-read (or lost with the node that held it), the reader waited
    for the next frame for ever, and a rebuild, and 'up' with it, never ended."""
    monkeypatch.setattr(replay_reader, "HEARTBEAT_SECONDS", 0.5)
    monkeypatch.setattr(replay_reader, "STALL_SECONDS", 3.0)
    nc = await connect([nats_server.url], name="replay", long_lived=False)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        big = b"x" * 60_000  # more than the socket holds: the server is still sending
        for n in range(400):
            await js.publish(f"sandboxer.evt.sandbox.sbxbig{n:06d}.touched", big)
        last = await last_sequence(js)
        reading = replay_batches(nc, js, start_seq=1, stop_seq=last)
        first = await anext(reading)
        assert first[0][0] == 1
        for consumer in await js.consumers_info(subjects.EVENTS_STREAM):
            await js.delete_consumer(subjects.EVENTS_STREAM, consumer.name)

        async def drain() -> None:
            async with asyncio.timeout(30):
                async for _batch in reading:
                    pass

        with pytest.raises(BusError, match="delivery stopped"):
            await drain()
    finally:
        await nc.close()


async def test_a_rebuild_cut_off_mid_read_reads_the_rest_through_nats_py(
    nats_server: NatsServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nc = await connect([nats_server.url], name="replay", long_lived=False)
    try:
        last = await fill(nc)

        async def cut_off(*args: Any, **kwargs: Any) -> AsyncIterator[list[tuple[int, bytes]]]:
            async for batch in replay_batches(*args, **kwargs):
                yield batch[:10]  # what was read before the cut
                raise BusError("the NATS connection closed during replay")

        monkeypatch.setattr(projector_module, "replay_batches", cut_off)
        projector = Projector(nc, nc.jetstream(), tmp_path / "view.sqlite3")
        await projector.open()
        try:
            report = await projector.rebuild()
            assert report.position == last
            assert report.events == last
        finally:
            await projector.close()
    finally:
        await nc.close()


# -- a long history read by the event store ------------------------------------------------


async def publish_interleaved(js: JetStreamContext, count: int) -> None:
    """``count`` messages on sandbox ``sbxlonghist1``'s subjects, each beside one of another
    sandbox's, pipelined (only the reads are under test)."""
    acks = []
    for n in range(count):
        for sandbox_id in ("sbxlonghist1", "sbxotherone1"):
            subject = subjects.sandbox_event_subject(sandbox_id, "touched")
            acks.append(await js.publish_async(subject, f"{sandbox_id} {n}".encode()))
    await asyncio.gather(*acks)


async def read(nc: Client, **how: Any) -> list[tuple[int, bytes]]:
    filter_subject = subjects.sandbox_events_filter("sbxlonghist1")
    return [item async for item in read_subject(nc, filter_subject, **how)]


async def consumer_creates(nc: Client) -> tuple[list[str], Callable[[], Awaitable[None]]]:
    """The filters of the consumers made from now on (JetStream's API requests are messages
    of the account, seen by any subscriber), and how to stop listening."""
    filters: list[str] = []

    async def seen(msg: Msg) -> None:
        config = json.loads(msg.data).get("config", {})
        filters.append(config.get("filter_subject", ""))

    sub = await nc.subscribe("$JS.API.CONSUMER.CREATE.>", cb=seen)
    return filters, sub.unsubscribe


@pytest.fixture
async def plain(nats_server: NatsServerProcess) -> AsyncIterator[Client]:
    """A connection to a server without credentials, whose JetStream API requests a test
    may watch (the embedded server lets no identity subscribe to them)."""
    nc = await connect([nats_server.url], name="long-reads", long_lived=False)
    try:
        await ensure_streams(nc.jetstream())
        yield nc
    finally:
        await nc.close()


@pytest.mark.parametrize("count", [512, 1_500])
async def test_past_one_batch_a_history_is_read_in_bulk_the_same(plain: Client, count: int) -> None:
    """Past one batch of direct gets (512 messages) the event store reads the rest of a long
    history (an account's, a sandbox touched for a week) with the bulk reader: every message
    once, in order, as the direct gets alone read them, from any start. A history of exactly
    one batch has nothing after it: the bulk read ends at once, where a delivery that never
    comes would be waited for until it was taken for stalled (15 s)."""
    js = plain.jetstream()
    await publish_interleaved(js, count)
    by_direct_gets = await read(plain)
    assert len(by_direct_gets) == count
    filters, stop = await consumer_creates(plain)
    try:
        async with asyncio.timeout(10):
            assert await read(plain, bulk=js) == by_direct_gets
            assert await read(plain, bulk=js, start=by_direct_gets[100][0]) == by_direct_gets[100:]
        await plain.flush()
    finally:
        await stop()
    # Each read past a whole batch went on in bulk: both of 1,500, the first of 512.
    full_batches = sum(n >= direct_get.BATCH for n in (count, count - 100))
    assert filters == [subjects.sandbox_events_filter("sbxlonghist1")] * full_batches


async def test_the_service_identity_of_the_embedded_server_reads_in_bulk(
    as_service: tuple[Client, NatsCredentials],
) -> None:
    """A store's long read as the default deployment makes it. A bulk read that could not
    run would fall back to direct gets unseen, so the bulk reader is also asked alone, as
    the store asks it (its filter, past the last sequence): it raises where it cannot run."""
    nc, _ = as_service
    js = nc.jetstream()
    await ensure_streams(js)
    await publish_interleaved(js, 1_000)
    by_direct_gets = await read(nc)
    alone = replay_batches(
        nc,
        js,
        start_seq=1,
        stop_seq=direct_get.LAST,
        filter_subject=subjects.sandbox_events_filter("sbxlonghist1"),
    )
    async with asyncio.timeout(10):
        assert [item async for chunk in alone for item in chunk] == by_direct_gets
        assert await read(nc, bulk=js) == by_direct_gets


async def test_a_long_account_loaded_by_a_fresh_store_equals_the_state_kept(
    plain: Client,
) -> None:
    """An account of 1,200 events, as a restarted service's first meter loads it."""
    nc = plain
    js = nc.jetstream()
    writer = JetStreamEventStore(nc, js)
    actor = Actor(type="atm", id="test")
    head = {"project": "acme", "actor": actor, "at": AT}
    events: list[AccountEvent] = [CreditsAdded(**head, command_id="add", amount=10**9)]
    events += [
        CreditsReserved(
            **head,
            command_id=f"reserve-sbxacct{n:07d}",
            sandbox_id=f"sbxacct{n:07d}",
            amount=1_000,
            price="1",
            extension="ext.e2b",
        )
        for n in range(1_199)
    ]
    for start in range(0, len(events), 200):
        await writer.append_account(await writer.load_account("acme"), events[start : start + 200])
    kept = await writer.load_account("acme")
    filters, stop = await consumer_creates(nc)
    try:
        fresh = await JetStreamEventStore(nc, js).load_account("acme")
        await nc.flush()
    finally:
        await stop()
    assert fresh == kept
    assert (fresh.state.version, len(fresh.state.reservations)) == (1_200, 1_199)
    assert filters == [subjects.account_events_filter("acme")]
