"""The ordered reader the live projector follows the log with (bus/event_reader.py), against
a real nats-server: ``pending`` counts the events received behind one as well as those the
server still holds, and a settling reader holds a flow of appends back until it pauses; and
the last event on a subject, as a client notes its position (``last_event``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from sandboxer import subjects
from sandboxer.bus import event_reader
from sandboxer.bus.connect import connect
from sandboxer.bus.event_reader import LastEvent, last_event, read_events
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.streams import ensure_streams
from tests.ports import closed_port
from tests.waiting import until

pytestmark = pytest.mark.integration


@pytest.fixture
async def js(nats_server: NatsServerProcess) -> AsyncIterator[JetStreamContext]:
    nc: Client = await connect([nats_server.url], name="reader", long_lived=False)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        yield js
    finally:
        await nc.close()


async def append(js: JetStreamContext, n: int) -> None:
    await js.publish(f"sandboxer.evt.sandbox.reader{n}.requested", b"{}")


async def test_pending_from_the_server_is_not_counted_twice(js: JetStreamContext) -> None:
    """Events the server held when it sent one are also received behind it: ``pending``
    is the larger of the two counts, not their sum."""
    for n in range(5):
        await append(js, n)
    read = [(seq, pending) async for seq, _s, _d, pending in read_events(js)]
    assert read == [(1, 4), (2, 3), (3, 2), (4, 1), (5, 0)]


async def test_a_settling_reader_yields_a_chain_of_appends_once_it_pauses(
    js: JetStreamContext,
) -> None:
    """Appends made one after another, as a command's chain makes them, each reach the
    reader as it lands (the server holds nothing behind it), and come out together once the
    flow pauses, each saying how many follow it: the projector commits once, at the end.

    The settle (0.5 s, past ``SETTLE_LIMIT``, so one wait) is far longer than four awaited
    appends take, even on a loaded machine."""
    seen: list[tuple[int, int, float]] = []
    loop = asyncio.get_running_loop()

    async def follow() -> None:
        async for seq, _s, _d, pending in read_events(
            js, filter_subject=subjects.EVENTS, follow=True, settle=0.5
        ):
            seen.append((seq, pending, loop.time()))
            if seq == 4:
                return

    reader = asyncio.create_task(follow())
    await asyncio.sleep(0.2)  # the reader is subscribed and idle
    first_append = loop.time()
    for n in range(4):
        await append(js, n)
    await asyncio.wait_for(reader, 5)
    assert [(seq, pending) for seq, pending, _ in seen] == [(1, 3), (2, 2), (3, 1), (4, 0)]
    assert seen[0][2] >= first_append + 0.5  # nothing came out before the flow paused


async def test_a_filter_nothing_matches_ends_at_once(js: JetStreamContext) -> None:
    """An unknown sandbox's events (nothing in the log matches) end as soon as the server
    says so, not after ``idle_timeout`` of silence; one that matches still reads through."""
    for n in range(3):
        await append(js, n)
    loop = asyncio.get_running_loop()
    began = loop.time()
    nothing = subjects.sandbox_events_filter("unknown00001")
    assert [seq async for seq, *_ in read_events(js, filter_subject=nothing, idle_timeout=30)] == []
    assert loop.time() - began < 5
    one = subjects.sandbox_events_filter("reader1")
    assert [seq async for seq, *_ in read_events(js, filter_subject=one, idle_timeout=30)] == [2]
    after = [seq async for seq, *_ in read_events(js, filter_subject=one, start_seq=3)]
    assert after == []


async def test_the_last_event_on_a_subject_is_its_sequence_and_event_id(
    js: JetStreamContext, nats_server: NatsServerProcess
) -> None:
    """What a client notes after each outcome (command_outcomes.py): the stream sequence and
    the ``Nats-Msg-Id`` of the last event on the sandbox's subjects; None before any."""
    scope = subjects.sandbox_events_filter("lastevent01")
    nc = await connect([nats_server.url], name="client", long_lived=False)
    try:
        assert await last_event(nc, scope) is None
        await append(js, 0)  # another sandbox's, with no event id
        for kind in ("requested", "routed"):
            subject = f"sandboxer.evt.sandbox.lastevent01.{kind}"
            await js.publish(subject, b"{}", headers={"Nats-Msg-Id": f"evt-{kind}"})
        assert await last_event(nc, scope) == LastEvent(seq=3, event_id="evt-routed")
        no_id = await last_event(nc, subjects.sandbox_events_filter("reader0"))
        assert no_id == LastEvent(seq=1, event_id=None)
    finally:
        await nc.close()


async def test_a_follower_reads_on_as_soon_as_its_restarted_server_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server is killed -9 under a following reader and started again on the same port
    and store: the reader's consumer died with it. The connection's reconnect has it made
    again at once, from the event after the last one read (bus/reconnects.py), so the next
    event comes without waiting for two missed heartbeats, here made 30 s apart to tell the
    two apart (the live projector's view of a create made after an embedded server's
    restart came 2 s late until 2026-12-07)."""
    monkeypatch.setattr(event_reader, "FOLLOW_HEARTBEAT", 30.0)
    store = tmp_path / "nats"
    port = closed_port()
    server = await NatsServerProcess(store, port=port, server_name="reader-lost").start()
    nc = await connect([server.url], name="reader")
    js = nc.jetstream()
    read: list[int] = []

    async def follow() -> None:
        async for seq, _subject, _data, _pending in read_events(js, follow=True):
            read.append(seq)

    try:
        await ensure_streams(js)
        await append(js, 1)
        following = asyncio.create_task(follow())
        await until(lambda: read == [1], 10)
        await server.kill()
        server = await NatsServerProcess(store, port=port, server_name="reader-lost").start()
        await until(lambda: nc.is_connected, 10)
        await append(js, 2)
        await until(lambda: read == [1, 2], 20)  # a third of two missed heartbeats
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
    finally:
        await nc.close()
        await server.stop()
