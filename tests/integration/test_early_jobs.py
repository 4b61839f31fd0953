"""A create's job goes out with its events, so its worker may have it before they are stored.

The control worker sends a create's provision job right after ``requested`` and ``routed``,
in the same round trip (docs/protocol.md#jobs). On a lone server the job's first append
reaches the events stream after them; elsewhere it may not, and the events may even be
refused after the job landed. These tests give a real extension worker, on a real
nats-server, a job whose events are not in the log: it waits for events that come, and
drops the job of a create that was given up, making nothing; and a job whose guessed
position another event took (its own events refused, others landed there) does not act on
its guess.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from sandboxer.bus.connect import connect
from sandboxer.bus.event_reader import last_sequence
from sandboxer.bus.event_store import Loaded, stamp
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.publish import publish_durably
from sandboxer.bus.streams import ensure_streams
from sandboxer.clock import utc_now
from sandboxer.config.catalog import Catalog
from sandboxer.domain.sandbox_state import SandboxState, fold
from sandboxer.events.types import (
    SandboxCreateAbandoned,
    SandboxRouted,
)
from sandboxer.extensions.local.backend import LocalExtension
from sandboxer.workers.extension_worker import ExtensionWorker
from sandboxer.workers.job_dispatch import job_message
from tests.integration.conftest import worker_running
from tests.integration.test_append_in_one_trip import ACTOR, decision, jobs_for

pytestmark = pytest.mark.integration


async def publish_job(
    store: JetStreamEventStore, state: SandboxState, last_seq: int, last_event: str = "e-routed"
) -> None:
    """The provision job the control worker would send with the events: the state they fold
    to, at the position the last of them is expected to land at, naming that event."""
    message = job_message(Loaded(state, last_seq, unconfirmed=last_event))
    assert message is not None
    subject, data, headers = message
    await publish_durably(store._js, subject, data, headers=headers)


@dataclasses.dataclass
class Bus:
    nc: Client
    js: JetStreamContext
    store: JetStreamEventStore
    extension: LocalExtension

    def worker(self, home: Path) -> ExtensionWorker:
        """An ext.local worker on this connection (run it with ``worker_running``)."""
        return ExtensionWorker(self.js, self.store, Catalog.load(home), self.extension, ack_wait=2)


@pytest.fixture
async def bus(nats_server: NatsServerProcess, home: Path) -> Bus:
    nc = await connect([nats_server.url], name="test-early-jobs")
    js = nc.jetstream()
    await ensure_streams(js)
    return Bus(nc, js, JetStreamEventStore(nc, js), LocalExtension(home / "local"))


async def jobs_waiting(store: JetStreamEventStore, sandbox_id: str) -> int:
    return len(await jobs_for(store, sandbox_id))


async def test_a_job_ahead_of_its_events_waits_for_them_and_then_provisions(
    bus: Bus, home: Path
) -> None:
    """The job is in its worker's hands before its create's events are stored: its first
    append expects a position the log has not reached, and the worker, reading the log,
    finds less than the job was made from. It waits (the job comes back) instead of taking
    the create for one that needs nothing; once the events land, the sandbox is made."""
    sandbox_id = "early0000000001"
    store, js = bus.store, bus.js
    try:
        async with worker_running(bus.worker(home), bus.nc):
            events = decision(sandbox_id)
            expected = await last_sequence(js) + 2
            appending = store.append(await store.load(sandbox_id), events)
            stamped = [stamp(event, version=n) for n, event in enumerate(events)]
            await publish_job(store, fold(sandbox_id, events), expected, stamped[-1].event_id)
            await asyncio.sleep(1.0)  # the worker has had the job, and waits
            assert (await store.load(sandbox_id)).state.version == 0
            assert await jobs_waiting(store, sandbox_id) == 1
            assert (await appending).last_seq == expected
            async with asyncio.timeout(20):
                while (await store.load(sandbox_id)).state.status != "ready":
                    await asyncio.sleep(0.1)
    finally:
        await bus.extension.teardown(sandbox_id)


async def test_the_job_of_a_create_given_up_is_dropped_and_makes_nothing(
    bus: Bus, home: Path
) -> None:
    """The create's events were refused after its job landed, and the create was given up
    since (``create_abandoned``: its id can never be created). The job is dropped: nothing
    provisioned, nothing appended, and it does not come back."""
    sandbox_id = "early0000000002"
    store = bus.store
    abandoned = SandboxCreateAbandoned(
        sandbox_id=sandbox_id,
        command_id=f"c-{sandbox_id}",
        actor=ACTOR,
        at=utc_now(),
        code="internal_error",
        reason="pytest: the create's append was refused",
    )
    given_up = await store.append(await store.load(sandbox_id), [abandoned])
    async with worker_running(bus.worker(home), bus.nc):
        await publish_job(store, fold(sandbox_id, decision(sandbox_id)), given_up.last_seq + 2)
        async with asyncio.timeout(20):
            while await jobs_waiting(store, sandbox_id):  # acked: gone from the work queue
                await asyncio.sleep(0.1)
        state = (await JetStreamEventStore(bus.nc, bus.js).load(sandbox_id)).state
        assert state.version == 1
        assert state.status == "new"
        assert not (home / "local" / sandbox_id).exists()


async def test_a_job_whose_guessed_position_another_event_took_reads_the_log(
    bus: Bus, home: Path
) -> None:
    """The job's own events were refused, and other events of its sandbox landed at the very
    positions it guessed (the create decided again, and routed elsewhere). Its position is
    right, its events are not: the worker's first append also expects the job's last event
    as the stream's last message, is refused, and the worker reads the log. It finds the
    sandbox routed to another backend and makes nothing."""
    sandbox_id = "early0000000003"
    store = bus.store
    guessed = await last_sequence(bus.js) + 2
    requested, routed = decision(sandbox_id)
    elsewhere = SandboxRouted(
        sandbox_id=sandbox_id,
        command_id=routed.command_id,
        actor=ACTOR,
        at=utc_now(),
        extension="ext.saas-stub",
        reason="pytest: decided again",
    )
    landed = await store.append(await store.load(sandbox_id), [requested, elsewhere])
    assert landed.last_seq == guessed
    async with worker_running(bus.worker(home), bus.nc):
        await publish_job(store, fold(sandbox_id, [requested, routed]), guessed, "e-refused")
        async with asyncio.timeout(20):
            while await jobs_waiting(store, sandbox_id):
                await asyncio.sleep(0.1)
        state = (await JetStreamEventStore(bus.nc, bus.js).load(sandbox_id)).state
        assert (state.version, state.status, state.extension) == (2, "routed", "ext.saas-stub")
        assert not (home / "local" / sandbox_id).exists()
