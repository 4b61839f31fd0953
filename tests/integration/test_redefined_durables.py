"""A client redefining a service durable on the events stream through the bare
``$JS.API.CONSUMER.CREATE.SANDBOXER_EVENTS`` subject, which the permissions must allow for
ordered consumers (docs/security.md#durables-clients-could-redefine): the service's
durables skip nothing for it, under the embedded server's permissions; and the guard's
looks, in a task beside the loop, hold no fetch back."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo
from nats.js.errors import NotFoundError

from sandboxer import subjects
from sandboxer.bus import guarded_durable
from sandboxer.bus.connect import connect
from sandboxer.bus.guarded_durable import GuardedDurable
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_auth import AUTH_DIR_NAME, ensure_embedded_auth, read_credentials
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.remake_marker import RemakeMarker, marker_file
from sandboxer.bus.streams import ensure_streams
from sandboxer.errors import BusError
from sandboxer.events.types import Actor, SandboxRequested
from sandboxer.statehub.follower import DURABLE, StateHubFollower
from sandboxer.workers.meter_worker import DESTROYED
from sandboxer.workers.pull_loop import ConsumerSpec, run_pull_consumer
from tests.integration.test_statehub import Hub
from tests.waiting import until

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


async def made(js: JetStreamContext, durable: str) -> ConsumerInfo | None:
    """The durable's info; None between a remake's delete and its create (the guard remakes
    in a task of its own, whenever its look comes)."""
    try:
        return await js.consumer_info(subjects.EVENTS_STREAM, durable)
    except NotFoundError:
        return None


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

    def __init__(self, nc: Client, spec: ConsumerSpec, home: Path) -> None:
        self.seen: set[str] = set()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(
            run_pull_consumer(
                nc.jetstream(), spec, self._handle, self._poison, self._stop, nc=nc, home=home
            )
        )

    async def _handle(self, msg: Msg) -> None:
        self.seen.add(msg.subject.split(".")[3])  # acked by the loop

    async def _poison(self, msg: Msg, exc: BaseException) -> None:
        raise AssertionError(f"nothing fails here: {exc}")

    async def stop(self) -> None:
        self._stop.set()
        await self._task


@contextlib.asynccontextmanager
async def running_meter(nc: Client, check_every: float, home: Path) -> AsyncIterator[Meter]:
    meter = Meter(nc, meter_spec(check_every), home)
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
    identities: tuple[Client, Client], tmp_path: Path
) -> None:
    service, client = identities
    js = service.jetstream()
    async with running_meter(service, check_every=0.5, home=tmp_path) as meter:
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
            while (info := await made(js, "meter")) is None or info.config.durable_name != "meter":
                await asyncio.sleep(0.1)
        assert info.config.filter_subject == DESTROYED


async def test_a_meter_that_starts_on_a_redefined_durable_meters_what_it_skipped(
    identities: tuple[Client, Client], tmp_path: Path
) -> None:
    service, client = identities
    async with running_meter(service, check_every=3600, home=tmp_path) as meter:  # no look
        await destroyed(service, "sbx1")
        await until(lambda: meter.seen == {"sbx1"}, 5)
        await redefine(client, "meter", NARROWED)
        await destroyed(service, "sbx2")
        await asyncio.sleep(1.0)  # fetched past, and so skipped, by the narrowed durable
        assert meter.seen == {"sbx1"}

    async with running_meter(service, check_every=3600, home=tmp_path) as restarted:
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


@dataclass
class Follower:
    """The State Hub role's follower, running."""

    follower: StateHubFollower
    task: asyncio.Task[None]
    hub: Hub

    def sent(self) -> set[str]:
        return {body["sandbox_id"] for body in self.hub.stored}


@contextlib.asynccontextmanager
async def following(
    service: Client, hub: Hub, home: Path, check_every: float
) -> AsyncIterator[Follower]:
    follower = StateHubFollower(
        service,
        service.jetstream(),
        url=hub.url,
        token_ref=None,
        home=home,
        check_every=check_every,
    )
    stop = asyncio.Event()
    running = Follower(follower, asyncio.create_task(follower.run(stop)), hub)
    try:
        yield running
    finally:
        stop.set()
        await running.task
        await follower.aclose()


async def test_a_client_redefining_the_state_hubs_durable_loses_the_hub_no_event(
    identities: tuple[Client, Client], hub: Hub, tmp_path: Path
) -> None:
    service, client = identities
    async with following(service, hub, tmp_path, check_every=0.5) as role:
        await requested(service, "sbxhubhubhubhub01")
        await until(lambda: role.sent() == {"sbxhubhubhubhub01"}, 10)
        await redefine(client, DURABLE, NARROWED)
        await requested(service, "sbxhubhubhubhub02")
        await asyncio.sleep(1.0)
        await redefine(client, DURABLE, subjects.EVENTS)
        await requested(service, "sbxhubhubhubhub03")
        await until(lambda: len(role.sent()) == 3, 10)


class HeldLooks:
    """A bus slow to answer the guard: while ``holding``, a look at ``durable``
    (``consumer_info``) waits until the block ends before the real server is asked. Nothing
    else is slowed: a loop that fetches only between looks stops with the look."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, durable: str) -> None:
        self.holding = False
        self.waiting = asyncio.Event()
        """A look is being held."""
        self._released = asyncio.Event()
        answer = JetStreamContext.consumer_info

        async def consumer_info(
            js: JetStreamContext, stream: str, consumer: str, *args: Any, **kwargs: Any
        ) -> Any:
            if self.holding and consumer == durable:
                self.waiting.set()
                await self._released.wait()
            return await answer(js, stream, consumer, *args, **kwargs)

        monkeypatch.setattr(JetStreamContext, "consumer_info", consumer_info)

    async def hold(self) -> None:
        """Hold the looks from now on, and wait for the first to be held."""
        self.holding = True
        async with asyncio.timeout(5):
            await self.waiting.wait()

    async def __aenter__(self) -> HeldLooks:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.holding = False
        self._released.set()  # before the loop is stopped: its end waits for a look under way


def guard_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("guard of ")]


async def test_a_look_the_bus_is_slow_to_answer_holds_no_meter_fetch_back(
    identities: tuple[Client, Client], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    service, _client = identities
    async with (
        running_meter(service, check_every=0.1, home=tmp_path) as meter,
        HeldLooks(monkeypatch, "meter") as looks,
    ):
        await destroyed(service, "sbx1")
        await until(lambda: meter.seen == {"sbx1"}, 5)
        await looks.hold()  # and the look is never answered while the meter runs
        await destroyed(service, "sbx2")
        await until(lambda: meter.seen == {"sbx1", "sbx2"}, 3)
        assert len(guard_tasks()) == 1  # the look waits in a task beside the loop
    assert guard_tasks() == []  # stopped with the loop


async def test_a_look_the_bus_is_slow_to_answer_holds_no_state_hub_fetch_back(
    identities: tuple[Client, Client], hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, _client = identities
    async with (
        following(service, hub, tmp_path, check_every=0.1) as role,
        HeldLooks(monkeypatch, DURABLE) as looks,
    ):
        await requested(service, "sbxhubhubhubhub01")
        await until(lambda: role.sent() == {"sbxhubhubhubhub01"}, 10)
        await looks.hold()
        await requested(service, "sbxhubhubhubhub02")
        await until(lambda: len(role.sent()) == 2, 3)
    assert guard_tasks() == []


async def test_the_state_hub_fetches_on_through_its_durable_being_made_again(
    identities: tuple[Client, Client], hub: Hub, tmp_path: Path
) -> None:
    """Between a remake's delete and its create (by another of the service's processes, or
    by this one's guard) a fetch fails with "no responders": a transient failure, not the
    end of the role."""
    service, _client = identities
    async with following(service, hub, tmp_path, check_every=3600) as role:  # no look
        await requested(service, "sbxhubhubhubhub01")
        await until(lambda: role.sent() == {"sbxhubhubhubhub01"}, 10)
        await service.jetstream().delete_consumer(subjects.EVENTS_STREAM, DURABLE)
        await asyncio.sleep(1.5)  # fetches from no durable: three, one every IDLE_POLL
        assert not role.task.done(), role.task
        await role.follower.ensure_consumer()  # made again (from the start: no floor seen)
        await requested(service, "sbxhubhubhubhub02")
        await until(lambda: "sbxhubhubhubhub02" in role.sent(), 10)


async def test_an_ack_from_before_a_remake_moves_the_new_durable_past_nothing(
    identities: tuple[Client, Client], tmp_path: Path
) -> None:
    """What a remake racing the loop's acks rests on (bus/guarded_durable.py): the ack, nak
    or term of a message the old durable delivered reaches the new one of that name, which
    has not delivered it yet, and must not start it after it."""
    service, client = identities
    js = service.jetstream()
    wanted = ConsumerConfig(
        durable_name="meter",
        name="meter",
        filter_subject=DESTROYED,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30,
        max_deliver=-1,
    )
    guard = GuardedDurable(service, subjects.EVENTS_STREAM, wanted, home=tmp_path)
    await guard.ensure()
    await destroyed(service, "sbx1", "sbx2", "sbx3", "sbx4")
    psub = await js.pull_subscribe_bind(durable="meter", stream=subjects.EVENTS_STREAM)
    first, *in_hand = [(await psub.fetch(1, timeout=2))[0] for _ in range(4)]
    await first.ack_sync()
    await guard.check()  # intact: its floor is the first
    await redefine(client, "meter", NARROWED)
    await guard.check()  # made again, after the first
    for settle in (in_hand[0].ack, in_hand[1].nak, in_hand[2].term):
        await settle()
    await service.flush()
    again = []
    for _ in range(3):
        msg = (await psub.fetch(1, timeout=2))[0]
        again.append(msg.subject.split(".")[3])
        await msg.ack_sync()
    assert again == ["sbx2", "sbx3", "sbx4"]
    await psub.unsubscribe()


class Looks:
    """The ack floor of the last look that found ``durable`` intact (the floor its guard
    remembers from then on)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, durable: str) -> None:
        self.floor = 0
        answer = JetStreamContext.consumer_info

        async def consumer_info(
            js: JetStreamContext, stream: str, consumer: str, *args: Any, **kwargs: Any
        ) -> Any:
            info = await answer(js, stream, consumer, *args, **kwargs)
            if consumer == durable and info.config.durable_name == durable and info.ack_floor:
                self.floor = max(self.floor, info.ack_floor.stream_seq or 0)
            return info

        monkeypatch.setattr(JetStreamContext, "consumer_info", consumer_info)


class CutRemakes:
    """A remake cut between its delete and its create: while ``cutting``, the guard's creates
    fail, and the test then stops the role, as a process killed there would have."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cutting = False
        self.cut = asyncio.Event()
        create = guarded_durable.create_consumer

        async def create_consumer(
            nc: Client, stream: str, config: ConsumerConfig, **kwargs: Any
        ) -> str | None:
            if self.cutting:
                self.cut.set()
                raise BusError("the process is killed here")
            return await create(nc, stream, config, **kwargs)

        monkeypatch.setattr(guarded_durable, "create_consumer", create_consumer)

    async def remake_cut_short(self, client: Client, durable: str) -> None:
        """Have the running role's guard remake its durable (a client redefines it), and cut
        that remake after its delete."""
        self.cutting = True
        await redefine(client, durable, NARROWED)
        async with asyncio.timeout(5):
            await self.cut.wait()


async def test_a_meter_whose_remake_was_cut_short_starts_after_its_floor(
    identities: tuple[Client, Client], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    service, client = identities
    js = service.jetstream()
    looks, cuts = Looks(monkeypatch, "meter"), CutRemakes(monkeypatch)
    async with running_meter(service, check_every=0.1, home=tmp_path) as meter:
        await destroyed(service, "sbx1", "sbx2")
        await until(lambda: meter.seen == {"sbx1", "sbx2"}, 5)
        await until(lambda: looks.floor == 2, 5)  # a look found both handled
        await cuts.remake_cut_short(client, "meter")
        assert await made(js, "meter") is None
    kept = json.loads(marker_file(tmp_path, "meter").read_text())
    assert kept["floor"] == 2
    assert kept["stream_created"]  # the stream's incarnation, which the server gives
    cuts.cutting = False
    await destroyed(service, "sbx3")

    async with running_meter(service, check_every=3600, home=tmp_path) as restarted:
        await until(lambda: "sbx3" in restarted.seen, 10)
    assert restarted.seen == {"sbx3"}  # not the whole log again
    info = await made(js, "meter")
    assert info is not None
    assert info.config.opt_start_seq == 3
    assert not marker_file(tmp_path, "meter").exists()  # the durable keeps its floor again


async def test_a_client_filling_the_gap_of_a_cut_remake_moves_the_meters_floor_nowhere(
    identities: tuple[Client, Client], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """While the durable is gone, a client creates its own ``meter`` starting far ahead,
    with a floor in its metadata: the next start goes by the floor the service kept."""
    service, client = identities
    looks, cuts = Looks(monkeypatch, "meter"), CutRemakes(monkeypatch)
    async with running_meter(service, check_every=0.1, home=tmp_path) as meter:
        await destroyed(service, "sbx1")
        await until(lambda: meter.seen == {"sbx1"}, 5)
        await until(lambda: looks.floor == 1, 5)
        await cuts.remake_cut_short(client, "meter")
    cuts.cutting = False
    request = {
        "stream_name": subjects.EVENTS_STREAM,
        "config": {
            "name": "meter",
            "filter_subject": DESTROYED,
            "ack_policy": "explicit",
            "deliver_policy": "by_start_sequence",
            "opt_start_seq": 1000,
            "metadata": {"floor": "999"},
        },
    }
    reply = await client.request(
        f"$JS.API.CONSUMER.CREATE.{subjects.EVENTS_STREAM}", json.dumps(request).encode()
    )
    assert "error" not in json.loads(reply.data)
    await destroyed(service, "sbx2")

    async with running_meter(service, check_every=3600, home=tmp_path) as restarted:
        await until(lambda: "sbx2" in restarted.seen, 10)
    assert restarted.seen == {"sbx2"}


async def test_a_state_hub_whose_remake_was_cut_short_sends_nothing_twice(
    identities: tuple[Client, Client], hub: Hub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    service, client = identities
    looks, cuts = Looks(monkeypatch, DURABLE), CutRemakes(monkeypatch)
    async with following(service, hub, tmp_path, check_every=0.1) as role:
        await requested(service, "sbxhubhubhubhub01")
        await until(lambda: role.sent() == {"sbxhubhubhubhub01"}, 10)
        await until(lambda: looks.floor == 1, 5)
        await cuts.remake_cut_short(client, DURABLE)
    cuts.cutting = False
    await requested(service, "sbxhubhubhubhub02")

    async with following(service, hub, tmp_path, check_every=3600) as restarted:
        await until(lambda: "sbxhubhubhubhub02" in restarted.sent(), 10)
    assert [body["sandbox_id"] for body in hub.stored] == [
        "sbxhubhubhubhub01",
        "sbxhubhubhubhub02",
    ]


async def test_a_marker_left_after_the_durable_was_made_is_dropped_unread(
    identities: tuple[Client, Client], tmp_path: Path
) -> None:
    """A process killed after its create and before removing the marker: the next start
    finds the durable made, and goes by its floor; the marker would otherwise be read the
    day an operator deletes the durable to have the log read again from its start. (The
    durable was made after the kept floor, so its ack floor is at least that: a marker
    above it would be left, as one of a remake in flight.)"""
    service, _client = identities
    js = service.jetstream()
    wanted = ConsumerConfig(
        durable_name="meter",
        name="meter",
        filter_subject=DESTROYED,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=5.0,
        max_deliver=-1,
        max_ack_pending=256,
    )
    await GuardedDurable(service, subjects.EVENTS_STREAM, wanted, home=tmp_path).ensure()
    await destroyed(service, "sbx1", "sbx2")
    await handled(js, 2)
    before = await made(js, "meter")
    stream = await js.stream_info(subjects.EVENTS_STREAM)
    assert before is not None
    assert stream.created is not None
    marker = marker_file(tmp_path, "meter")
    RemakeMarker(marker, subjects.EVENTS_STREAM).keep(2, stream.created.isoformat())
    await GuardedDurable(service, subjects.EVENTS_STREAM, wanted, home=tmp_path).ensure()
    assert not marker.exists()
    after = await made(js, "meter")
    assert after is not None
    assert after.created == before.created  # intact, and so not made again


def meter_wanted() -> ConsumerConfig:
    return ConsumerConfig(
        durable_name="meter",
        name="meter",
        filter_subject=DESTROYED,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=5.0,
        max_deliver=-1,
        max_ack_pending=256,
    )


async def handled(js: JetStreamContext, count: int) -> None:
    """The meter handles (acknowledges) the next ``count`` events of its durable."""
    psub = await js.pull_subscribe_bind(durable="meter", stream=subjects.EVENTS_STREAM)
    for msg in await psub.fetch(count, timeout=2):
        await msg.ack_sync()
    await psub.unsubscribe()


async def test_a_remake_that_lost_the_race_leaves_no_floor_behind(
    identities: tuple[Client, Client], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two processes on one home (two meters) find their durable gone at once (a third's
    remake cut short, an operator deleting it). The first makes it again and removes the
    marker; the second, whose look came first, keeps its floor after that and is refused its
    create. Its next look, finding the durable intact, removes that floor; before, it took
    markers as dealt with for good and left it there, so the day the roles were stopped and
    the durable deleted for the log to be read again from its start, the start made it from
    that stale floor instead."""
    service, _client = identities
    js = service.jetstream()
    first = GuardedDurable(service, subjects.EVENTS_STREAM, meter_wanted(), home=tmp_path)
    second = GuardedDurable(service, subjects.EVENTS_STREAM, meter_wanted(), home=tmp_path)
    await first.ensure()
    await destroyed(service, "sbx1", "sbx2")
    await handled(js, 1)
    await first.check()
    await second.ensure()
    await handled(js, 1)
    await first.check()
    # Their floors differ (the first looked last), so their creates do: the second's is
    # refused (one the same as the durable made would be taken for it).
    assert (first.floor, second.floor) == (2, 1)
    await js.delete_consumer(subjects.EVENTS_STREAM, "meter")

    # The second's look finds it missing; the first's whole remake comes before the second
    # keeps its floor and sends its create.
    armed = True
    answer = JetStreamContext.consumer_info

    async def consumer_info(js: JetStreamContext, *args: Any, **kwargs: Any) -> Any:
        nonlocal armed
        try:
            return await answer(js, *args, **kwargs)
        except NotFoundError:
            if armed:
                armed = False
                await first.check()
            raise

    monkeypatch.setattr(JetStreamContext, "consumer_info", consumer_info)
    marker = marker_file(tmp_path, "meter")
    await second.check()
    assert not armed
    assert marker.exists()  # the loser's floor, kept after the winner removed the marker
    info = await made(js, "meter")
    assert info is not None
    assert info.config.opt_start_seq == 3  # the first made it

    await second.check()
    await first.check()
    assert not marker.exists()  # found intact: the loser's floor is dropped

    # The roles stopped, an operator deletes the durable to have the log read again.
    await js.delete_consumer(subjects.EVENTS_STREAM, "meter")
    await GuardedDurable(service, subjects.EVENTS_STREAM, meter_wanted(), home=tmp_path).ensure()
    info = await made(js, "meter")
    assert info is not None
    assert info.config.opt_start_seq is None  # from the start of the log
    assert info.num_pending == 2


async def test_a_running_guard_makes_its_durable_from_a_floor_another_process_kept(
    identities: tuple[Client, Client], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two processes on one home; the first has seen a later floor than the second. Its
    remake is cut after its delete (killed there), with that floor on disk; the second,
    running, finds the durable gone and makes it from the floor kept, not from its own older
    one. Before, having dealt with markers once, it never read one again, and the meter was
    sent again what the first had seen handled."""
    service, client = identities
    js = service.jetstream()
    cuts = CutRemakes(monkeypatch)
    first = GuardedDurable(service, subjects.EVENTS_STREAM, meter_wanted(), home=tmp_path)
    second = GuardedDurable(service, subjects.EVENTS_STREAM, meter_wanted(), home=tmp_path)
    await first.ensure()
    await destroyed(service, "sbx1", "sbx2", "sbx3")
    await handled(js, 1)
    await first.check()
    await second.ensure()
    await handled(js, 1)
    await first.check()
    assert (first.floor, second.floor) == (2, 1)

    cuts.cutting = True
    await redefine(client, "meter", NARROWED)
    await first.check()  # deleted, its create cut: the first is killed there
    assert cuts.cut.is_set()
    assert await made(js, "meter") is None
    cuts.cutting = False

    await second.check()
    info = await made(js, "meter")
    assert info is not None
    assert info.config.opt_start_seq == 3  # after the floor the first kept, not the second's
    assert info.num_pending == 1
    assert not marker_file(tmp_path, "meter").exists()


async def test_a_look_during_another_process_remake_leaves_its_floor_on_disk(
    identities: tuple[Client, Client], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The first process remembers floor 2; the durable, made again by a third from floor 1,
    has handled up to 1 when the first, starting with other settings, makes it again: it
    keeps its floor on disk, and the second, just started, looks between that and the
    first's delete, finding the durable intact. The first is killed after its delete. The
    second, restarted, makes the durable from the first's floor. Before, the second's look
    removed the marker (any marker beside an intact durable was stale to it) and the restart
    made the durable from the start of the log."""
    service, client = identities
    js = service.jetstream()
    cuts = CutRemakes(monkeypatch)
    first = GuardedDurable(service, subjects.EVENTS_STREAM, meter_wanted(), home=tmp_path)
    third = GuardedDurable(service, subjects.EVENTS_STREAM, meter_wanted(), home=tmp_path)
    await first.ensure()
    await destroyed(service, "sbx1", "sbx2", "sbx3")
    await handled(js, 1)
    await third.ensure()
    await handled(js, 1)
    await first.check()
    assert (first.floor, third.floor) == (2, 1)
    await redefine(client, "meter", NARROWED)
    await third.check()  # made again from its floor, before the first looked
    info = await made(js, "meter")
    assert info is not None
    assert info.config.opt_start_seq == 2
    assert info.ack_floor is not None
    assert info.ack_floor.stream_seq == 1

    marker = marker_file(tmp_path, "meter")
    first.wanted = meter_wanted().evolve(ack_wait=6.0)  # restarted, say, by an upgrade
    second = GuardedDurable(service, subjects.EVENTS_STREAM, meter_wanted(), home=tmp_path)
    looked = False
    delete = JetStreamContext.delete_consumer

    async def delete_consumer(js: JetStreamContext, *args: Any, **kwargs: Any) -> Any:
        nonlocal looked
        if not looked:
            looked = True
            assert json.loads(marker.read_text())["floor"] == 2  # the first's, kept
            await second.ensure()  # finds the durable intact, ack floor 1
            assert json.loads(marker.read_text())["floor"] == 2  # above it: left
        return await delete(js, *args, **kwargs)

    monkeypatch.setattr(JetStreamContext, "delete_consumer", delete_consumer)
    cuts.cutting = True
    with pytest.raises(BusError):
        await first.ensure()  # deleted, its create cut: the first is killed there
    assert looked
    assert cuts.cut.is_set()
    cuts.cutting = False
    assert await made(js, "meter") is None
    assert json.loads(marker.read_text())["floor"] == 2  # left by the second's look

    restarted = GuardedDurable(service, subjects.EVENTS_STREAM, meter_wanted(), home=tmp_path)
    await restarted.ensure()
    info = await made(js, "meter")
    assert info is not None
    assert info.config.opt_start_seq == 3  # after the first's floor, not the start of the log
    assert info.num_pending == 1
    assert not marker.exists()


async def test_a_floor_removed_by_a_look_before_the_delete_is_kept_again_after_it(
    identities: tuple[Client, Client], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As above, but the first's floor is the durable's own ack floor (it starts with other
    settings, and makes the durable again from the floor it just read): the second's look
    between its keep and its delete may remove it (the durable has handled that far). The
    first keeps it again after the delete, so with the first killed there and the second
    restarted the durable is still made from that floor, not from the start of the log."""
    service, _client = identities
    js = service.jetstream()
    cuts = CutRemakes(monkeypatch)
    await GuardedDurable(service, subjects.EVENTS_STREAM, meter_wanted(), home=tmp_path).ensure()
    await destroyed(service, "sbx1", "sbx2", "sbx3")
    await handled(js, 2)

    marker = marker_file(tmp_path, "meter")
    upgraded = meter_wanted().evolve(ack_wait=6.0)
    first = GuardedDurable(service, subjects.EVENTS_STREAM, upgraded, home=tmp_path)
    second = GuardedDurable(service, subjects.EVENTS_STREAM, meter_wanted(), home=tmp_path)
    looked = False
    delete = JetStreamContext.delete_consumer

    async def delete_consumer(js: JetStreamContext, *args: Any, **kwargs: Any) -> Any:
        nonlocal looked
        if not looked:
            looked = True
            assert json.loads(marker.read_text())["floor"] == 2  # the first's, kept
            await second.ensure()  # intact, ack floor 2: the floor is its own, and goes
            assert not marker.exists()
        return await delete(js, *args, **kwargs)

    monkeypatch.setattr(JetStreamContext, "delete_consumer", delete_consumer)
    cuts.cutting = True
    with pytest.raises(BusError):
        await first.ensure()  # deleted, its create cut: the first is killed there
    assert looked
    assert cuts.cut.is_set()
    cuts.cutting = False
    assert await made(js, "meter") is None
    assert json.loads(marker.read_text())["floor"] == 2  # kept again after the delete

    restarted = GuardedDurable(service, subjects.EVENTS_STREAM, meter_wanted(), home=tmp_path)
    await restarted.ensure()
    info = await made(js, "meter")
    assert info is not None
    assert info.config.opt_start_seq == 3  # after the first's floor, not the start of the log
    assert info.num_pending == 1
    assert not marker.exists()
