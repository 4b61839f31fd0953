"""The durable publish against a real nats-server that goes away and comes back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
from nats.js.api import StreamConfig

from sandboxer import subjects
from sandboxer.bus.connect import FLUSH_TIMEOUT, connect
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.publish import PublishConflict, publish_durably
from sandboxer.bus.streams import ensure_streams
from sandboxer.config.settings import Settings
from sandboxer.errors import InvalidInput, StreamUnavailable
from tests.ports import closed_port

pytestmark = pytest.mark.integration

SUBJECT = "sandboxer.job.publish-test.sbx1"


def server_at(store: Path, port: int = 0) -> NatsServerProcess:
    return NatsServerProcess(
        store, binary=Settings.from_env().nats_server, port=port, server_name="publish-test"
    )


async def test_a_publish_outlasts_its_server_restarting(tmp_path: Path) -> None:
    """Sent while the only server is down; acked once it is back; stored once."""
    port = closed_port()  # not the kernel's pick: it is taken again 2.5 s after the stop
    server = await server_at(tmp_path / "nats", port).start()
    nc = await connect([server.url], name="test")
    js = nc.jetstream()
    try:
        await ensure_streams(js)
        await server.stop()
        publish = asyncio.create_task(
            publish_durably(
                js, SUBJECT, b"job", headers={"Nats-Msg-Id": "job-1"}, attempt_timeout=1.0
            )
        )
        await asyncio.sleep(2.5)
        assert not publish.done()
        server = await server_at(tmp_path / "nats", port).start()
        published = await asyncio.wait_for(publish, 30)
        assert published.retried
        again = await publish_durably(js, SUBJECT, b"job", headers={"Nats-Msg-Id": "job-1"})
        assert again.ack.duplicate
        assert not again.retried
        info = await js.stream_info(subjects.JOBS_STREAM)
        assert info.state.messages == 1
    finally:
        await nc.close()
        await server.stop()


async def test_a_server_gone_longer_than_the_budget_is_stream_unavailable(
    tmp_path: Path,
) -> None:
    server = await server_at(tmp_path / "nats").start()
    nc = await connect([server.url], name="test")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        await server.stop()
        started = time.monotonic()
        with pytest.raises(StreamUnavailable, match="unavailable for 2 s"):
            await publish_durably(
                js,
                SUBJECT,
                b"job",
                headers={"Nats-Msg-Id": "job-2"},
                budget_seconds=2.0,
                attempt_timeout=0.5,
            )
        assert 2.0 <= time.monotonic() - started < 5.0
    finally:
        with contextlib.suppress(ConnectionError):  # nats-py's close of a connection never restored
            await nc.close()


async def test_a_server_that_stops_reading_is_unavailable_within_the_budget(
    tmp_path: Path,
) -> None:
    """A frozen server reads nothing. Past nats-py's outgoing buffer (2 MB) a publish waits
    for the buffer to be written before its own timeout starts, by default for ever: on old
    code every publish below waited until the server woke, and then succeeded. Now each is
    refused as unavailable while the server sleeps, and what it was sent lands once."""
    server = await server_at(tmp_path / "nats").start()
    nc = await connect([server.url], name="test")
    js = nc.jetstream()
    payload = b"x" * 900_000  # under the server's 1 MB max_payload; 12 of them fill the buffers
    ids = [f"big-{i}" for i in range(12)]
    frozen = asyncio.Event()

    def wake() -> None:
        if frozen.is_set():
            os.kill(server.pid, signal.SIGCONT)
            frozen.clear()

    async def refused_while_frozen(msg_id: str) -> None:
        with pytest.raises(StreamUnavailable):
            await publish_durably(
                js,
                f"big.{msg_id}",
                payload,
                headers={"Nats-Msg-Id": msg_id},
                budget_seconds=1.0,
                attempt_timeout=0.3,
            )
        assert frozen.is_set(), "published only once the server woke"

    try:
        await js.add_stream(StreamConfig(name="BIG", subjects=["big.>"]))
        os.kill(server.pid, signal.SIGSTOP)
        frozen.set()
        # Each attempt may wait out the flush timeout before its own: well within this.
        alarm = asyncio.get_running_loop().call_later(3 * FLUSH_TIMEOUT + 30, wake)
        await asyncio.gather(*(refused_while_frozen(i) for i in ids))
        alarm.cancel()
        wake()
        for msg_id in ids:  # the caller sends again: each id is stored once
            await publish_durably(js, f"big.{msg_id}", payload, headers={"Nats-Msg-Id": msg_id})
        assert (await js.stream_info("BIG")).state.messages == len(ids)
    finally:
        wake()
        await nc.close()
        await server.stop()


async def test_a_wrong_expected_sequence_is_a_conflict_that_says_it_was_not_retried(
    nats_server: NatsServerProcess,
) -> None:
    nc = await connect([nats_server.url], name="test")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        headers = {"Nats-Msg-Id": "evt-1", "Nats-Expected-Last-Subject-Sequence": "7"}
        with pytest.raises(PublishConflict) as caught:
            await publish_durably(
                js, "sandboxer.evt.sandbox.sbx1.requested", b"{}", headers=headers
            )
        assert caught.value.err_code == 10071
        assert not caught.value.retried
        with pytest.raises(InvalidInput, match="Nats-Msg-Id"):
            await publish_durably(js, SUBJECT, b"job", headers={})
    finally:
        await nc.close()
