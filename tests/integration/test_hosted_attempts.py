"""Two attempts at one hosted sandbox's provisioning at once: the earlier, resumed, must not
remove what the later one made, nor leave what it made itself beside it.

Real nats-server and control worker, two extension workers in this process against a
provider double (E2B, Modal, Daytona). The first worker's attempt is held (as SIGSTOP or a partition
from NATS holds it: no heartbeat), so JetStream gives the job to the second after
``ack_wait``, whose attempt makes the sandbox the log's ``ready`` names. The held attempt
then goes on: the later attempt's sandbox stays, and it is the only one.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from grpclib import Status

from sandboxer import subjects
from sandboxer.bus.connect import connect
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.config.catalog import Catalog
from sandboxer.extensions.base import Extension
from sandboxer.extensions.e2b.backend import E2bExtension
from sandboxer.extensions.modal.backend import ModalExtension
from sandboxer.workers.extension_worker import ExtensionWorker
from tests.doubles.daytona_double import DaytonaServed
from tests.doubles.e2b_double import ServedE2b
from tests.doubles.modal_double import Fault, ModalDouble, modal_double, modal_extensions
from tests.integration.conftest import consumer_idle, resend_provision_job, start_service
from tests.integration.test_attempt_fencing import Silent
from tests.integration.test_ext_daytona import build as build_daytona
from tests.integration.test_lifecycle import event_types

pytestmark = pytest.mark.integration

__all__ = ["modal_double", "modal_extensions"]  # fixtures, used by name

HOLD = 4.0
"""Seconds the held attempt's first look at the provider waits: past ``ack_wait`` (1 s) and
the later attempt's whole provisioning."""


@dataclass
class Hosted:
    """A hosted backend under test: how to build one worker's instance of it, what the held
    attempt meets at the provider, and what the provider runs for a sandbox."""

    profile: str
    build: Callable[[], Extension]
    hold_teardown: Callable[[], None]
    """The first create is refused (not retryable, so the attempt fails at once), and the
    look of its teardown that follows answers only after HOLD seconds, with what is there
    then."""
    hold_create: Callable[[], None]
    """The first create is carried out only after HOLD seconds, and answered then."""
    create_sent: Callable[[], bool]
    """Whether the first create reached the provider yet."""
    running: Callable[[str], list[str]]
    """The provider's ids of the sandboxes it runs for our id."""
    provider_id: str
    """The key of the provider's id in the ``ready`` descriptor."""
    built: list[Extension] = field(default_factory=list)
    """Every instance built, for the test to close."""

    def new(self) -> Extension:
        self.built.append(self.build())
        return self.built[-1]

    async def aclose(self) -> None:
        for extension in self.built:
            await extension.aclose()  # type: ignore[attr-defined]


@pytest.fixture(params=["ext.e2b", "ext.modal", "ext.daytona"])
def hosted(request: pytest.FixtureRequest) -> Hosted:
    # Not an async fixture: the doubles' async fixtures are asked for by name from here.
    if request.param == "ext.e2b":
        served: ServedE2b = request.getfixturevalue("e2b_double")
        double = served.double

        def hold_e2b_teardown() -> None:
            double.app.faults.add("status", method="POST", pattern="/sandboxes", status=400)
            double.app.faults.add("latency", method="GET", pattern="/v2/sandboxes", seconds=HOLD)

        return Hosted(
            profile="profile.e2b-burst",
            build=lambda: E2bExtension({"api_url": served.url, "api_key": served.api_key}),
            hold_teardown=hold_e2b_teardown,
            hold_create=lambda: double.app.faults.add(
                "latency", method="POST", pattern="/sandboxes", seconds=HOLD
            ),
            create_sent=lambda: ("POST", "/sandboxes") in double.calls,
            running=lambda ours: [
                r.sandbox_id for r in double.live() if r.metadata.get("sandboxer_id") == ours
            ],
            provider_id="sandbox_id",
        )
    if request.param == "ext.daytona":
        return _daytona(request.getfixturevalue("daytona_double"))
    modal: ModalDouble = request.getfixturevalue("modal_double")
    make: Callable[..., ModalExtension] = request.getfixturevalue("modal_extensions")

    def hold_modal_teardown() -> None:
        modal.inject(Fault("SandboxCreate", "status", status=Status.INVALID_ARGUMENT))
        modal.inject(Fault("SandboxList", "latency", delay=HOLD))

    return Hosted(
        profile="profile.modal-gpu",
        build=lambda: make(call_timeout=HOLD * 3),  # the held call is waited for
        hold_teardown=hold_modal_teardown,
        hold_create=lambda: modal.inject(Fault("SandboxCreate", "latency", delay=HOLD)),
        create_sent=lambda: "SandboxCreate" in modal.calls,
        running=lambda ours: [r.sandbox_id for r in modal.running_for(ours)],
        provider_id="modal_sandbox_id",
    )


def _daytona(served: DaytonaServed) -> Hosted:
    faults = served.app.faults
    one = "/sandbox/{sandboxIdOrName}"

    def hold_daytona_teardown() -> None:
        faults.add("status", method="POST", pattern="/sandbox", status=400)
        faults.add("latency", method="GET", pattern=one, seconds=HOLD)

    return Hosted(
        profile="profile.daytona",
        # The held call is waited for; a first attempt's create is the first call it makes.
        build=lambda: build_daytona(served, request_timeout=HOLD * 3),
        hold_teardown=hold_daytona_teardown,
        hold_create=lambda: faults.add("latency", method="POST", pattern="/sandbox", seconds=HOLD),
        create_sent=lambda: ("POST", "/sandbox") in served.app.calls,
        running=lambda ours: [
            r.id for r in served.double.live() if r.labels.get("sandboxer_id") == ours
        ],
        provider_id="sandbox_id",
    )


async def test_a_resumed_earlier_attempt_leaves_the_later_attempt_s_sandbox(
    nats_server: NatsServerProcess, home: Path, hosted: Hosted
) -> None:
    """Attempt 1's create is refused, the log does not yet say another attempt has the
    sandbox, and its teardown looks at the provider: held there. The job goes to the second
    worker, whose attempt 2 makes the sandbox and records `ready`. Attempt 1's look then
    answers with attempt 2's sandbox in it: its teardown must leave that alone, or the log's
    `ready` names a sandbox that no longer runs."""
    hosted.hold_teardown()
    await two_attempts(nats_server, home, hosted)


async def test_an_earlier_attempt_s_create_landing_late_is_removed_by_it(
    nats_server: NatsServerProcess, home: Path, hosted: Hosted
) -> None:
    """Attempt 1's create is held at the provider; the job goes to the second worker, whose
    attempt 2 makes the sandbox and records `ready`. Attempt 1's create is carried out after
    that (on Modal and Daytona, refused: the name is taken), its `ready` is refused, and the log says a
    later attempt has the sandbox: it removes what it made itself, and only that."""
    hosted.hold_create()
    await two_attempts(nats_server, home, hosted)


async def two_attempts(nats_server: NatsServerProcess, home: Path, hosted: Hosted) -> None:
    """A create whose first attempt is held as set up; the job goes to a second worker once
    the first create reached the provider. Ends with exactly the `ready` one running."""
    service = await start_service(home, nats_server.url, roles=["control", "projector"])
    nc = await connect([nats_server.url], name="test-hosted-attempts")
    js = nc.jetstream()
    store = JetStreamEventStore(nc, js)
    catalog = Catalog.load(home)
    held = ExtensionWorker(js, store, catalog, hosted.new(), ack_wait=1)
    held.spec = Silent(**{**dataclasses.asdict(held.spec), "concurrency": 1})
    other = ExtensionWorker(js, store, catalog, hosted.new(), ack_wait=1)
    stops = asyncio.Event(), asyncio.Event()
    workers = [asyncio.create_task(held.run(stops[0]))]
    client = service.client
    try:
        await service.fund()
        sandbox_id = (await client.create(hosted.profile, wait=False))["sandbox_id"]
        async with asyncio.timeout(30):
            while not hosted.create_sent():
                await asyncio.sleep(0.02)
        stops[0].set()  # the held worker fetches nothing more
        workers.append(asyncio.create_task(other.run(stops[1])))
        async with asyncio.timeout(30):
            while "ready" not in await event_types(client, sandbox_id):
                await asyncio.sleep(0.05)
        async with asyncio.timeout(HOLD * 4):
            await workers[0]  # attempt 1 goes on, and ends
        state = (await store.load(sandbox_id)).state
        assert (state.status, state.attempt) == ("ready", 2)
        assert state.reachability is not None
        made: Any = state.reachability[hosted.provider_id]
        assert hosted.running(sandbox_id) == [made]
        assert "failed" not in await event_types(client, sandbox_id)
    finally:
        for stop in stops:
            stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
        await hosted.aclose()
        await nc.drain()
        await client.close()
        await service.shutdown()


class HeldTeardowns:
    """Holds the next teardown ``extension`` is asked for (either kind: a recreate's clean
    start) until ``go``, as a worker frozen (SIGSTOP) or cut off from NATS right there is."""

    def __init__(self, extension: Extension) -> None:
        self.held = asyncio.Event()
        self.go = asyncio.Event()
        self.armed = True
        for name in ("teardown", "teardown_attempt"):
            setattr(extension, name, self._hold(getattr(extension, name)))

    def _hold(self, call: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        async def held(*args: Any, **kwargs: Any) -> None:
            if self.armed:
                self.armed = False
                self.held.set()
                await self.go.wait()
            await call(*args, **kwargs)

        return held


async def test_a_recreate_held_before_its_clean_start_leaves_the_later_attempt_s_sandbox(
    nats_server: NatsServerProcess, home: Path, hosted: Hosted
) -> None:
    """A recreate's worker is held before it removes generation 1's sandbox; the job goes to
    a second worker, whose attempt makes generation 2's sandbox and records `ready`. The held
    worker then goes on: its clean start must leave that sandbox alone (only its own attempt's
    and earlier ones' go), or the log's `ready` names a sandbox that no longer runs."""
    service = await start_service(home, nats_server.url, roles=["control", "projector"])
    nc = await connect([nats_server.url], name="test-hosted-recreate")
    js = nc.jetstream()
    store = JetStreamEventStore(nc, js)
    catalog = Catalog.load(home)
    maker = ExtensionWorker(js, store, catalog, hosted.new(), ack_wait=1)
    holding = hosted.new()
    hold = HeldTeardowns(holding)
    held = ExtensionWorker(js, store, catalog, holding, ack_wait=1)
    held.spec = Silent(**{**dataclasses.asdict(held.spec), "concurrency": 1})
    other = ExtensionWorker(js, store, catalog, hosted.new(), ack_wait=1)
    stops = asyncio.Event(), asyncio.Event(), asyncio.Event()
    workers = [asyncio.create_task(maker.run(stops[0]))]
    client = service.client
    try:
        await service.fund()
        sandbox_id = (await client.create(hosted.profile))["sandbox_id"]
        stops[0].set()
        await workers[0]  # generation 1 is ready; only the held worker takes the recreate
        workers.append(asyncio.create_task(held.run(stops[1])))
        await client.recreate(sandbox_id, wait=False)
        async with asyncio.timeout(30):
            await hold.held.wait()
        stops[1].set()  # the held worker fetches nothing more
        workers.append(asyncio.create_task(other.run(stops[2])))
        async with asyncio.timeout(30):
            while (await event_types(client, sandbox_id)).count("ready") < 2:
                await asyncio.sleep(0.05)
        hold.go.set()
        async with asyncio.timeout(HOLD * 4):
            await workers[1]  # the held worker goes on, and ends
        state = (await store.load(sandbox_id)).state
        assert (state.status, state.generation) == ("ready", 2)
        assert state.reachability is not None
        made: Any = state.reachability[hosted.provider_id]
        assert hosted.running(sandbox_id) == [made]
        assert "failed" not in await event_types(client, sandbox_id)
    finally:
        hold.go.set()
        for stop in stops:
            stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
        await hosted.aclose()
        await nc.drain()
        await client.close()
        await service.shutdown()


@pytest.mark.parametrize("hosted", ["ext.e2b"], indirect=True)
async def test_a_stale_provision_job_that_starts_a_recreate_removes_generation_1(
    nats_server: NatsServerProcess, home: Path, hosted: Hosted
) -> None:
    """The create's provision job, sent again, waits ahead of a recreate's job while no
    worker runs; picked up while the sandbox is `recreating`, it starts generation 2 itself
    (the recreate's own job then finds nothing to do). Generation 1's sandbox must go first,
    or on E2B (one id, any number of sandboxes) it runs on beside generation 2's."""
    service = await start_service(home, nats_server.url, roles=["control", "projector"])
    nc = await connect([nats_server.url], name="test-hosted-stale-provision")
    js = nc.jetstream()
    store = JetStreamEventStore(nc, js)
    catalog = Catalog.load(home)
    maker = ExtensionWorker(js, store, catalog, hosted.new(), ack_wait=5)
    later = ExtensionWorker(js, store, catalog, hosted.new(), ack_wait=5)
    later.spec = dataclasses.replace(later.spec, concurrency=1)  # the jobs in stream order
    stops = asyncio.Event(), asyncio.Event()
    workers = [asyncio.create_task(maker.run(stops[0]))]
    client = service.client
    try:
        await service.fund()
        sandbox_id = (await client.create(hosted.profile))["sandbox_id"]
        first = hosted.running(sandbox_id)
        assert len(first) == 1
        stops[0].set()
        await workers[0]  # no worker runs: the two jobs wait, the stale one first
        stale = await resend_provision_job(client, sandbox_id, "ext.e2b")
        await client.recreate(sandbox_id, wait=False)
        async with asyncio.timeout(30):
            while "recreating" not in await event_types(client, sandbox_id):
                await asyncio.sleep(0.05)
        workers.append(asyncio.create_task(later.run(stops[1])))
        async with asyncio.timeout(30):
            while (await event_types(client, sandbox_id)).count("ready") < 2:
                await asyncio.sleep(0.05)
        await consumer_idle(client, subjects.JOBS_STREAM, "ext-e2b")  # the recreate's too
        started = [e async for _, e in client.events(sandbox_id=sandbox_id)]
        _, second = [e for e in started if e["type"] == "provisioning"]
        assert second["causation_id"] == stale.job_id  # the recreate's job started nothing
        state = (await store.load(sandbox_id)).state
        assert (state.status, state.generation) == ("ready", 2)
        assert state.reachability is not None
        made: Any = state.reachability[hosted.provider_id]
        assert made not in first
        assert hosted.running(sandbox_id) == [made]
    finally:
        for stop in stops:
            stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
        await hosted.aclose()
        await nc.drain()
        await client.close()
        await service.shutdown()
