"""A publish and its ack through the connection's ack inbox, against a real nats-server."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import weakref
from pathlib import Path

import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import APIError, NoStreamResponseError

from sandboxer import subjects
from sandboxer.bus.ack_inbox import publish_all_for_ack, publish_for_ack
from sandboxer.bus.connect import connect
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.publish import is_transient
from sandboxer.bus.streams import ensure_streams
from tests.ports import closed_port
from tests.waiting import until

pytestmark = pytest.mark.integration

SUBJECT = "sandboxer.job.ack-test.sbx1"


async def test_acks_come_back_to_their_own_publishes(nats_server: NatsServerProcess) -> None:
    """Many at once on one connection (the first ones making its one subscription together):
    each gets its own sequence; a message id sent again is a duplicate of the first."""
    nc = await connect([nats_server.url], name="test")
    try:
        await ensure_streams(nc.jetstream())
        acks = await asyncio.gather(
            *(
                publish_for_ack(nc, SUBJECT, b"job", headers={"Nats-Msg-Id": f"m{n}"}, timeout=5)
                for n in range(50)
            )
        )
        assert sorted(ack.seq for ack in acks) == list(range(1, 51))
        assert not any(ack.duplicate for ack in acks)
        assert {ack.stream for ack in acks} == {subjects.JOBS_STREAM}
        again = await publish_for_ack(nc, SUBJECT, b"job", headers={"Nats-Msg-Id": "m7"}, timeout=5)
        assert again.duplicate
        assert again.seq == acks[7].seq
    finally:
        await nc.close()


async def test_refusals_keep_the_errors_nats_py_raises(nats_server: NatsServerProcess) -> None:
    """No stream on the subject: no responders; an expectation unmet: the APIError of its
    code; no ack in time: nats-py's timeout. The publish module sorts them by those types."""
    nc = await connect([nats_server.url], name="test")
    try:
        await ensure_streams(nc.jetstream())
        with pytest.raises(NoStreamResponseError) as none:
            await publish_for_ack(
                nc, "nowhere.at.all", b"x", headers={"Nats-Msg-Id": "n1"}, timeout=5
            )
        assert is_transient(none.value)
        headers = {"Nats-Msg-Id": "e1", "Nats-Expected-Last-Subject-Sequence": "7"}
        with pytest.raises(APIError) as refused:
            await publish_for_ack(
                nc, "sandboxer.evt.sandbox.sbx1.requested", b"{}", headers=headers, timeout=5
            )
        assert refused.value.err_code == 10071
        assert not is_transient(refused.value)
        # A core subscriber that never answers stands in for a stream that never acks.
        await nc.subscribe("silent.subject")
        with pytest.raises(NatsTimeout) as late:
            await publish_for_ack(
                nc, "silent.subject", b"x", headers={"Nats-Msg-Id": "t1"}, timeout=0.2
            )
        assert is_transient(late.value)
        after = await publish_for_ack(
            nc, SUBJECT, b"job", headers={"Nats-Msg-Id": "after"}, timeout=5
        )
        assert after.seq >= 1
    finally:
        await nc.close()


async def test_publishes_sent_at_once_each_get_their_own_answer_in_order(
    nats_server: NatsServerProcess,
) -> None:
    """Sent together, before any ack: an ack, a refusal and a silence come back as values,
    each for its own publish, and the stream took them in the order sent."""
    nc = await connect([nats_server.url], name="test")
    try:
        await ensure_streams(nc.jetstream())
        await nc.subscribe("silent.subject")
        answers = await publish_all_for_ack(
            nc,
            [
                (SUBJECT, b"a", {"Nats-Msg-Id": "all-1"}),
                (
                    "sandboxer.evt.sandbox.sbx2.requested",
                    b"{}",
                    {"Nats-Msg-Id": "all-2", "Nats-Expected-Last-Subject-Sequence": "7"},
                ),
                ("silent.subject", b"x", {"Nats-Msg-Id": "all-3"}),
                (SUBJECT, b"b", {"Nats-Msg-Id": "all-4"}),
            ],
            timeout=0.5,
        )
        first, refused, silent, last = answers
        assert not isinstance(first, Exception)
        assert not isinstance(last, Exception)
        assert last.seq == first.seq + 1
        assert isinstance(refused, APIError)
        assert refused.err_code == 10071
        assert isinstance(silent, NatsTimeout)
    finally:
        await nc.close()


async def test_a_closed_connection_is_not_kept_for_its_acks(nats_server: NatsServerProcess) -> None:
    """The inbox of each connection is kept by the connection alone: the suite opens
    hundreds, and none may outlive its users."""
    nc = await connect([nats_server.url], name="test")
    await ensure_streams(nc.jetstream())
    await publish_for_ack(nc, SUBJECT, b"job", headers={"Nats-Msg-Id": "kept"}, timeout=5)
    await nc.close()
    gone = weakref.ref(nc)
    del nc
    gc.collect()
    assert gone() is None


async def test_a_publish_the_lost_server_had_is_answered_unanswered_once_the_connection_is_back(
    tmp_path: Path,
) -> None:
    """The server is frozen, given a publish, and killed -9: the publish died with it, and
    its ack will never come. Once the connection is back on the server started again, the
    publish is answered as unanswered at once (bus/reconnects.py), well within its 60 s,
    and sent again under its message id it lands once. A publish made while the connection
    was down is sent when it is back, and acked."""
    store = tmp_path / "nats"
    port = closed_port()
    server = await NatsServerProcess(store, port=port, server_name="ack-lost").start()
    nc = await connect([server.url], name="test")
    try:
        await ensure_streams(nc.jetstream())
        os.kill(server.pid, signal.SIGSTOP)
        lost = asyncio.create_task(
            publish_for_ack(nc, SUBJECT, b"job", headers={"Nats-Msg-Id": "lost1"}, timeout=60)
        )
        await asyncio.sleep(0.2)  # sent: the frozen server holds it unread
        await server.kill()
        await until(lambda: not nc.is_connected, 10)
        while_down = asyncio.create_task(
            publish_for_ack(nc, SUBJECT, b"job", headers={"Nats-Msg-Id": "down1"}, timeout=60)
        )
        server = await NatsServerProcess(store, port=port, server_name="ack-lost").start()
        async with asyncio.timeout(20):  # a third of the publish's timeout
            with pytest.raises(NatsTimeout):
                await lost
            assert not (await while_down).duplicate
        again = await publish_for_ack(
            nc, SUBJECT, b"job", headers={"Nats-Msg-Id": "lost1"}, timeout=5
        )
        assert not again.duplicate
        info = await nc.jetstream().stream_info(subjects.JOBS_STREAM)
        assert info.state.messages == 2
    finally:
        await nc.close()
        await server.stop()
