"""The consumer create the guarded durables send over the connection's public request
(sandboxer/bus/consumer_api.py), against a real JetStream: it never takes over a consumer of
its name, and what goes wrong reaches the caller as sandboxer's errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig

from sandboxer import subjects
from sandboxer.bus.connect import connect
from sandboxer.bus.consumer_api import create_consumer
from sandboxer.bus.guarded_durable import GuardedDurable
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.streams import ensure_streams
from sandboxer.errors import BusError, StreamUnavailable

pytestmark = pytest.mark.integration

CONFIG = ConsumerConfig(
    durable_name="meter",
    name="meter",
    filter_subject=subjects.sandbox_event_subject("*", "destroyed"),
    ack_policy=AckPolicy.EXPLICIT,
    ack_wait=5.0,
)


@pytest.fixture
async def nc(nats_server: NatsServerProcess) -> AsyncIterator[Client]:
    conn = await connect([nats_server.url], name="test")
    await ensure_streams(conn.jetstream())
    yield conn
    await conn.close()


async def test_it_creates_and_never_takes_over_a_consumer_of_its_name(nc: Client) -> None:
    assert await create_consumer(nc, subjects.EVENTS_STREAM, CONFIG) is None
    assert await create_consumer(nc, subjects.EVENTS_STREAM, CONFIG) is None  # the same: made
    refused = await create_consumer(nc, subjects.EVENTS_STREAM, CONFIG.evolve(ack_wait=30.0))
    assert refused is not None
    assert "10148" in refused
    info = await nc.jetstream().consumer_info(subjects.EVENTS_STREAM, "meter")
    assert info.config.ack_wait == 5.0


async def test_an_api_nothing_answers_is_unavailable_for_now(nc: Client) -> None:
    with pytest.raises(StreamUnavailable):  # no responders: no JetStream in that domain
        await create_consumer(
            nc, subjects.EVENTS_STREAM, CONFIG, api_prefix="$JS.elsewhere.API", timeout=1.0
        )


async def test_a_closed_connection_is_a_bus_error_from_the_guard_too(
    nc: Client, tmp_path: Path
) -> None:
    guard = GuardedDurable(nc, subjects.EVENTS_STREAM, CONFIG, home=tmp_path)
    await nc.close()
    with pytest.raises(BusError) as made:
        await create_consumer(nc, subjects.EVENTS_STREAM, CONFIG)
    assert not isinstance(made.value, StreamUnavailable)
    with pytest.raises(BusError):
        await guard.ensure()
