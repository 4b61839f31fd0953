"""The load-decide-append loop, on the in-memory store: conflicts reload, ids are stable."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from sandboxer.bus.event_store import EventStore, Loaded, LoadedAccount
from sandboxer.bus.memory_store import MemoryEventStore
from sandboxer.clock import utc_now
from sandboxer.commands.types import AddCredits, CreateSandbox, DestroySandbox
from sandboxer.domain.sandbox_decide import (
    AdmittedCreate,
    FinishTeardown,
    MarkTeardownFailed,
    StartProvisioning,
    decide,
)
from sandboxer.errors import ConcurrencyConflict, Rejected
from sandboxer.events.account_events import AccountEvent
from sandboxer.events.actor import Actor
from sandboxer.events.types import SYSTEM_ACTOR, CommandRejected
from sandboxer.workers.deciding import DECIDE_ATTEMPTS, apply, apply_account

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


async def test_a_refusal_on_a_stale_known_state_is_checked_against_the_log() -> None:
    """A caller's known state can be behind the log (another writer of the same process
    appended while it waited its turn): what it refuses, the log's state may accept."""
    store = MemoryEventStore()
    stale = await store.load(SID)  # no sandbox yet: a destroy of it is refused
    await apply(store, SID, create())
    destroy = DestroySandbox(command_id="c-destroy", actor=SYSTEM_ACTOR, sandbox_id=SID)
    loaded, changed = await apply(store, SID, destroy, stale)
    assert changed
    assert loaded.state.status == "destroying"
    with pytest.raises(Rejected):  # refused on the log's own state: the caller hears it
        await apply(store, "sandbox0002", destroy)


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


async def test_only_if_is_checked_on_the_state_the_append_follows() -> None:
    """reap-stale marks a sandbox failed only while the log still says what it judged: a
    writer in between (here a teardown failure) is seen, and nothing is appended."""
    store = RacingStore()
    await destroying(store)
    untouched = (await store.load(SID)).state
    store.races = 1  # the first state decided on is stale by the time of its append
    loaded, changed = await apply(
        store, SID, FinishTeardown(job_id="j"), only_if=lambda s: s == untouched
    )
    assert not changed
    assert loaded.state.teardown_failure == "busy 0"
    assert type(store.log[-1]).__name__ == "SandboxTeardownFailed"
    # Holding on the log's state, it is decided as without.
    loaded, changed = await apply(
        store, SID, FinishTeardown(job_id="j"), only_if=lambda s: s.status == "destroying"
    )
    assert changed
    assert loaded.state.status == "destroyed"


async def test_records_are_idempotent_by_their_stamped_id() -> None:
    store = MemoryEventStore()
    rejection = CommandRejected(
        command_id="c1", command="create", code="x", reason="y", actor=SYSTEM_ACTOR, at=utc_now()
    )
    await store.record(rejection)
    await store.record(rejection)
    assert len(store.log) == 1
    assert store.log[0].event_id


class SlowAccountStore(MemoryEventStore):
    """Loads and appends that yield to the event loop, as the bus's do: concurrent writers
    of one account interleave between their load and their append."""

    appends = 0

    async def load_account(self, project: str) -> LoadedAccount:
        await asyncio.sleep(0)
        return await super().load_account(project)

    async def append_account(
        self, loaded: LoadedAccount, events: Sequence[AccountEvent]
    ) -> LoadedAccount:
        await asyncio.sleep(0)
        self.appends += 1
        return await super().append_account(loaded, events)


async def test_writers_of_one_aggregate_in_one_process_take_turns() -> None:
    """64 add_credits on one account at once (a backlog released after an election): each is
    decided once, none loses a race to a writer of its own process."""
    store = SlowAccountStore()
    admin = Actor(type="adm", id="ops")
    commands = [
        AddCredits(command_id=f"add-{n}", actor=admin, project="acme", amount=1) for n in range(64)
    ]
    await asyncio.gather(*(apply_account(store, "acme", c) for c in commands))
    assert store.appends == 64  # one append each: no conflict, no reload
    assert (await store.load_account("acme")).state.balance == 64
