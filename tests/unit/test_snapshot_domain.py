"""The snapshot aggregate's rules, the sandbox's side of a snapshot, and a snapshot racing a
destroy, on the pure domain and the in-memory store."""

from __future__ import annotations

import pytest

from sandboxer import subjects
from sandboxer.bus.event_store import Loaded, event_id
from sandboxer.bus.memory_store import MemoryEventStore
from sandboxer.clock import utc_now
from sandboxer.commands.types import CreateSandbox, DestroySandbox, RecreateSandbox
from sandboxer.domain.sandbox_decide import (
    AdmittedCreate,
    FinishTeardown,
    MarkReady,
    StartProvisioning,
    decide,
)
from sandboxer.domain.sandbox_snapshots import FinishSnapshot, StartSnapshot
from sandboxer.domain.snapshot_decide import (
    DeleteSnapshotDecision,
    RecordSnapshotFailed,
    RecordSnapshotStored,
    RequestSnapshot,
    decide_snapshot,
    snapshot_taken,
)
from sandboxer.domain.snapshot_state import SnapshotState, evolve_snapshot
from sandboxer.errors import Rejected
from sandboxer.events.types import SYSTEM_ACTOR, SnapshotCreated, SnapshotRequested, event_type
from sandboxer.ids import derive_snapshot_id, is_valid_sandbox_id
from sandboxer.workers.deciding import apply, apply_snapshot
from sandboxer.workers.jobs import job_for

SID = "sandbox0001"
SNAP = "snp0000000000000001"
NOW = "2026-12-02T03:00:00.000Z"


def request(command_id: str = "c-snap") -> RequestSnapshot:
    return RequestSnapshot(
        command_id=command_id,
        actor=SYSTEM_ACTOR,
        sandbox_id=SID,
        extension="ext.local",
        profile="profile.local",
        name="before-upgrade",
    )


def stored(job_id: str = "j-snap") -> RecordSnapshotStored:
    return RecordSnapshotStored(
        job_id=job_id, bucket="SANDBOXER_WORKSPACES", object="sha256-ab", size=10, sha256="ab"
    )


def run(state: SnapshotState, *commands: object) -> SnapshotState:
    for command in commands:
        for event in decide_snapshot(state, command, NOW):  # type: ignore[arg-type]
            state = evolve_snapshot(state, event)
    return state


def test_a_requested_snapshot_is_created_with_where_its_data_is() -> None:
    state = run(SnapshotState(snapshot_id=SNAP), request(), stored())
    assert state.status == "created"
    assert (state.sandbox_id, state.name, state.object, state.size) == (
        SID,
        "before-upgrade",
        "sha256-ab",
        10,
    )
    assert state.created_by == "c-snap"
    assert state.version == 2


def test_the_outcome_is_recorded_once() -> None:
    state = run(SnapshotState(snapshot_id=SNAP), request(), stored())
    assert decide_snapshot(state, stored("again"), NOW) == []
    assert decide_snapshot(state, RecordSnapshotFailed(job_id="j", reason="x"), NOW) == []
    assert decide_snapshot(state, request(), NOW) == []  # the same command, re-sent


def test_a_failed_snapshot_says_why() -> None:
    state = run(
        SnapshotState(snapshot_id=SNAP), request(), RecordSnapshotFailed(job_id="j", reason="disk")
    )
    assert (state.status, state.failure) == ("failed", "disk")


def test_another_command_cannot_reuse_a_snapshot_id() -> None:
    state = run(SnapshotState(snapshot_id=SNAP), request())
    with pytest.raises(Rejected) as refused:
        decide_snapshot(state, request("c-other"), NOW)
    assert refused.value.code == "snapshot_exists"


def test_delete_keeps_the_history_and_a_shared_object() -> None:
    created = run(SnapshotState(snapshot_id=SNAP), request(), stored())
    alone = run(created, DeleteSnapshotDecision(command_id="d1", actor=SYSTEM_ACTOR))
    assert (alone.status, alone.object_removed, alone.object) == ("deleted", True, "sha256-ab")
    shared = run(
        created, DeleteSnapshotDecision(command_id="d1", actor=SYSTEM_ACTOR, object_shared=True)
    )
    assert shared.object_removed is False
    with pytest.raises(Rejected) as again:
        decide_snapshot(alone, DeleteSnapshotDecision(command_id="d2", actor=SYSTEM_ACTOR), NOW)
    assert again.value.code == "already_deleted"


@pytest.mark.parametrize(
    ("state", "code"),
    [
        (SnapshotState(snapshot_id=SNAP), "unknown_snapshot"),
        (run(SnapshotState(snapshot_id=SNAP), request()), "snapshot_in_progress"),
    ],
)
def test_delete_refuses_what_is_not_there_yet(state: SnapshotState, code: str) -> None:
    with pytest.raises(Rejected) as refused:
        decide_snapshot(state, DeleteSnapshotDecision(command_id="d", actor=SYSTEM_ACTOR), NOW)
    assert refused.value.code == code


def test_snapshot_subjects_drop_the_tag_prefix_and_ids_are_subject_tokens() -> None:
    event = SnapshotCreated(
        snapshot_id=SNAP,
        command_id="c",
        actor=SYSTEM_ACTOR,
        at=NOW,
        bucket="b",
        object="o",
        size=1,
        sha256="s",
    )
    assert subjects.snapshot_event_subject(SNAP, event_type(event)) == (
        f"sandboxer.evt.snapshot.{SNAP}.created"
    )
    assert derive_snapshot_id("c1") == derive_snapshot_id("c1") != derive_snapshot_id("c2")
    assert is_valid_sandbox_id(derive_snapshot_id("c1"))


def test_snapshot_event_ids_depend_on_the_snapshot_version() -> None:
    event = SnapshotRequested(
        snapshot_id=SNAP, command_id="c", actor=SYSTEM_ACTOR, at=NOW, sandbox_id=SID, extension="e"
    )
    assert event_id(event, version=0) == event_id(event, version=0) != event_id(event, version=1)


# The sandbox's side, and the race with destroy.


async def ready_sandbox(store: MemoryEventStore) -> Loaded:
    create = AdmittedCreate(
        command=CreateSandbox(command_id="c-create", actor=SYSTEM_ACTOR, profile="profile.local"),
        sandbox_id=SID,
        profile_version=1,
        inputs={},
        extension="ext.local",
        route_reason="test",
    )
    await apply(store, SID, create)
    await apply(store, SID, StartProvisioning(job_id="j1", worker="w"))
    loaded, _ = await apply(store, SID, MarkReady(job_id="j1", reachability={}, warnings=[]))
    return loaded


def start(command_id: str = "c-snap", snapshot_id: str = SNAP) -> StartSnapshot:
    return StartSnapshot(
        command_id=command_id, actor=SYSTEM_ACTOR, sandbox_id=SID, snapshot_id=snapshot_id
    )


def finish(outcome: str = "created") -> FinishSnapshot:
    return FinishSnapshot(
        command_id="c-snap",
        actor=SYSTEM_ACTOR,
        job_id="j-snap",
        snapshot_id=SNAP,
        outcome=outcome,  # type: ignore[arg-type]
    )


DESTROY = DestroySandbox(command_id="c-destroy", actor=SYSTEM_ACTOR, sandbox_id=SID)


async def test_a_snapshot_of_an_unknown_or_destroyed_sandbox_is_refused() -> None:
    store = MemoryEventStore()
    with pytest.raises(Rejected) as unknown:
        await apply(store, SID, start())
    assert unknown.value.code == "unknown_sandbox"
    await ready_sandbox(store)
    await apply(store, SID, DESTROY)
    with pytest.raises(Rejected) as destroying:
        await apply(store, SID, start())
    assert destroying.value.code == "not_snapshottable"
    assert "destroying" in destroying.value.reason
    loaded, _ = await apply(store, SID, FinishTeardown(job_id="t"))
    assert loaded.state.status == "destroyed"
    with pytest.raises(Rejected, match="destroyed"):
        await apply(store, SID, start())


async def test_one_snapshot_at_a_time_and_a_resent_one_decides_nothing() -> None:
    store = MemoryEventStore()
    await ready_sandbox(store)
    loaded, changed = await apply(store, SID, start())
    assert changed
    assert loaded.state.snapshotting == SNAP
    _, changed = await apply(store, SID, start())
    assert not changed
    with pytest.raises(Rejected) as busy:
        await apply(store, SID, start("c-other", "snp0000000000000002"))
    assert busy.value.code == "snapshot_in_progress"
    with pytest.raises(Rejected) as recreate:
        await apply(
            store, SID, RecreateSandbox(command_id="c-re", actor=SYSTEM_ACTOR, sandbox_id=SID)
        )
    assert recreate.value.code == "snapshot_in_progress"
    loaded, _ = await apply(store, SID, finish())
    assert loaded.state.snapshotting is None
    assert loaded.state.status == "ready"
    _, changed = await apply(store, SID, finish())
    assert not changed


async def test_snapshot_first_then_destroy_the_teardown_waits_for_the_copy() -> None:
    store = MemoryEventStore()
    await ready_sandbox(store)
    await apply(store, SID, start())
    loaded, _ = await apply(store, SID, DESTROY)
    assert loaded.state.status == "destroying"
    waiting = job_for(loaded.state)
    assert waiting is not None
    assert (waiting.action, waiting.snapshot_id) == ("snapshot", SNAP)
    loaded, _ = await apply(store, SID, finish())
    released = job_for(loaded.state)
    assert released is not None
    assert released.action == "teardown"


class DestroyWinsTheRace(MemoryEventStore):
    """A destroy lands between the snapshot's load of the sandbox and its append."""

    armed = True

    async def load(self, sandbox_id: str) -> Loaded:
        loaded = await super().load(sandbox_id)
        if self.armed:
            self.armed = False
            await super().append(loaded, decide(loaded.state, DESTROY, utc_now()))
        return loaded


async def test_destroy_first_in_a_race_refuses_the_snapshot() -> None:
    store = DestroyWinsTheRace()
    store.armed = False
    await ready_sandbox(store)
    store.armed = True
    with pytest.raises(Rejected) as refused:
        await apply(store, SID, start())
    assert refused.value.code == "not_snapshottable"
    assert [event_type(e) for e in store.log][-1] == "destroying"
    assert job_for((await store.load(SID)).state).action == "teardown"  # type: ignore[union-attr]


async def test_the_snapshot_aggregate_reacts_to_the_sandbox_once() -> None:
    store = MemoryEventStore()
    loaded, changed = await apply_snapshot(store, SNAP, request())
    assert changed
    assert loaded.state.status == "requested"
    _, changed = await apply_snapshot(store, SNAP, request())
    assert not changed
    loaded, _ = await apply_snapshot(store, SNAP, stored())
    assert loaded.state.status == "created"
    assert (await store.load(SID)).last_seq == 0  # snapshot events are not the sandbox's
    assert all(e.event_id for e in store.log)


def test_a_snapshot_taken_of_another_sandbox_is_not_free_for_a_command_under_its_id() -> None:
    """A snapshot's id comes from its command id: a command naming one already taken of
    another sandbox is refused before anything is appended; sent again on its own sandbox,
    or naming a snapshot never taken, it is not."""
    taken = run(SnapshotState(snapshot_id=SNAP), request())
    assert snapshot_taken(SnapshotState(snapshot_id=SNAP), "othersbx01") is None
    assert snapshot_taken(taken, SID) is None
    refusal = snapshot_taken(taken, "othersbx01")
    assert refusal is not None
    assert refusal.code == "snapshot_exists"
    assert SID not in refusal.reason  # nothing of the other sandbox
    finished = run(taken, stored())
    assert snapshot_taken(finished, "othersbx01") is not None
