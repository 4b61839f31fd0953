"""A host's ``max_sandboxes`` holds under a burst of creates, on one control worker or several.

Placement read each host's live sandboxes from the route signals its create fetched
before it probed the hosts, and a create held its host only once its probe had answered:
every create of a burst fetched its signals while the others were still probing, saw the
same free place and took it. With two control workers, each counted only the routes it
held itself, so both took host1's last place: a place is now taken in the log, on the
host's own aggregate, under its expected sequence. Real nats-server, real sshd hosts,
ext.vm-packer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml

from sandboxer import subjects
from sandboxer.bus.connect import connect
from sandboxer.bus.event_store import LoadedPlaces
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.client import SandboxerClient
from sandboxer.commands.types import CreateSandbox, RestoreSnapshot
from sandboxer.config.catalog import Catalog
from sandboxer.domain.host_places import Place
from sandboxer.domain.sandbox_decide import AdmittedCreate, MarkFailed
from sandboxer.errors import CommandFailed
from sandboxer.workers.control import ControlWorker, DomainCommand
from sandboxer.workers.deciding import apply
from tests.integration.conftest import start_service
from tests.integration.remote_fixtures import SshHosts, write_hosts_file
from tests.integration.test_pause import events_of
from tests.ports import closed_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROFILE = """\
id: profile.vm-spill
route:
  strategy: explicit
  candidates: [ext.vm-packer]
network: {default: allow}
placement: {prefer: [host1], fallback: [host2]}
"""
ROLES = ["control", "projector", "ext.vm-packer"]


async def capped_hosts(home: Path, ssh_hosts: SshHosts) -> None:
    """Two sshd hosts, host1 holding one sandbox at most, and a profile preferring it."""
    hosts = await ssh_hosts(2)
    path = write_hosts_file(home / "hosts.yaml", hosts)
    document = yaml.safe_load(path.read_text())
    document["hosts"]["host1"]["max_sandboxes"] = 1
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    (home / "profiles").mkdir(parents=True, exist_ok=True)
    (home / "profiles" / "profile.vm-spill.yaml").write_text(PROFILE)


async def routed_of(client: SandboxerClient, sandbox_id: str) -> dict[str, Any]:
    [routed] = [e for e in await events_of(client, sandbox_id) if e["type"] == "routed"]
    return routed


async def both_pulling(url: str) -> None:
    """Wait until both control workers wait for commands, so a burst is shared between them."""
    nc = await nats.connect(url)
    try:
        async with asyncio.timeout(10):
            while True:
                info = await nc.jetstream().consumer_info(subjects.COMMANDS_STREAM, "control")
                if (info.num_waiting or 0) >= 2:
                    return
                await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def places_on(url: str, host: str) -> Mapping[str, Place]:
    """Who holds ``host``'s places, as the log says."""
    nc = await nats.connect(url)
    try:
        return (await JetStreamEventStore(nc, nc.jetstream()).load_places(host)).state.places
    finally:
        await nc.close()


async def view_shows_host1_free(client: SandboxerClient) -> None:
    """The view lags the log: a create sent before it shows host1's sandbox destroyed would
    be kept off host1 by the view's count, not by its place in the log."""
    async with asyncio.timeout(10):
        while True:
            signals = (await client.route_explain("profile.vm-spill"))["signals"]
            if signals["live_by_host"].get("ext.vm-packer", {}).get("host1", 0) == 0:
                return
            await asyncio.sleep(0.05)


async def test_a_burst_of_creates_fills_a_host_to_its_max_sandboxes_and_no_further(
    nats_server: Any, home: Path, ssh_hosts: SshHosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SANDBOXER_HOSTS", raising=False)
    await capped_hosts(home, ssh_hosts)
    service = await start_service(home, nats_server.url, ROLES)
    try:
        client = service.client
        burst = await asyncio.gather(*(client.create("profile.vm-spill") for _ in range(4)))
        placed = [(await routed_of(client, sandbox["sandbox_id"]))["host"] for sandbox in burst]
        assert sorted(placed) == ["host1", "host2", "host2", "host2"], placed
        skipped = [
            routed["reason"]
            for sandbox in burst
            for routed in [await routed_of(client, sandbox["sandbox_id"])]
            if routed["host"] == "host2"
        ]
        assert all("host1 is full (1 of its max_sandboxes 1)" in why for why in skipped), skipped
        for sandbox in burst:
            await client.destroy(sandbox["sandbox_id"])
    finally:
        await service.client.close()
        await service.shutdown()


async def test_two_control_workers_fill_a_host_to_its_max_sandboxes_and_no_further(
    nats_server: Any, home: Path, ssh_hosts: SshHosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each control worker held only its own routes; the view lags both, so a burst shared
    between them put two sandboxes on host1. Its place given back when its sandbox is
    destroyed, the next create takes it."""
    monkeypatch.delenv("SANDBOXER_HOSTS", raising=False)
    await capped_hosts(home, ssh_hosts)
    service = await start_service(home, nats_server.url, ROLES)
    second = await start_service(home, nats_server.url, ["control"])
    try:
        client = service.client
        await both_pulling(nats_server.url)
        burst = await asyncio.gather(*(client.create("profile.vm-spill") for _ in range(6)))
        placed = [(await routed_of(client, sandbox["sandbox_id"]))["host"] for sandbox in burst]
        assert sorted(placed) == ["host1"] + ["host2"] * 5, placed
        [on_host1] = [s for s, host in zip(burst, placed, strict=True) if host == "host1"]
        await client.destroy(on_host1["sandbox_id"])
        await view_shows_host1_free(client)
        again = await client.create("profile.vm-spill")
        routed = await routed_of(client, again["sandbox_id"])
        assert routed["host"] == "host1", routed["reason"]
        assert list(await places_on(nats_server.url, "host1")) == [again["sandbox_id"]]
        for sandbox in [*burst, again]:
            if sandbox is not on_host1:
                await client.destroy(sandbox["sandbox_id"])
    finally:
        await second.client.close()
        await second.shutdown()
        await service.client.close()
        await service.shutdown()


class CutOffAfterItsPlace(ControlWorker):
    """A control worker that dies once between a create's place in the log and its sandbox's
    append (the one step two aggregates cannot make atomic); ``meanwhile`` runs before the
    create is handled again, as after a kill -9 and its redelivery."""

    cut = False
    meanwhile: Callable[[], None] = staticmethod(lambda: None)

    async def _reserve(self, command: DomainCommand) -> DomainCommand:
        if isinstance(command, AdmittedCreate) and not self.cut:
            self.cut = True
            self.meanwhile()
            raise RuntimeError("injected: cut off between its place and its append")
        return await super()._reserve(command)


@pytest.fixture
async def cut_off(
    nats_server: Any, home: Path, ssh_hosts: SshHosts, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[SandboxerClient, CutOffAfterItsPlace]]:
    monkeypatch.delenv("SANDBOXER_HOSTS", raising=False)
    await capped_hosts(home, ssh_hosts)
    service = await start_service(home, nats_server.url, ["projector", "ext.vm-packer"])
    nc = await connect([nats_server.url], name="test-control", long_lived=False)
    js = nc.jetstream()
    control = CutOffAfterItsPlace(
        js, JetStreamEventStore(nc, js), Catalog.load(home), service.settings, nc=nc
    )
    stop = asyncio.Event()
    task = asyncio.create_task(control.run(stop))
    try:
        yield service.client, control
    finally:
        stop.set()
        await asyncio.wait([task], timeout=30)
        await nc.close()
        await service.client.close()
        await service.shutdown()


async def test_a_create_cut_off_after_its_place_keeps_that_one_place_when_sent_again(
    cut_off: tuple[SandboxerClient, CutOffAfterItsPlace], nats_server: Any
) -> None:
    client, _control = cut_off
    first = await client.create("profile.vm-spill")
    assert (await routed_of(client, first["sandbox_id"]))["host"] == "host1"
    assert list(await places_on(nats_server.url, "host1")) == [first["sandbox_id"]]
    second = await client.create("profile.vm-spill")
    assert (await routed_of(client, second["sandbox_id"]))["host"] == "host2"
    for sandbox in (first, second):
        await client.destroy(sandbox["sandbox_id"])


async def test_a_create_refused_after_its_place_gives_its_id_up_and_the_place_back(
    cut_off: tuple[SandboxerClient, CutOffAfterItsPlace], nats_server: Any, home: Path
) -> None:
    """Cut off after its place, and refused when sent again (host1 stopped answering and
    host2 was drained meanwhile): its sandbox has no events, which would hold the place for
    ever. The id is given up, then the place; host1 back, the next create takes it."""
    client, control = cut_off
    path = home / "hosts.yaml"
    as_it_was = path.read_text()

    def hosts_down() -> None:
        document = yaml.safe_load(as_it_was)
        document["hosts"]["host1"]["port"] = closed_port()
        document["hosts"]["host2"]["max_sandboxes"] = 0
        path.write_text(yaml.safe_dump(document, sort_keys=False))

    control.meanwhile = hosts_down
    with pytest.raises(CommandFailed) as refused:
        await client.create("profile.vm-spill", command_id="cutoffcreate1")
    # no_route: routing already sees no host with room (host1's from this worker's own hold
    # of the create's first delivery); no_host when placement finds host1 down.
    assert refused.value.event["code"] in {"no_route", "no_host"}, refused.value.event
    sandbox_id = refused.value.event["sandbox_id"]
    async with asyncio.timeout(10):  # given back after the rejection is recorded
        while await places_on(nats_server.url, "host1"):
            await asyncio.sleep(0.05)
    events = await events_of(client, sandbox_id)
    kinds = [e["type"] for e in events]
    assert kinds == ["place_taken", "rejected", "create_abandoned", "place_freed"], kinds
    path.write_text(as_it_was)
    again = await client.create("profile.vm-spill")
    assert (await routed_of(client, again["sandbox_id"]))["host"] == "host1"
    await client.destroy(again["sandbox_id"])


async def failed_in_the_log(url: str, client: SandboxerClient, sandbox_id: str) -> None:
    """Failed as a job's failure fails it, and shown so by the view (where it counts no more)."""
    nc = await nats.connect(url)
    try:
        store = JetStreamEventStore(nc, nc.jetstream())
        await apply(store, sandbox_id, MarkFailed(job_id="test", stage="job", reason="(test)"))
    finally:
        await nc.close()
    async with asyncio.timeout(10):
        while (await client.get(sandbox_id) or {}).get("status") != "failed":
            await asyncio.sleep(0.05)


async def test_a_recreate_of_a_failed_sandbox_takes_a_place_on_its_host(
    nats_server: Any, home: Path, ssh_hosts: SshHosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed sandbox holds its place no longer: the next create that found host1 full
    took it. Its recreate, which keeps the host, took none, and host1 held two sandboxes
    for its max_sandboxes 1. It is refused now while host1 is full, and once there is room
    it takes the place, so the next create goes to host2."""
    monkeypatch.delenv("SANDBOXER_HOSTS", raising=False)
    await capped_hosts(home, ssh_hosts)
    service = await start_service(home, nats_server.url, ROLES)
    try:
        client = service.client
        first = await client.create("profile.vm-spill")
        failed_id = first["sandbox_id"]
        assert (await routed_of(client, failed_id))["host"] == "host1"
        await failed_in_the_log(nats_server.url, client, failed_id)
        second = await client.create("profile.vm-spill")
        assert (await routed_of(client, second["sandbox_id"]))["host"] == "host1"
        with pytest.raises(CommandFailed) as refused:
            await client.recreate(failed_id)
        assert refused.value.event["code"] == "no_host", refused.value.event
        assert "1 of its max_sandboxes 1" in refused.value.event["reason"]
        assert list(await places_on(nats_server.url, "host1")) == [second["sandbox_id"]]
        await client.destroy(second["sandbox_id"])
        await client.recreate(failed_id, command_id="recreatefailed1")
        places = await places_on(nats_server.url, "host1")
        assert list(places) == [failed_id]
        assert places[failed_id].taken_by == "recreatefailed1"
        third = await client.create("profile.vm-spill")
        routed = await routed_of(client, third["sandbox_id"])
        assert routed["host"] == "host2", routed["reason"]
        for sandbox_id in (failed_id, third["sandbox_id"]):
            await client.destroy(sandbox_id)
    finally:
        await service.client.close()
        await service.shutdown()


class CountingStore(JetStreamEventStore):
    places_loaded = 0

    async def load_places(self, host: str) -> LoadedPlaces:
        self.places_loaded += 1
        return await super().load_places(host)


class PlacesReadOnRefusal(ControlWorker):
    """Records how many hosts' places each refused create's give-up read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read: dict[str, int] = {}

    async def _give_up_places(
        self, sandbox_id: str, create: CreateSandbox | RestoreSnapshot, code: str, reason: str
    ) -> None:
        store = self._store
        assert isinstance(store, CountingStore)
        before = store.places_loaded
        await super()._give_up_places(sandbox_id, create, code, reason)
        self.read[sandbox_id] = store.places_loaded - before


async def test_a_refused_create_of_an_id_with_events_reads_no_places(
    nats_server: Any, home: Path, ssh_hosts: SshHosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create takes its place before its sandbox's requested, so one refused on an id with
    events has none to give back (its sandbox's are that sandbox's): the hosts file and each
    capped host's places were read for every refused create all the same. One refused on
    an id with no events still reads them."""
    monkeypatch.delenv("SANDBOXER_HOSTS", raising=False)
    await capped_hosts(home, ssh_hosts)
    service = await start_service(home, nats_server.url, ["projector", "ext.vm-packer"])
    nc = await connect([nats_server.url], name="test-control", long_lived=False)
    js = nc.jetstream()
    store = CountingStore(nc, js)
    control = PlacesReadOnRefusal(js, store, Catalog.load(home), service.settings, nc=nc)
    stop = asyncio.Event()
    task = asyncio.create_task(control.run(stop))
    try:
        client = service.client
        first = await client.create("profile.vm-spill")
        taken = first["sandbox_id"]
        with pytest.raises(CommandFailed):
            await client.create("profile.nope", sandbox_id=taken)
        with pytest.raises(CommandFailed):
            await client.create("profile.nope")
        async with asyncio.timeout(10):  # given up after the rejection is recorded
            while len(control.read) < 2:
                await asyncio.sleep(0.05)
        assert control.read.pop(taken) == 0, control.read
        assert list(control.read.values()) == [1]  # the fresh id's: host1's places
        await client.destroy(taken)
    finally:
        stop.set()
        await asyncio.wait([task], timeout=30)
        await nc.close()
        await service.client.close()
        await service.shutdown()
