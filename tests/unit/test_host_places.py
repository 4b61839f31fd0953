"""A host's places: taken under the host's own history, freed once, given up with a refused create.

Two control workers each counted only the routes they held themselves beside a lagging
view, so both took a host's last place (test_host_capacity has the real two-worker
burst). The pure rules, and the worker's steps on the in-memory twin of the store.
"""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

from sandboxer.bus.event_store import Loaded, LoadedPlaces
from sandboxer.bus.memory_store import MemoryEventStore
from sandboxer.clock import utc_now
from sandboxer.commands.types import CreateSandbox, DestroySandbox, RecreateSandbox
from sandboxer.config.hosts import HostConfig
from sandboxer.domain.host_places import (
    STRANDED_SECONDS,
    FreePlace,
    HostPlaces,
    Place,
    TakePlace,
    decide_places,
    evolve_places,
    may_hold_places,
    place_given_up,
    place_stranded,
)
from sandboxer.domain.sandbox_decide import (
    AdmittedCreate,
    FinishTeardown,
    MarkFailed,
    MarkReady,
    StartProvisioning,
)
from sandboxer.domain.sandbox_state import SandboxState
from sandboxer.domain.timestamps import shift
from sandboxer.errors import Rejected
from sandboxer.events.place_events import PlaceEvent, PlaceFreed, PlaceTaken
from sandboxer.events.types import SYSTEM_ACTOR, Actor
from sandboxer.workers.deciding import apply, apply_places
from sandboxer.workers.host_places import (
    apply_recreate,
    give_up_places,
    take_place,
    take_recreate_place,
)

VM = "ext.vm-packer"


def take(sandbox_id: str, limit: int = 1, extension: str = VM) -> TakePlace:
    return TakePlace(
        command_id=f"c-{sandbox_id}",
        actor=SYSTEM_ACTOR,
        sandbox_id=sandbox_id,
        extension=extension,
        limit=limit,
    )


def folded(state: HostPlaces, events: list[PlaceEvent]) -> HostPlaces:
    for event in events:
        state = evolve_places(state, event)
    return state


def test_a_host_s_last_place_goes_once() -> None:
    state = folded(HostPlaces("h1"), decide_places(HostPlaces("h1"), take("sb1"), utc_now()))
    assert list(state.places) == ["sb1"]
    with pytest.raises(Rejected) as full:
        decide_places(state, take("sb2"), utc_now())
    assert full.value.code == "host_full"
    assert (
        full.value.reason == "h1 is full (1 of its max_sandboxes 1), as its places in the log say"
    )
    assert decide_places(state, take("sb1"), utc_now()) == []  # its create sent again


def test_each_backend_has_its_own_places_on_a_host() -> None:
    state = folded(HostPlaces("h1"), decide_places(HostPlaces("h1"), take("sb1"), utc_now()))
    [taken] = decide_places(state, take("sb2", extension="ext.compose-ssh"), utc_now())
    assert isinstance(taken, PlaceTaken)
    assert taken.extension == "ext.compose-ssh"
    assert taken.limit == 1


def test_a_place_is_freed_once_and_never_one_taken_again() -> None:
    state = folded(HostPlaces("h1"), decide_places(HostPlaces("h1"), take("sb1"), utc_now()))
    free = FreePlace(
        command_id="f", actor=SYSTEM_ACTOR, sandbox_id="sb1", taken_by="c-sb1", reason="gone"
    )
    [freed] = decide_places(state, free, utc_now())
    assert isinstance(freed, PlaceFreed)
    state = evolve_places(state, freed)
    assert decide_places(state, free, utc_now()) == []
    again = dataclasses.replace(take("sb1"), command_id="c-other")
    state = folded(state, decide_places(state, again, utc_now()))
    assert decide_places(state, free, utc_now()) == []  # judged before it was taken again


@pytest.mark.parametrize(
    ("sandbox", "why"),
    [
        (SandboxState(sandbox_id="sb1"), None),
        (SandboxState(sandbox_id="sb1", abandoned_by="c"), "its create was given up"),
        (SandboxState(sandbox_id="sb1", status="requested"), None),
        (SandboxState(sandbox_id="sb1", status="ready", host="h1", extension=VM), None),
        (SandboxState(sandbox_id="sb1", status="destroying", host="h1", extension=VM), None),
        (SandboxState(sandbox_id="sb1", status="destroyed", host="h1", extension=VM), "destroyed"),
        (SandboxState(sandbox_id="sb1", status="failed", host="h1", extension=VM), "failed"),
        (SandboxState(sandbox_id="sb1", status="rerouting", host="h2", extension=VM), None),
        (SandboxState(sandbox_id="sb1", status="expired", host="h1", extension=VM), "expired"),
        (SandboxState(sandbox_id="sb1", status="ready", host="h2", extension=VM), "on h2"),
        (SandboxState(sandbox_id="sb1", status="ready", extension="ext.e2b"), "on no host"),
    ],
)
def test_a_sandbox_holds_its_place_while_it_is_live_there(
    sandbox: SandboxState, why: str | None
) -> None:
    given_up = place_given_up("h1", Place(VM, "c-sb1"), sandbox, utc_now())
    assert (given_up is None) if why is None else (why in (given_up or "")), given_up


def admitted(sandbox_id: str, host: str = "h1") -> AdmittedCreate:
    return AdmittedCreate(
        command=CreateSandbox(
            command_id=f"c-{sandbox_id}", actor=SYSTEM_ACTOR, profile="profile.vm"
        ),
        sandbox_id=sandbox_id,
        profile_version=1,
        inputs={},
        extension=VM,
        route_reason="test",
        host=host,
    )


async def test_a_full_host_frees_the_place_of_a_destroyed_sandbox_then_takes_it() -> None:
    store = MemoryEventStore()
    await take_place(store, "h1", 1, admitted("sb1"))
    await apply(store, "sb1", admitted("sb1"))
    with pytest.raises(Rejected):  # sb1 is live there
        await take_place(store, "h1", 1, admitted("sb2"))
    destroy = DestroySandbox(command_id="c-destroy", actor=SYSTEM_ACTOR, sandbox_id="sb1")
    await apply(store, "sb1", destroy)
    await apply(store, "sb1", FinishTeardown(job_id="test"))
    await take_place(store, "h1", 1, admitted("sb2"))
    assert list((await store.load_places("h1")).state.places) == ["sb2"]
    await take_place(store, "h1", 1, admitted("sb2"))  # sent again: nothing more
    kinds = [type(e).__name__ for e in store.log if isinstance(e, PlaceTaken | PlaceFreed)]
    assert kinds == ["PlaceTaken", "PlaceFreed", "PlaceTaken"]


async def test_a_place_whose_create_is_in_flight_is_kept() -> None:
    """Taken, its sandbox not appended yet (or cut off, and sent again): it holds."""
    store = MemoryEventStore()
    await take_place(store, "h1", 1, admitted("sb1"))
    with pytest.raises(Rejected):
        await take_place(store, "h1", 1, admitted("sb2"))


HOSTS = {"h1": HostConfig(address="127.0.0.1", host_key="ssh-ed25519 AAAA", max_sandboxes=1)}


async def test_a_create_refused_after_its_place_gives_the_id_up_then_the_place() -> None:
    """Cut off between its place and its append, then refused when sent again: its place
    was held for ever. The id is given up first, so a slower delivery cannot append it on
    a place given back; done again (a worker killed in between), nothing is freed twice."""
    store = MemoryEventStore()
    create = admitted("sb1")
    await take_place(store, "h1", 1, create)
    for _ in range(2):
        await give_up_places(store, HOSTS, "sb1", create.command, "no_host", "hosts down")
    assert (await store.load_places("h1")).state.places == {}
    assert (await store.load("sb1")).state.abandoned_by == "c-sb1"
    with pytest.raises(Rejected):
        await apply(store, "sb1", create)  # the slower delivery
    assert sum(isinstance(e, PlaceFreed) for e in store.log) == 1


async def test_another_project_s_create_under_the_same_command_id_gives_up_nothing() -> None:
    """Command ids are one namespace across projects: a place was matched by its command id
    alone, so another project's create sent under the same id and refused gave up the
    first project's create in flight (``create_abandoned``) and freed its place."""
    store = MemoryEventStore()
    alpha = Actor(type="agt", id="a", project="alpha")
    create = admitted("sb1")
    create = dataclasses.replace(
        create, command=msgspec.structs.replace(create.command, actor=alpha)
    )
    await take_place(store, "h1", 1, create)
    beta = msgspec.structs.replace(create.command, actor=Actor(type="agt", id="b", project="beta"))
    await give_up_places(store, HOSTS, "sb1", beta, "sandbox_exists", "not yours")
    assert list((await store.load_places("h1")).state.places) == ["sb1"]
    assert (await store.load("sb1")).state.abandoned_by is None
    await give_up_places(store, HOSTS, "sb1", create.command, "no_host", "hosts down")
    assert (await store.load_places("h1")).state.places == {}  # its own refusal does


async def test_a_refused_create_whose_sandbox_was_appended_keeps_its_place() -> None:
    store = MemoryEventStore()
    create = admitted("sb1")
    await take_place(store, "h1", 1, create)
    await apply(store, "sb1", create)  # a delivery of it came first
    await give_up_places(store, HOSTS, "sb1", create.command, "no_host", "hosts down")
    assert list((await store.load_places("h1")).state.places) == ["sb1"]


async def test_two_workers_racing_for_the_last_place_conflict_and_one_is_refused() -> None:
    """Both decided on a host with no places; the second append expects a history that
    moved on, and deciding again on the log finds the host full."""
    store = MemoryEventStore()
    stale = await store.load_places("h1")
    await apply_places(store, "h1", take("sb1"), stale)
    with pytest.raises(Rejected):
        await apply_places(store, "h1", take("sb2"), stale)


async def test_a_place_held_for_ages_by_a_create_that_never_appended_is_given_up() -> None:
    """A place whose refusals never gave it back (its host left the hosts file meanwhile)
    is held for ever; past STRANDED_SECONDS the id is given up, then the place freed."""
    store = MemoryEventStore()
    old = PlaceTaken(
        host="h1",
        sandbox_id="sb1",
        command_id="c-sb1",
        actor=SYSTEM_ACTOR,
        at=shift(utc_now(), -STRANDED_SECONDS - 5),
        extension=VM,
        limit=1,
    )
    await store.append_places(await store.load_places("h1"), [old])
    await take_place(store, "h1", 1, admitted("sb2"))
    assert list((await store.load_places("h1")).state.places) == ["sb2"]
    assert (await store.load("sb1")).state.abandoned_by == "c-sb1"
    with pytest.raises(Rejected):
        await apply(store, "sb1", admitted("sb1"))  # the lost create, come back at last


def test_a_recent_place_of_a_create_not_appended_is_not_stranded() -> None:
    place = Place(VM, "c-sb1", utc_now())
    assert not place_stranded(place, SandboxState(sandbox_id="sb1"), utc_now())


def test_a_recreate_takes_its_sandbox_s_place_again_under_its_own_command() -> None:
    """Renewed, a look that judged the failed sandbox before the recreate's append names
    the old taker, and frees nothing."""
    state = folded(HostPlaces("h1"), decide_places(HostPlaces("h1"), take("sb1"), utc_now()))
    renew = dataclasses.replace(take("sb1"), command_id="c-recreate", renew=True)
    [taken] = decide_places(state, renew, utc_now())
    assert isinstance(taken, PlaceTaken)
    state = evolve_places(state, taken)
    assert state.places["sb1"].taken_by == "c-recreate"
    assert decide_places(state, renew, utc_now()) == []  # sent again
    stale = FreePlace(
        command_id="f", actor=SYSTEM_ACTOR, sandbox_id="sb1", taken_by="c-sb1", reason="failed"
    )
    assert decide_places(state, stale, utc_now()) == []


def test_a_failed_sandbox_holds_the_place_its_recreate_took_until_that_is_appended() -> None:
    failed = SandboxState(
        sandbox_id="sb1", status="failed", host="h1", extension=VM, handled=("c-sb1",)
    )
    now = utc_now()
    recreate_s = Place(VM, "c-recreate", now)
    assert place_given_up("h1", recreate_s, failed, now) is None
    recreated = msgspec.structs.replace(failed, handled=("c-sb1", "c-recreate"))
    assert "failed" in (place_given_up("h1", recreate_s, recreated, now) or "")
    late = shift(now, STRANDED_SECONDS + 5)  # a recreate refused after its place
    assert "failed" in (place_given_up("h1", recreate_s, failed, late) or "")
    assert "failed" in (place_given_up("h1", Place(VM, "c-sb1", now), failed, now) or "")


@pytest.mark.parametrize(
    ("sandbox", "may"),
    [
        (SandboxState(sandbox_id="sb1"), True),
        (SandboxState(sandbox_id="sb1", abandoned_by="c"), True),
        (SandboxState(sandbox_id="sb1", status="requested"), False),
        (SandboxState(sandbox_id="sb1", status="ready", host="h1", extension=VM), False),
        (SandboxState(sandbox_id="sb1", status="failed", host="h1", extension=VM), False),
    ],
)
def test_only_a_refused_create_of_an_id_with_no_sandbox_looks_at_places(
    sandbox: SandboxState, may: bool
) -> None:
    assert may_hold_places(sandbox) is may


def recreate_of(sandbox_id: str) -> RecreateSandbox:
    return RecreateSandbox(command_id=f"r-{sandbox_id}", actor=SYSTEM_ACTOR, sandbox_id=sandbox_id)


async def failed_on_h1(store: MemoryEventStore, sandbox_id: str) -> None:
    await take_place(store, "h1", 1, admitted(sandbox_id))
    await apply(store, sandbox_id, admitted(sandbox_id))
    await apply(store, sandbox_id, MarkFailed(job_id="j", stage="job", reason="died (test)"))


async def test_a_recreate_of_a_failed_sandbox_whose_place_went_to_another_is_refused() -> None:
    """The failed sandbox's place was freed for another create; recreated on its own host,
    it made that host hold two sandboxes for its max_sandboxes 1."""
    store = MemoryEventStore()
    await failed_on_h1(store, "sb1")
    await take_place(store, "h1", 1, admitted("sb2"))  # frees sb1's, takes it
    assert list((await store.load_places("h1")).state.places) == ["sb2"]
    sb1 = await store.load("sb1")
    with pytest.raises(Rejected) as full:
        await take_recreate_place(store, HOSTS, recreate_of("sb1"), sb1)
    assert full.value.code == "no_host"
    assert "destroy a sandbox there, or raise its max_sandboxes" in full.value.reason


async def test_a_recreate_of_a_failed_sandbox_takes_a_place_when_there_is_room() -> None:
    store = MemoryEventStore()
    await failed_on_h1(store, "sb1")
    await take_place(store, "h1", 1, admitted("sb2"))
    destroy = DestroySandbox(command_id="c-destroy", actor=SYSTEM_ACTOR, sandbox_id="sb2")
    await apply(store, "sb2", admitted("sb2"))
    await apply(store, "sb2", destroy)
    await apply(store, "sb2", FinishTeardown(job_id="test"))
    await take_recreate_place(store, HOSTS, recreate_of("sb1"), await store.load("sb1"))
    assert (await store.load_places("h1")).state.places["sb1"].taken_by == "r-sb1"
    with pytest.raises(Rejected):  # held while the recreate is on its way
        await take_place(store, "h1", 1, admitted("sb3"))


async def test_a_recreate_of_a_live_sandbox_with_no_place_takes_none() -> None:
    """It adds no sandbox to the host (one placed before the host had a limit holds none);
    one that holds its place has it taken again under the recreate."""
    store = MemoryEventStore()
    await take_place(store, "h1", 1, admitted("sb2"))
    ready = SandboxState(sandbox_id="sb1", status="ready", host="h1", extension=VM)
    await take_recreate_place(store, HOSTS, recreate_of("sb1"), Loaded(ready, 3))
    assert list((await store.load_places("h1")).state.places) == ["sb2"]
    holding = msgspec.structs.replace(ready, sandbox_id="sb2")
    await take_recreate_place(store, HOSTS, recreate_of("sb2"), Loaded(holding, 3))
    assert (await store.load_places("h1")).state.places["sb2"].taken_by == "r-sb2"


class FailsWhileItsRecreateTakesItsPlace(MemoryEventStore):
    """sb1 fails once its recreate has looked at h1's places, and sb2's create then takes
    its place (it holds it no more): between the recreate's place and its append."""

    struck = False

    async def load_places(self, host: str) -> LoadedPlaces:
        if not self.struck:
            self.struck = True
            await apply(self, "sb1", MarkFailed(job_id="j", stage="job", reason="died (test)"))
            await take_place(self, "h1", 1, admitted("sb2"))
        return await super().load_places(host)


async def test_a_recreate_of_a_sandbox_that_fails_meanwhile_takes_its_place_again() -> None:
    """Its place was judged on the ready sandbox; decided on the failed one, it would have
    brought it back on h1 with sb2 holding h1's one place."""
    store = FailsWhileItsRecreateTakesItsPlace()
    store.struck = True
    await take_place(store, "h1", 1, admitted("sb1"))
    await apply(store, "sb1", admitted("sb1"))
    await apply(store, "sb1", StartProvisioning(job_id="j", worker="w"))
    await apply(store, "sb1", MarkReady(job_id="j", reachability={}, warnings=[]))
    store.struck = False
    with pytest.raises(Rejected) as full:
        await apply_recreate(store, recreate_of("sb1"), lambda _extension: HOSTS)
    assert full.value.code == "no_host"
    assert (await store.load("sb1")).state.status == "failed"
    assert list((await store.load_places("h1")).state.places) == ["sb2"]
