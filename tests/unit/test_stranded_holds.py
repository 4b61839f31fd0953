"""A lost create's credit hold given back (workers/hold_release.release_stranded_holds):
only a create's hold, only long after, only while its sandbox still has no events; the id
given up first, so the create come back at last is refused, not made on credits given back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest

from sandboxer.bus.event_store import Loaded, LoadedAccount
from sandboxer.bus.memory_store import MemoryEventStore
from sandboxer.clock import utc_now
from sandboxer.commands.types import CreateSandbox
from sandboxer.domain.account_decide import reserve_command_id
from sandboxer.domain.lost_creates import STRANDED_SECONDS
from sandboxer.domain.sandbox_decide import AdmittedCreate
from sandboxer.domain.timestamps import shift
from sandboxer.errors import Rejected
from sandboxer.events.account_events import CreditsAdded, CreditsReserved
from sandboxer.events.types import Actor
from sandboxer.workers.deciding import apply
from sandboxer.workers.hold_release import release_stranded_holds
from sandboxer.workers.hold_sweep import Holdings, HoldSweep

AGENT = Actor(type="agt", id="agent-7", project="acme")
STUB = "ext.saas-stub"


def admitted(sandbox_id: str, actor: Actor = AGENT) -> AdmittedCreate:
    return AdmittedCreate(
        command=CreateSandbox(command_id=f"c-{sandbox_id}", actor=actor, profile="profile.stub"),
        sandbox_id=sandbox_id,
        profile_version=1,
        inputs={},
        extension=STUB,
        route_reason="test",
    )


def held(sandbox_id: str, *, age: float, by_create: bool = True) -> CreditsReserved:
    return CreditsReserved(
        project="acme",
        command_id=reserve_command_id(sandbox_id),
        causation_id=f"c-{sandbox_id}" if by_create else None,
        actor=AGENT,
        at=shift(utc_now(), -age),
        sandbox_id=sandbox_id,
        amount=1_000,
        price="1",
        extension=STUB,
    )


async def test_only_the_holds_of_creates_lost_long_ago_are_given_back() -> None:
    store = MemoryEventStore()
    old = STRANDED_SECONDS + 5
    funds = CreditsAdded(project="acme", command_id="add", actor=AGENT, at=utc_now(), amount=10**6)
    holds = [
        held("lost0001", age=old),  # its create never came back
        held("live0001", age=old),  # made long ago, and alive
        held("young001", age=1),  # may still be sent again
        held("nocause1", age=old, by_create=False),  # recorded before holds named their create
    ]
    await store.append_account(await store.load_account("acme"), [funds, *holds])
    await apply(store, "live0001", admitted("live0001"))

    account = await store.load_account("acme")
    assert await release_stranded_holds(store, "acme", account) == ["lost0001"]
    after = (await store.load_account("acme")).state
    assert sorted(after.reservations) == ["live0001", "nocause1", "young001"]
    assert (await store.load("lost0001")).state.abandoned_by == "c-lost0001"
    with pytest.raises(Rejected):
        await apply(store, "lost0001", admitted("lost0001"))  # the lost create, back at last
    # Nothing more to give back: asked again, it says so.
    assert not await release_stranded_holds(store, "acme", await store.load_account("acme"))


class CountingStore(MemoryEventStore):
    """The memory store, counting the sandbox loads asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []

    async def load(self, sandbox_id: str) -> Loaded:
        self.loads.append(sandbox_id)
        return await super().load(sandbox_id)


async def test_an_appended_sandbox_s_log_is_read_once_not_at_every_refusal() -> None:
    """A project at its limit is refused at every create, and each refusal looks for lost
    holds: a sandbox seen appended is never a lost create's, so its log is not read again."""
    store = CountingStore()
    funds = CreditsAdded(project="acme", command_id="add", actor=AGENT, at=utc_now(), amount=10**6)
    await store.append_account(
        await store.load_account("acme"), [funds, held("living01", age=STRANDED_SECONDS + 5)]
    )
    await apply(store, "living01", admitted("living01"))
    store.loads.clear()
    for _ in range(3):
        assert not await release_stranded_holds(store, "acme", await store.load_account("acme"))
    assert store.loads == ["living01"]


async def test_a_lost_create_s_hold_of_an_id_another_project_took_is_given_back() -> None:
    """Two projects' creates named one sandbox id; the other project's made it, and this
    project's was cut off after its hold and never sent again. No create of this project can
    be appended on the id, and the sandbox is metered on the other account: the hold is
    metered at zero here, once, as a refusal of the create would have. The sandbox's owner
    is remembered: the other project's own hold of it stays, its log not read again."""
    store = CountingStore()
    other = Actor(type="agt", id="agent-9", project="other")
    old = STRANDED_SECONDS + 5
    funds = CreditsAdded(project="acme", command_id="add", actor=AGENT, at=utc_now(), amount=10**6)
    await store.append_account(await store.load_account("acme"), [funds, held("taken001", age=old)])
    theirs = msgspec.structs.replace(held("taken001", age=old), project="other", actor=other)
    await store.append_account(await store.load_account("other"), [theirs])
    await apply(store, "taken001", admitted("taken001", other))

    assert await release_stranded_holds(store, "acme", await store.load_account("acme")) == [
        "taken001"
    ]
    acme = (await store.load_account("acme")).state
    assert (acme.reservations, acme.reserved, acme.balance, acme.metered) == ({}, 0, 10**6, 1)
    assert not await release_stranded_holds(store, "acme", await store.load_account("acme"))
    store.loads.clear()
    assert not await release_stranded_holds(store, "other", await store.load_account("other"))
    assert "taken001" in (await store.load_account("other")).state.reservations
    assert store.loads == []  # its owner known: the log of the sandbox not read again


class AccountCountingStore(MemoryEventStore):
    """The memory store, counting the account loads asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.account_loads = 0

    async def load_account(self, project: str) -> LoadedAccount:
        self.account_loads += 1
        return await super().load_account(project)

    def holdings(self) -> Holdings:
        """What the credits view would show: acme's holds as the log says now."""

        async def listed() -> AsyncIterator[tuple[str, list[str]]]:
            state = (await super(AccountCountingStore, self).load_account("acme")).state
            if state.reservations:
                yield "acme", sorted(state.reservations)

        return listed


async def test_the_hold_sweep_loads_an_account_only_while_a_hold_may_be_lost() -> None:
    """The control worker's sweep gives a lost create's hold back with nothing refused. A
    hold it has seen young is not looked at again until it is old, and one it has seen old
    and kept (its sandbox was made), or that no create made, never again: a project's live
    sandboxes do not cost a load of its account at every sweep."""
    store = AccountCountingStore()
    funds = CreditsAdded(project="acme", command_id="add", actor=AGENT, at=utc_now(), amount=10**6)
    old = STRANDED_SECONDS + 5
    holds = [
        held("lost0002", age=old),
        held("made0001", age=old),
        held("nocause2", age=old, by_create=False),
    ]
    await store.append_account(await store.load_account("acme"), [funds, *holds])
    await apply(store, "made0001", admitted("made0001"))
    sweep = HoldSweep(store, store.holdings())

    assert await sweep.sweep() == ["lost0002"]
    store.account_loads = 0
    assert await sweep.sweep() == []  # the made one and the one no create made: kept
    assert store.account_loads == 0  # and not looked at again

    await store.append_account(await store.load_account("acme"), [held("young002", age=1)])
    store.account_loads = 0
    assert await sweep.sweep() == []  # seen young
    assert await sweep.sweep() == []  # still young: not looked at
    assert store.account_loads == 1
    assert sorted((await store.load_account("acme")).state.reservations) == [
        "made0001",
        "nocause2",
        "young002",
    ]
