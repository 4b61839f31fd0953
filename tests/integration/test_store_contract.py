"""Both event stores keep one contract for every aggregate (sandboxer/bus/aggregates.py).

The in-memory store stands in for JetStream in the unit tests of the deciding loop, so it
must load, append and refuse a stale append as the JetStream store does: the same states,
the same sequences' order, the same conflict. Each case runs on both, for each aggregate.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from sandboxer.bus.event_store import EventStore
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.memory_store import MemoryEventStore
from sandboxer.clock import utc_now
from sandboxer.errors import ConcurrencyConflict
from sandboxer.events.types import (
    Actor,
    CreditsAdded,
    Event,
    HostInspected,
    KeyCreated,
    KeyRevoked,
    PlaceFreed,
    PlaceTaken,
    PoolMemberAdded,
    PoolMemberReady,
    SandboxTouched,
    SnapshotFailed,
    SnapshotRequested,
)

pytestmark = pytest.mark.integration

ACTOR = Actor(type="adm", id="pytest", project="acme")


def _sandbox(aggregate_id: str, n: int) -> Event:
    return SandboxTouched(sandbox_id=aggregate_id, command_id=f"c{n}", actor=ACTOR, at=utc_now())


def _snapshot(aggregate_id: str, n: int) -> Event:
    common: dict[str, Any] = {
        "snapshot_id": aggregate_id,
        "command_id": f"c{n}",
        "actor": ACTOR,
        "at": utc_now(),
    }
    if n == 0:
        return SnapshotRequested(**common, sandbox_id="sbx000000001", extension="ext.local")
    return SnapshotFailed(**common, reason=f"attempt {n}")


def _account(aggregate_id: str, n: int) -> Event:
    return CreditsAdded(
        project=aggregate_id, command_id=f"c{n}", actor=ACTOR, at=utc_now(), amount=n + 1
    )


def _key(aggregate_id: str, n: int) -> Event:
    if n == 0:
        return KeyCreated(
            key_id=aggregate_id,
            command_id="c0",
            actor=ACTOR,
            at=utc_now(),
            key_hash="0" * 64,
            project="acme",
            key_type="agt",
            max_live=1,
            rate_per_second=1,
        )
    return KeyRevoked(key_id=aggregate_id, command_id=f"c{n}", actor=ACTOR, at=utc_now())


def _member(aggregate_id: str, n: int) -> Event:
    common: dict[str, Any] = {
        "member_id": aggregate_id,
        "pool": "ext.local@node:profile.local",
        "command_id": f"c{n}",
        "actor": ACTOR,
        "at": utc_now(),
    }
    if n == 0:
        return PoolMemberAdded(
            **common,
            profile="profile.local",
            profile_version=1,
            profile_digest="d",
            extension="ext.local",
            node="node",
            worker="node:1",
        )
    return PoolMemberReady(**common)


def _places(aggregate_id: str, n: int) -> Event:
    common: dict[str, Any] = {
        "host": aggregate_id,
        "sandbox_id": "sbx000000001",
        "command_id": f"c{n}",
        "actor": ACTOR,
        "at": utc_now(),
    }
    if n == 0:
        return PlaceTaken(**common, extension="ext.ssh", limit=2)
    return PlaceFreed(**common, reason="destroyed")


@dataclass(frozen=True)
class Kind:
    name: str
    """What a conflict calls the aggregate."""
    load: str
    append: str
    event: Callable[[str, int], Event]
    """The aggregate's ``n``-th event."""


KINDS = [
    Kind("sandbox", "load", "append", _sandbox),
    Kind("snapshot", "load_snapshot", "append_snapshot", _snapshot),
    Kind("account", "load_account", "append_account", _account),
    Kind("key", "load_key", "append_key", _key),
    Kind("pool member", "load_member", "append_member", _member),
    Kind("host", "load_places", "append_places", _places),
]


@pytest.fixture(params=["memory", "jetstream"])
def stores_on_one_log(request: pytest.FixtureRequest) -> Callable[[], EventStore]:
    """Makes event stores on one log: the JetStream store's are apart, as other processes'
    are; the in-memory store is its log, so it makes the same one every time."""
    if request.param == "jetstream":
        new_store: Callable[[], JetStreamEventStore] = request.getfixturevalue("new_store")
        return new_store
    store = MemoryEventStore()
    return lambda: store


@pytest.mark.parametrize("kind", KINDS, ids=[kind.name for kind in KINDS])
async def test_an_aggregate_loads_appends_and_refuses_a_stale_append(
    stores_on_one_log: Callable[[], EventStore], kind: Kind
) -> None:
    aggregate_id = f"contract{uuid.uuid4().hex[:12]}"
    store = stores_on_one_log()

    def load(on: EventStore) -> Any:
        return getattr(on, kind.load)(aggregate_id)

    def append(loaded: Any, n: int) -> Any:
        return getattr(store, kind.append)(loaded, [kind.event(aggregate_id, n)])

    empty = await load(store)
    assert (empty.state.version, empty.last_seq) == (0, 0)
    # Another aggregate's event under the same id (a host's telemetry, not its places) is
    # none of this one's.
    await store.record(
        HostInspected(host=aggregate_id, extension="ext.ssh", actor=ACTOR, at=utc_now(), report={})
    )
    assert await load(store) == empty

    first = await append(empty, 0)
    second = await append(first, 1)
    assert 0 < first.last_seq < second.last_seq
    assert second.state.version == 2
    assert await load(store) == second
    assert await load(stores_on_one_log()) == second

    with pytest.raises(ConcurrencyConflict) as conflict:
        await append(first, 2)
    assert conflict.value.message == (
        f"{kind.name} {aggregate_id} changed while deciding; reload and decide again"
    )
    assert conflict.value.sandbox_id == (aggregate_id if kind.name == "sandbox" else None)
    assert await load(stores_on_one_log()) == second
