"""The account aggregate on JetStream: a store folds only what came after the state it kept.

An account gains an event for every sandbox metered, forever, so each load reads on from
the last state this store saw of it. What it returns must be what a fold from sequence 1
gives, whoever appended meanwhile (docs/performance.md, "Accounts").
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.commands.types import AddCredits
from sandboxer.domain.account_decide import MeterUsage
from sandboxer.events.types import Actor
from sandboxer.workers.deciding import apply_account

pytestmark = pytest.mark.integration

METER = Actor(type="atm", id="sandboxer-meter")
ADMIN = Actor(type="adm", id="ops", project="acme")


def metered(n: int) -> MeterUsage:
    sandbox_id = f"sbx{n:012d}"
    return MeterUsage(
        command_id=f"meter-{sandbox_id}",
        actor=METER,
        sandbox_id=sandbox_id,
        extension="ext.local",
        profile="profile.local",
        seconds=n,
        price="0",
        create_price="0",
    )


async def test_an_account_loads_from_the_state_the_store_kept_and_equals_a_full_fold(
    new_store: Callable[[], JetStreamEventStore], read_starts: list[int]
) -> None:
    meter, other = new_store(), new_store()
    for n in range(5):
        await apply_account(meter, "acme", metered(n))
    kept = await meter.load_account("acme")
    assert (kept.state.metered, kept.state.version) == (5, 5)

    # Another writer (another process's store) appends; the meter's store reads on from
    # the state it kept, and sees both.
    await apply_account(
        other, "acme", AddCredits(command_id="top-up", actor=ADMIN, project="acme", amount=7)
    )
    read_starts.clear()
    await apply_account(meter, "acme", metered(5))
    assert read_starts[0] == kept.last_seq + 1  # not sequence 1
    again, changed = await apply_account(meter, "acme", metered(5))  # a redelivery
    assert not changed

    fresh = await new_store().load_account("acme")
    assert fresh == await meter.load_account("acme")
    assert (fresh.state.metered, fresh.state.balance, fresh.state.version) == (6, 7, 7)
    assert again == fresh


async def test_a_store_keeps_a_bounded_number_of_accounts(
    new_store: Callable[[], JetStreamEventStore],
) -> None:
    store = new_store()
    store._accounts.limit = 2
    for project in ("a1", "a2", "a3", "a2"):
        await store.load_account(project)
    assert list(store._accounts) == ["a3", "a2"]  # the least recently used went first
