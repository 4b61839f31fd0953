"""The account aggregate on JetStream: a store folds only what came after the state it kept.

An account gains an event for every sandbox metered, forever, so each load reads on from
the last state this store saw of it. What it returns must be what a fold from sequence 1
gives, whoever appended meanwhile (docs/performance.md, "Accounts").
"""

from __future__ import annotations

from typing import Any

import pytest

from sandboxer.bus import jetstream_store
from sandboxer.bus.connect import connect
from sandboxer.bus.jetstream_store import JetStreamEventStore
from sandboxer.bus.nats_server import NatsServerProcess
from sandboxer.bus.streams import ensure_streams
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
    nats_server: NatsServerProcess, monkeypatch: Any
) -> None:
    starts: list[int] = []
    read_subject = jetstream_store.read_subject

    def recording(*args: Any, **kwargs: Any) -> Any:
        starts.append(kwargs["start"])
        return read_subject(*args, **kwargs)

    monkeypatch.setattr(jetstream_store, "read_subject", recording)
    nc = await connect([nats_server.url], name="test-account-store", long_lived=False)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        meter, other = JetStreamEventStore(nc, js), JetStreamEventStore(nc, js)
        for n in range(5):
            await apply_account(meter, "acme", metered(n))
        kept = await meter.load_account("acme")
        assert (kept.state.metered, kept.state.version) == (5, 5)

        # Another writer (another process's store) appends; the meter's store reads on from
        # the state it kept, and sees both.
        await apply_account(
            other, "acme", AddCredits(command_id="top-up", actor=ADMIN, project="acme", amount=7)
        )
        starts.clear()
        await apply_account(meter, "acme", metered(5))
        assert starts[0] == kept.last_seq + 1  # not sequence 1
        again, changed = await apply_account(meter, "acme", metered(5))  # a redelivery
        assert not changed

        fresh = await JetStreamEventStore(nc, js).load_account("acme")
        assert fresh == await meter.load_account("acme")
        assert (fresh.state.metered, fresh.state.balance, fresh.state.version) == (6, 7, 7)
        assert again == fresh
    finally:
        await nc.close()


async def test_a_store_keeps_a_bounded_number_of_accounts(nats_server: NatsServerProcess) -> None:
    nc = await connect([nats_server.url], name="test-account-store", long_lived=False)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        store = JetStreamEventStore(nc, js)
        store._accounts.limit = 2
        for project in ("a1", "a2", "a3", "a2"):
            await store.load_account(project)
        assert list(store._accounts) == ["a3", "a2"]  # the least recently used went first
    finally:
        await nc.close()
