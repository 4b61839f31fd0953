"""A client redefining a service durable on the events stream through the bare
``$JS.API.CONSUMER.CREATE.SANDBOXER_EVENTS`` subject, which the permissions must allow for
ordered consumers (docs/security.md#durables-clients-could-redefine): the service's
durables skip nothing for it, under the embedded server's permissions."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from sandboxer import subjects
from sandboxer.bus.connect import connect
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_auth import AUTH_DIR_NAME, ensure_embedded_auth, read_credentials
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.streams import ensure_streams
from sandboxer.events.types import Actor, SandboxRequested
from sandboxer.statehub.follower import DURABLE, StateHubFollower, status_file
from sandboxer.workers.meter_worker import DESTROYED
from sandboxer.workers.pull_loop import ConsumerSpec, run_pull_consumer
from tests.integration.test_statehub import Hub

pytestmark = pytest.mark.integration

NARROWED = subjects.sandbox_event_subject("nobody", "destroyed")


@pytest.fixture
async def identities(tmp_path: Path) -> AsyncIterator[tuple[Client, Client]]:
    """The service's and a client's connections to a server with the embedded permissions."""
    home = tmp_path / "home"
    server = NatsServerProcess(
        home / "nats", config_file=ensure_embedded_auth(home), server_name="durables"
    )
    await server.start()
    conns = []
    try:
        for role in ("service", "client"):
            creds = read_credentials(home / AUTH_DIR_NAME, role)
            conns.append(
                await connect([server.url], name=role, long_lived=False, credentials=creds)
            )
        await ensure_streams(conns[0].jetstream())
        yield conns[0], conns[1]
    finally:
        for nc in conns:
            await nc.close()
        await server.stop()


async def redefine(client: Client, durable: str, filter_subject: str) -> None:
    """What any client (or an ``adm`` key) may send: the bare create, naming the durable."""
    request = {
        "stream_name": subjects.EVENTS_STREAM,
        "config": {"name": durable, "filter_subject": filter_subject, "ack_policy": "explicit"},
    }
    reply = await client.request(
        f"$JS.API.CONSUMER.CREATE.{subjects.EVENTS_STREAM}", json.dumps(request).encode()
    )
    answer = json.loads(reply.data)
    assert "error" not in answer, answer  # the server takes it: the attack is possible


async def until(check: Callable[[], bool], seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while not check():
            await asyncio.sleep(0.05)


def meter_spec(check_every: float) -> ConsumerSpec:
    # The meter's own durable and filter (workers/meter_worker.py).
    return ConsumerSpec(
        stream=subjects.EVENTS_STREAM,
        durable="meter",
        filter_subject=DESTROYED,
        check_every=check_every,
    )


class Meter:
    """The meter's pull loop, with a handler that records which sandboxes it saw."""

    def __init__(self, js: JetStreamContext, spec: ConsumerSpec) -> None:
        self.seen: set[str] = set()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(
            run_pull_consumer(js, spec, self._handle, self._poison, self._stop)
        )

    async def _handle(self, msg: Msg) -> None:
        self.seen.add(msg.subject.split(".")[3])
        await msg.ack()

    async def _poison(self, msg: Msg, exc: BaseException) -> None:
        raise AssertionError(f"nothing fails here: {exc}")

    async def stop(self) -> None:
        self._stop.set()
        await self._task


@contextlib.asynccontextmanager
async def running_meter(js: JetStreamContext, check_every: float) -> AsyncIterator[Meter]:
    meter = Meter(js, meter_spec(check_every))
    try:
        yield meter
    finally:
        await meter.stop()


async def destroyed(service: Client, *sandboxes: str) -> None:
    for sandbox in sandboxes:
        await service.jetstream().publish(
            subjects.sandbox_event_subject(sandbox, "destroyed"), b"{}"
        )


async def test_a_client_redefining_the_meters_durable_loses_it_no_destroyed_event(
    identities: tuple[Client, Client],
) -> None:
    service, client = identities
    js = service.jetstream()
    async with running_meter(js, check_every=0.5) as meter:
        await destroyed(service, "sbx1")
        await until(lambda: meter.seen == {"sbx1"}, 5)

        # Narrowed, the durable skips sbx2 while the meter keeps fetching; then the client
        # puts the filter back, so the settings alone look as the service made them.
        await redefine(client, "meter", NARROWED)
        await destroyed(service, "sbx2")
        await asyncio.sleep(1.0)
        await redefine(client, "meter", DESTROYED)
        await destroyed(service, "sbx3")

        await until(lambda: meter.seen == {"sbx1", "sbx2", "sbx3"}, 10)
        async with asyncio.timeout(5):  # and the durable is the service's again
            while (
                info := await js.consumer_info(subjects.EVENTS_STREAM, "meter")
            ).config.durable_name != "meter":
                await asyncio.sleep(0.1)
        assert info.config.filter_subject == DESTROYED


async def test_a_meter_that_starts_on_a_redefined_durable_meters_what_it_skipped(
    identities: tuple[Client, Client],
) -> None:
    service, client = identities
    js = service.jetstream()
    async with running_meter(js, check_every=3600) as meter:  # no look while it runs
        await destroyed(service, "sbx1")
        await until(lambda: meter.seen == {"sbx1"}, 5)
        await redefine(client, "meter", NARROWED)
        await destroyed(service, "sbx2")
        await asyncio.sleep(1.0)  # fetched past, and so skipped, by the narrowed durable
        assert meter.seen == {"sbx1"}

    async with running_meter(js, check_every=3600) as restarted:
        await until(lambda: "sbx2" in restarted.seen, 10)


@pytest.fixture
def hub() -> Iterator[Hub]:
    served = Hub()
    served.up()
    try:
        yield served
    finally:
        served.down()


async def requested(service: Client, sandbox_id: str) -> None:
    store = JetStreamEventStore(service, service.jetstream())
    event = SandboxRequested(
        sandbox_id=sandbox_id,
        command_id=f"c-{sandbox_id}",
        actor=Actor(type="atm", id="pytest"),
        at="2026-12-03T10:00:00.000Z",
        profile="profile.local",
        profile_version=1,
    )
    await store.append(await store.load(sandbox_id), [event])


async def test_a_client_redefining_the_state_hubs_durable_loses_the_hub_no_event(
    identities: tuple[Client, Client], hub: Hub, tmp_path: Path
) -> None:
    service, client = identities
    follower = StateHubFollower(
        service,
        service.jetstream(),
        url=hub.url,
        token_ref=None,
        status_path=status_file(tmp_path),
        check_every=0.5,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(follower.run(stop))

    def sent() -> set[str]:
        return {body["sandbox_id"] for body in hub.stored}

    try:
        await requested(service, "sbxhubhubhubhub01")
        await until(lambda: sent() == {"sbxhubhubhubhub01"}, 10)
        await redefine(client, DURABLE, NARROWED)
        await requested(service, "sbxhubhubhubhub02")
        await asyncio.sleep(1.0)
        await redefine(client, DURABLE, subjects.EVENTS)
        await requested(service, "sbxhubhubhubhub03")
        await until(lambda: len(sent()) == 3, 10)
    finally:
        stop.set()
        await running
        await follower.aclose()
