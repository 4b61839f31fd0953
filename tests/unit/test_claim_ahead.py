"""A warm claim's three events in one write (workers/claim_ahead.py), on the in-memory store:
what lands when all go through, and what each refusal leaves of the member's move."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from types import SimpleNamespace
from typing import Any, cast

import pytest
from nats.aio.msg import Msg

from sandboxer.bus.event_store import Loaded, LoadedMember
from sandboxer.bus.memory_store import MemoryEventStore
from sandboxer.commands.types import CreateSandbox
from sandboxer.config.profile import Profile
from sandboxer.domain.pool_state import ClaimMember, MarkMemberReady, decide_member
from sandboxer.domain.sandbox_decide import AdmittedCreate
from sandboxer.errors import ConcurrencyConflict, StreamUnavailable
from sandboxer.events.types import SYSTEM_ACTOR, PoolEvent, SandboxEvent
from sandboxer.extensions.base import ClaimedAhead, Extension, ProvisionRequest, Readiness
from sandboxer.workers.claim_ahead import Ahead, has_nothing_to_apply, ready_in_one_write
from sandboxer.workers.deciding import apply
from sandboxer.workers.jobs import Job
from tests.unit.test_pool_rules import add

SID = "sandbox0001"
MEMBER = "pool00000000000000aa"
NOW = "2026-12-07T23:00:00.000Z"
PROFILE = Profile.model_validate(
    {
        "id": "profile.warm",
        "version": 1,
        "extension": "ext.local",
        "pool": {"min_ready": 1, "max": 1},
    }
)


class Backend:
    """A pooling backend whose claim ahead only says what it did."""

    id = "ext.local"
    enforces_workspace_access = True

    def __init__(self) -> None:
        self.moved: list[str] = []
        self.given_back: list[str] = []

    @contextlib.asynccontextmanager
    async def claim_ahead(
        self, member_id: str, request: ProvisionRequest
    ) -> AsyncIterator[ClaimedAhead]:
        self.moved.append(member_id)
        yield ClaimedAhead(
            Readiness(descriptor={"kind": "local"}), lambda: self.given_back.append(member_id)
        )


class Picker:
    """The keeper's part: the member as the store holds it, with its claim decided."""

    def __init__(self, store: MemoryEventStore, *, stale: bool = False) -> None:
        self.store = store
        self.stale = stale
        self.unpicked: list[tuple[str, LoadedMember | None]] = []

    def pick(
        self, profile: Profile, sandbox_id: str, job_id: str
    ) -> tuple[LoadedMember, list[PoolEvent]] | None:
        member = self.loaded
        if self.stale:  # another writer moved the member since the keeper last read it
            member = dataclasses.replace(member, last_seq=member.last_seq - 1)
        claim = ClaimMember(sandbox_id=sandbox_id, job_id=job_id)
        return member, list(decide_member(member.state, claim, NOW))

    def unpick(self, member_id: str, claimed: LoadedMember | None) -> None:
        self.unpicked.append((member_id, claimed))


class Refusing(MemoryEventStore):
    """Refuses, or leaves unanswered, the appends of some event types."""

    def __init__(self, refuse: type[Any] | None = None, unanswered: type[Any] | None = None):
        super().__init__()
        self.refuse = refuse
        self.unanswered = unanswered

    async def append(self, loaded: Loaded, events: Sequence[SandboxEvent], **kw: Any) -> Loaded:
        self._check(events[0])
        return await super().append(loaded, events, **kw)

    async def append_member(
        self, loaded: LoadedMember, events: Sequence[PoolEvent]
    ) -> LoadedMember:
        self._check(events[0])
        return await super().append_member(loaded, events)

    def _check(self, event: object) -> None:
        if self.refuse is not None and isinstance(event, self.refuse):
            raise ConcurrencyConflict("refused here")
        if self.unanswered is not None and isinstance(event, self.unanswered):
            raise StreamUnavailable("no answer here")


async def routed_with_a_ready_member(store: MemoryEventStore) -> tuple[Loaded, Job, Picker]:
    create = AdmittedCreate(
        command=CreateSandbox(command_id="c-1", actor=SYSTEM_ACTOR, profile="profile.warm"),
        sandbox_id=SID,
        profile_version=1,
        inputs={},
        extension="ext.local",
        route_reason="test",
    )
    known, _ = await apply(store, SID, create)
    member = await store.load_member(MEMBER)
    for command in (add(MEMBER), MarkMemberReady(round_id="r2")):
        member = await store.append_member(member, decide_member(member.state, command, NOW))
    picker = Picker(store)
    picker.loaded = member  # type: ignore[attr-defined]
    job = Job(job_id="j-1", sandbox_id=SID, action="provision", version=known.state.version)
    return known, job, picker


def first_delivery() -> Msg:
    return cast(Msg, SimpleNamespace(metadata=SimpleNamespace(num_delivered=1)))


def types_after(store: MemoryEventStore, count: int) -> list[str]:
    return [type(event).__name__ for event in store.log[count:]]


async def claim_ahead(store: MemoryEventStore, picker: Picker, known: Loaded, job: Job) -> Any:
    backend = Backend()
    outcome = await ready_in_one_write(
        store, picker, cast(Extension, backend), job, first_delivery(), known, PROFILE, worker="w"
    )
    return outcome, backend


async def test_all_three_land_one_after_another_and_the_member_stays_moved() -> None:
    store = MemoryEventStore()
    known, job, picker = await routed_with_a_ready_member(store)
    before = len(store.log)
    outcome, backend = await claim_ahead(store, picker, known, job)
    assert isinstance(outcome, Ahead)
    assert outcome.ready
    assert outcome.member_id == MEMBER
    assert outcome.started.state.status == "ready"
    assert types_after(store, before) == [
        "SandboxProvisioning",
        "PoolMemberClaimed",
        "SandboxReady",
    ]
    assert (backend.moved, backend.given_back) == ([MEMBER], [])
    ((member_id, claimed),) = picker.unpicked
    assert member_id == MEMBER
    assert claimed is not None
    assert claimed.state.status == "claimed"


async def test_a_refused_claim_gives_the_member_back_and_keeps_provisioning() -> None:
    store = MemoryEventStore()
    known, job, picker = await routed_with_a_ready_member(store)
    picker.stale = True
    before = len(store.log)
    outcome, backend = await claim_ahead(store, picker, known, job)
    assert isinstance(outcome, Ahead)
    assert not outcome.ready
    assert outcome.member_id is None
    assert outcome.started.state.status == "provisioning"
    assert types_after(store, before) == ["SandboxProvisioning"]  # `ready` needed the claim
    assert backend.given_back == [MEMBER]
    assert picker.unpicked == [(MEMBER, None)]


async def test_a_refused_provisioning_lands_nothing_and_gives_the_member_back() -> None:
    store = MemoryEventStore()
    known, job, picker = await routed_with_a_ready_member(store)
    stale = dataclasses.replace(known, last_seq=known.last_seq - 1)
    before = len(store.log)
    outcome, backend = await claim_ahead(store, picker, stale, job)
    assert outcome is None  # the usual path reads the log and starts again
    assert types_after(store, before) == []  # `claimed` needed `provisioning` right before it
    assert backend.given_back == [MEMBER]


async def test_a_refused_ready_alone_leaves_the_claim_standing() -> None:
    from sandboxer.events.sandbox_events import SandboxReady

    store = Refusing(refuse=SandboxReady)
    known, job, picker = await routed_with_a_ready_member(store)
    before = len(store.log)
    outcome, backend = await claim_ahead(store, picker, known, job)
    assert isinstance(outcome, Ahead)
    assert not outcome.ready
    assert outcome.member_id == MEMBER
    assert types_after(store, before) == ["SandboxProvisioning", "PoolMemberClaimed"]
    assert backend.given_back == []  # the usual path appends `ready` in turn


async def test_an_unanswered_claim_keeps_the_member_moved_and_raises() -> None:
    from sandboxer.events.pool_events import PoolMemberClaimed

    store = Refusing(unanswered=PoolMemberClaimed)
    known, job, picker = await routed_with_a_ready_member(store)
    backend = Backend()
    with pytest.raises(StreamUnavailable):
        await ready_in_one_write(
            store,
            picker,
            cast(Extension, backend),
            job,
            first_delivery(),
            known,
            PROFILE,
            worker="w",
        )
    # Its redelivery adopts the member or removes it: it is not moved back meanwhile.
    assert (backend.moved, backend.given_back) == ([MEMBER], [])
    assert picker.unpicked == [(MEMBER, None)]


async def test_only_a_claim_with_nothing_to_apply_goes_ahead() -> None:
    assert has_nothing_to_apply(PROFILE, {})
    assert not has_nothing_to_apply(PROFILE, {"repo": "/srv/app"})
    for setup in (
        {"commands": ["true"]},
        {"instructions": ["true"]},
        {"secret_refs": {"A": "env:A"}},
        {"record_telemetry": True},
    ):
        profile = PROFILE.model_copy(update={"setup": PROFILE.setup.model_copy(update=setup)})
        assert not has_nothing_to_apply(profile, {})
    store = MemoryEventStore()
    known, job, picker = await routed_with_a_ready_member(store)
    redelivered = cast(Msg, SimpleNamespace(metadata=SimpleNamespace(num_delivered=2)))
    backend = Backend()
    outcome = await ready_in_one_write(
        store, picker, cast(Extension, backend), job, redelivered, known, PROFILE, worker="w"
    )
    assert outcome is None
    assert backend.moved == []
