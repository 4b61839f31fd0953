"""The load-decide-append loop, on the in-memory store: conflicts reload, ids are stable."""

from __future__ import annotations

import pytest

from sandboxer.bus.event_store import EventStore, Loaded
from sandboxer.bus.memory_store import MemoryEventStore
from sandboxer.clock import utc_now
from sandboxer.commands.types import CreateSandbox, DestroySandbox
from sandboxer.domain.sandbox_decide import (
    AdmittedCreate,
    FinishTeardown,
    MarkTeardownFailed,
    StartProvisioning,
    decide,
)
from sandboxer.errors import ConcurrencyConflict
from sandboxer.events.types import SYSTEM_ACTOR, CommandRejected
from sandboxer.workers.deciding import DECIDE_ATTEMPTS, apply

SID = "sandbox0001"


def create(command_id: str = "c-create") -> AdmittedCreate:
    return AdmittedCreate(
        command=CreateSandbox(command_id=command_id, actor=SYSTEM_ACTOR, profile="profile.local"),
        sandbox_id=SID,
        profile_version=1,
        inputs={},
        extension="ext.local",
        route_reason="test",
    )


async def test_apply_appends_and_a_repeat_decides_nothing() -> None:
    store: EventStore = MemoryEventStore()
    loaded, changed = await apply(store, SID, create())
    assert changed
    assert loaded.state.status == "routed"
    again, changed = await apply(store, SID, create())
    assert not changed
    assert again == loaded


async def test_a_stale_known_state_is_reloaded_not_trusted() -> None:
    store = MemoryEventStore()
    stale = await store.load(SID)
    await apply(store, SID, create())
    loaded, changed = await apply(store, SID, StartProvisioning(job_id="j", worker="w"), stale)
    assert changed
    assert loaded.state.status == "provisioning"
    assert [type(e).__name__ for e in store.log] == [
        "SandboxRequested",
        "SandboxRouted",
        "SandboxProvisioning",
    ]


class RacingStore(MemoryEventStore):
    """Another writer changes the sandbox between every load and append, ``races`` times."""

    races = 0

    async def load(self, sandbox_id: str) -> Loaded:
        loaded = await super().load(sandbox_id)
        if self.races:
            self.races -= 1
            other = MarkTeardownFailed(job_id="other", reason=f"busy {self.races}")
            await super().append(loaded, decide(loaded.state, other, utc_now()))
        return loaded


async def destroying(store: MemoryEventStore) -> None:
    await apply(store, SID, create())
    await apply(
        store, SID, DestroySandbox(command_id="c-destroy", actor=SYSTEM_ACTOR, sandbox_id=SID)
    )


async def test_a_lost_race_is_decided_again_on_the_new_state() -> None:
    store = RacingStore()
    await destroying(store)
    store.races = 2
    loaded, changed = await apply(store, SID, FinishTeardown(job_id="j"))
    assert changed
    assert loaded.state.status == "destroyed"
    assert [type(e).__name__ for e in store.log][-3:] == [
        "SandboxTeardownFailed",
        "SandboxTeardownFailed",
        "SandboxDestroyed",
    ]


async def test_a_sandbox_that_never_stops_changing_gives_up_with_a_conflict() -> None:
    store = RacingStore()
    await destroying(store)
    store.races = DECIDE_ATTEMPTS
    with pytest.raises(ConcurrencyConflict, match="kept changing"):
        await apply(store, SID, FinishTeardown(job_id="j"))


async def test_records_are_idempotent_by_their_stamped_id() -> None:
    store = MemoryEventStore()
    rejection = CommandRejected(
        command_id="c1", command="create", code="x", reason="y", actor=SYSTEM_ACTOR, at=utc_now()
    )
    await store.record(rejection)
    await store.record(rejection)
    assert len(store.log) == 1
    assert store.log[0].event_id
